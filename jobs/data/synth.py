"""Synthetic recommendation logs (``mmoe data synth``): feed / e-commerce impressions with three
binary tasks (click, like, conversion), written as the ``synth`` data set's features and labels
partitions, plus daily snapshots of the item catalog and the users table for catalog scoring.

The generator is seeded and numpy-vectorised (no Spark). Its columns are exactly the ``synth``
spec's (``schemas/specs/synth.yaml``): vocabularies, hours and value ranges are read from the spec.

Multi-task structure (the MMoE paper, Ma et al., KDD 2018, section 5.1): the latent dense features
``x ~ N(0, I_d)`` (``x0..x{d-1}``, clipped to the spec's range) and orthonormal ``u_0, u_1..u_T``;
task weight vectors ``w_t = c (sqrt(rho) u_0 + sqrt(1 - rho) u_t)`` have pairwise cosine ``rho``
(``task_correlation``, within [0, 1]), so the linear parts ``w_t . x`` have Pearson correlation
``rho``. Each task's latent score is ``s_t = w_t.x + sum_i sin(alpha_i w_t.x + beta_i)`` (m = 10
sinusoids, ``alpha``, ``beta ~ N(0, 1)`` shared across tasks, redrawn until the curve still
rises with ``w_t.x``; c = 1), standardised with exact
Gauss-Hermite moments, then ``logit_t = a s_t + user, item, hour and platform effects (+ a price
effect for conversion) + b_t`` and ``label_t ~ Bernoulli(sigmoid(logit_t))``. Conversion is drawn
only for clicked impressions (conversion implies click). The intercepts ``b_t`` are calibrated on
a reference sample so the base rates are click ~10%, like ~3%, conversion ~20% of clicks.

Determinism: the "world" (users, items, their hidden effects, alpha, beta, the u vectors) depends
on the seed only; ``rho`` only changes ``w_t`` (hence labels). A day's rows depend on (seed, rho,
ds, rows_per_day) only, never on which other days are generated: each day (and each 1M-row chunk
of it) draws from its own ``SeedSequence([seed, day_number, chunk])``. ``impression_id`` =
``day_number * 10^10 + row`` (day_number = days since 1970-01-01): unique across days and runs.
``request_id`` groups 10 consecutive impressions of one user at one hour.

Slowly changing attributes: a user's ``user_activity`` and an item's ``item_popularity`` move
with the day, ``base * exp(0.1 * sin(2 pi day / 60 + phase))`` (rounded, clipped; a phase per
user / item from the seed), the rest stay fixed. The day's impressions carry that day's values,
and each generated day writes the users and items snapshot of that day
(``catalog/{users,items}/ds=D/``), so a job for an old day can read the values it had then.
The hidden effects behind the labels do not move: only what a model sees changes.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from contextlib import ExitStack
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.core.config import JobConfig
from jobs.core.errors import ConfigError, InputError
from jobs.core.manifest import RunRecord
from jobs.core.policy import capped_inclusion, mixed_with_uniform, systematic_sample
from jobs.core.warehouse import Warehouse, parse_date, replacing
from schemas.spec import CategoricalFeature, DatasetSpec, DenseFeature, load_spec
from schemas.tables import features_arrow_schema, labels_arrow_schema

DATASET = "synth"
CHUNK_ROWS = 1_000_000          # rows per generated chunk and per parquet file
ROW_GROUP_ROWS = 131_072        # parquet row groups: the unit of parallel work when scoring
REQUEST_SIZE = 10               # impressions per request (one user, one hour)
ID_STRIDE = 10 ** 10            # impression_id = day_number * ID_STRIDE + row
N_USERS = 20_000
N_ITEMS = 5_000
USER_ID_BASE = 10_000_000
ITEM_ID_BASE = 50_000_000
N_SINUSOIDS = 10
SIGNAL_SCALE = 1.2              # a: weight of the standardised latent score in the logit
PRICE_NULL_RATE = 0.03          # impressions whose price was not logged
AGE_UNKNOWN_RATE = 0.10         # users without an age
USER_ZIPF, ITEM_ZIPF = 0.8, 0.9
# Base rates; conversion's is the rate among clicks. Tasks not listed here get DEFAULT_RATE.
TARGET_RATES = {"click": 0.10, "like": 0.03, "conversion": 0.20}
DEFAULT_RATE = 0.05
PARENT_TASK = {"conversion": "click"}   # the child happens only when the parent did
CATALOG_TABLES = ("items", "users")
ITEM_COLUMNS = ("item_id", "item_category", "item_popularity", "item_price")
USER_COLUMNS = ("user_id", "platform", "user_cohort", "user_activity", "user_age")

_EPOCH = dt.date(1970, 1, 1)
_LATENT = re.compile(r"^x(\d+)$")
_WORLD_TAG, _CALIB_TAG, _DAY_TAG, _DRIFT_TAG, _LOG_TAG = 0x5EED, 0xCA11B, 0xDA7, 0xD21F7, 0x106
DRIFT_AMPLITUDE, DRIFT_PERIOD_DAYS = 0.1, 60  # of the slowly changing attributes (above)
# Logged exploration (module docstring): the policies, pool size, uniform share, softmax
# temperature (over the true click logit)
LOGGING_POLICIES = ("uniform", "popularity", "softmax")
POOL_SIZE = 50
EXPLORATION = 0.05
LOGGING_TEMPERATURE = 1.0


# --------------------------------------------------------------------------------------------
# The world: users, items and task parameters, from the seed (and rho for w_t)


@dataclass(frozen=True)
class SynthWorld:
    spec: DatasetSpec
    seed: int
    rho: float
    latent_names: tuple[str, ...]
    u: np.ndarray                 # [T+1, d] orthonormal rows: u[0] shared, u[1..T] per task
    w: np.ndarray                 # [T, d] task weight vectors, pairwise cosine rho
    alpha: np.ndarray             # [m]
    beta: np.ndarray              # [m]
    score_mean: float             # moments of g(z) = z + sum sin(alpha z + beta), z ~ N(0, 1)
    score_std: float
    users: dict[str, np.ndarray]  # catalog columns (index arrays for categoricals) + cdf, eff
    items: dict[str, np.ndarray]
    hour_values: np.ndarray       # hours, from the spec's vocabulary
    hour_cdf: np.ndarray
    hour_eff: np.ndarray          # [24, T]
    platform_eff: np.ndarray      # [n_platforms, T]
    intercept: np.ndarray         # [T], calibrated

    @property
    def tasks(self) -> list[str]:
        return self.spec.task_names


def _vocab(spec: DatasetSpec, name: str) -> tuple[str, ...]:
    col = spec.column(name)
    if not isinstance(col, CategoricalFeature) or col.vocabulary is None:
        raise ConfigError(f"synth spec: {name} must be a categorical with a vocabulary")
    return col.vocabulary


def _bounds(spec: DatasetSpec, name: str) -> tuple[float, float]:
    col = spec.column(name)
    if not isinstance(col, DenseFeature):
        raise ConfigError(f"synth spec: {name} must be a dense feature")
    lo = -np.inf if col.min is None else col.min
    hi = np.inf if col.max is None else col.max
    return lo, hi


def _zipf_cdf(rng: np.random.Generator, n: int, exponent: float) -> tuple[np.ndarray, np.ndarray]:
    """Zipf shares over n entities in a random order: (share per entity, cdf for sampling)."""
    share = 1.0 / np.arange(1, n + 1) ** exponent
    share = share[rng.permutation(n)]
    share /= share.sum()
    cdf = np.cumsum(share)
    cdf[-1] = 1.0
    return share, cdf


def _zscore(v: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Standardised over impressions (entities weighted by their impression share), so that a
    few heavy users / items do not turn a per-entity effect into a shared offset."""
    mean = weight @ v
    return (v - mean) / (np.sqrt(weight @ (v - mean) ** 2) + 1e-12)


def _g(z: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """z + sum_i sin(alpha_i z + beta_i), elementwise, for any shape of z."""
    out = z.copy()
    for a, b in zip(alpha, beta):
        out += np.sin(a * z + b)
    return out


def _wcorr(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    w = w / w.sum()
    da, db = a - w @ a, b - w @ b
    return float((w @ (da * db)) / np.sqrt((w @ da ** 2) * (w @ db ** 2)))


def _draw_sinusoids(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """alpha, beta ~ N(0, 1), redrawn until g(z) = z + sum sin(alpha z + beta) still rises with
    z (weighted Pearson >= 0.9 overall and >= 0.8 for z > 0, z ~ N(0, 1)). With ten unit-amplitude
    sinusoids an unlucky draw can flatten the upper tail, where the rare positives live, and the
    latent score would carry almost no signal; about one draw in four or five passes."""
    z = np.linspace(-4.0, 4.0, 2001)
    dens = np.exp(-0.5 * z ** 2)
    upper = z > 0
    for _ in range(10_000):
        alpha, beta = rng.standard_normal(N_SINUSOIDS), rng.standard_normal(N_SINUSOIDS)
        g = _g(z, alpha, beta)
        if _wcorr(g, z, dens) >= 0.9 and _wcorr(g[upper], z[upper], dens[upper]) >= 0.8:
            return alpha, beta
    raise RuntimeError("no usable sinusoid parameters found")  # practically unreachable


def build_world(spec: DatasetSpec | str, seed: int, rho: float) -> SynthWorld:
    """The seed's users, items and task parameters (``rho`` enters only ``w_t``). Cached: the
    returned world is shared and must not be modified."""
    spec = load_spec(spec) if isinstance(spec, str) else spec
    return _build_world(spec, int(seed), float(rho))


@lru_cache(maxsize=8)
def _build_world(spec: DatasetSpec, seed: int, rho: float) -> SynthWorld:
    if not 0.0 <= rho <= 1.0 or math.isnan(rho):
        raise InputError(f"--task-correlation must be within [0, 1], got {rho}")
    latent = sorted(((int(m.group(1)), f.name) for f in spec.dense_features
                     if (m := _LATENT.match(f.name))))
    latent_names = tuple(name for _, name in latent)
    n_tasks = len(spec.tasks)
    d = len(latent_names)
    if d < n_tasks + 1:
        raise ConfigError(f"synth spec: {n_tasks} tasks need at least {n_tasks + 1} latent "
                          f"features x0..x{n_tasks}, found {d}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, _WORLD_TAG]))

    # Task structure (paper, section 5.1): orthonormal u's, shared sinusoids.
    q, _ = np.linalg.qr(rng.standard_normal((d, n_tasks + 1)))
    u = q.T                                                    # [T+1, d], orthonormal rows
    alpha, beta = _draw_sinusoids(rng)
    nodes, weights = np.polynomial.hermite_e.hermegauss(120)   # E over z ~ N(0, 1)
    weights = weights / weights.sum()
    gz = _g(nodes, alpha, beta)
    score_mean = float(weights @ gz)
    score_std = float(np.sqrt(weights @ (gz - score_mean) ** 2))

    # Users.
    platforms, cohorts = _vocab(spec, "platform"), _vocab(spec, "user_cohort")
    u_share, u_cdf = _zipf_cdf(rng, N_USERS, USER_ZIPF)
    act_lo, act_hi = _bounds(spec, "user_activity")
    activity = np.clip(np.round(u_share * N_USERS * 50 * rng.lognormal(0.0, 0.3, N_USERS)),
                       act_lo, act_hi)
    platform_p = rng.dirichlet(np.full(len(platforms), 5.0))
    platform = rng.choice(len(platforms), N_USERS, p=platform_p)
    # cohorts by activity rank, in vocabulary order (least active first)
    shares = (0.15, 0.55, 0.25, 0.05) if len(cohorts) == 4 else (1.0 / len(cohorts),) * len(cohorts)
    rank = np.argsort(np.argsort(activity + rng.random(N_USERS) * 1e-3)) / N_USERS
    cohort = np.searchsorted(np.cumsum(shares)[:-1], rank, side="right")
    age_lo, age_hi = _bounds(spec, "user_age")
    age = np.clip(np.round(rng.normal(36.0, 12.0, N_USERS)), age_lo, age_hi)
    age[rng.random(N_USERS) < AGE_UNKNOWN_RATE] = np.nan
    user_eff = (0.3 * _zscore(np.log1p(activity), u_share)[:, None]
                + 0.4 * rng.standard_normal((N_USERS, n_tasks)))
    users = {"user_id": USER_ID_BASE + np.arange(N_USERS, dtype=np.int64),
             "platform": platform, "user_cohort": cohort, "user_activity": activity,
             "user_age": age, "cdf": u_cdf, "eff": user_eff}

    # Items.
    categories = _vocab(spec, "item_category")
    i_share, i_cdf = _zipf_cdf(rng, N_ITEMS, ITEM_ZIPF)
    pop_lo, pop_hi = _bounds(spec, "item_popularity")
    popularity = np.clip(np.round(i_share * 5e7 * rng.lognormal(0.0, 0.3, N_ITEMS)), pop_lo, pop_hi)
    category = rng.integers(0, len(categories), N_ITEMS)
    price_mu = rng.uniform(2.0, 5.0, len(categories))
    price_lo, price_hi = _bounds(spec, "item_price")
    price = np.clip(np.round(rng.lognormal(price_mu[category], 0.8), 2), max(price_lo, 0.01),
                    price_hi)
    cat_eff = 0.3 * rng.standard_normal((len(categories), n_tasks))
    item_eff = (cat_eff[category] + 0.25 * _zscore(np.log1p(popularity), i_share)[:, None]
                + 0.3 * rng.standard_normal((N_ITEMS, n_tasks)))
    if "conversion" in spec.task_names:  # expensive items convert less
        item_eff[:, spec.task_names.index("conversion")] -= 0.3 * _zscore(np.log(price), i_share)
    items = {"item_id": ITEM_ID_BASE + np.arange(N_ITEMS, dtype=np.int64),
             "item_category": category, "item_popularity": popularity, "item_price": price,
             "cdf": i_cdf, "eff": item_eff}

    # Context.
    hour_values = np.array([int(h) for h in _vocab(spec, "hour")], dtype=np.int64)
    hour_p = np.exp(0.8 * np.cos(2 * np.pi * (hour_values - 20) / 24))
    hour_cdf = np.cumsum(hour_p / hour_p.sum())
    hour_cdf[-1] = 1.0
    hour_eff = (0.15 * np.cos(2 * np.pi * (hour_values - 21) / 24)[:, None]
                + 0.05 * rng.standard_normal((len(hour_values), n_tasks)))
    platform_eff = 0.15 * rng.standard_normal((len(platforms), n_tasks))

    w = np.sqrt(rho) * u[0][None, :] + np.sqrt(1.0 - rho) * u[1:]   # c = 1
    world = SynthWorld(spec=spec, seed=seed, rho=float(rho), latent_names=latent_names, u=u, w=w,
                       alpha=alpha, beta=beta, score_mean=score_mean, score_std=score_std,
                       users=users, items=items, hour_values=hour_values, hour_cdf=hour_cdf,
                       hour_eff=hour_eff, platform_eff=platform_eff,
                       intercept=np.zeros(n_tasks))
    return _calibrate(world)


def _calibrate(world: SynthWorld) -> SynthWorld:
    """Intercepts b_t such that a 100k-row reference sample hits the target base rates."""
    rng = np.random.default_rng(np.random.SeedSequence([world.seed, _CALIB_TAG]))
    draw = _draw(world, rng, 100_000, 0)
    logits = draw["logits"]
    tasks = world.tasks
    b = np.zeros(len(tasks))
    probs: dict[str, np.ndarray] = {}
    for t, name in enumerate(tasks):          # parents come before children in the spec order
        parent = PARENT_TASK.get(name)
        weight = probs[parent] if parent in probs else None
        target = TARGET_RATES.get(name, DEFAULT_RATE)
        lo, hi = -30.0, 30.0
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            p = _sigmoid(logits[:, t] + mid)
            rate = p.mean() if weight is None else (weight @ p) / weight.sum()
            lo, hi = (mid, hi) if rate < target else (lo, mid)
        b[t] = 0.5 * (lo + hi)
        probs[name] = _sigmoid(logits[:, t] + b[t])
    object.__setattr__(world, "intercept", b)
    return world


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


# --------------------------------------------------------------------------------------------
# Drawing impressions


def _draw(world: SynthWorld, rng: np.random.Generator, n: int, first_row: int,
          request_size: int = REQUEST_SIZE) -> dict[str, Any]:
    """n impressions (or, for a logged day, candidates: ``request_size`` per pool): indices,
    latent features and logits (without intercept). The order of the random draws is part of
    the format: changing it changes every data set."""
    n_req = -(-n // request_size)
    req_user = np.searchsorted(world.users["cdf"], rng.random(n_req), side="right")
    req_hour = np.searchsorted(world.hour_cdf, rng.random(n_req), side="right")
    user = np.repeat(req_user, request_size)[:n]
    hour = np.repeat(req_hour, request_size)[:n]
    request = np.repeat(np.arange(n_req, dtype=np.int64), request_size)[:n] \
        + first_row // request_size
    item = np.searchsorted(world.items["cdf"], rng.random(n), side="right")
    lo, hi = _bounds(world.spec, world.latent_names[0])
    x = np.clip(rng.standard_normal((n, len(world.latent_names))), lo, hi)
    price_missing = rng.random(n) < PRICE_NULL_RATE
    label_u = rng.random((n, len(world.tasks)))

    linear = x @ world.w.T                                          # [n, T]
    score = (_g(linear, world.alpha, world.beta) - world.score_mean) / world.score_std
    platform = world.users["platform"][user]
    logits = (SIGNAL_SCALE * score + world.users["eff"][user] + world.items["eff"][item]
              + world.hour_eff[hour] + world.platform_eff[platform])
    return {"user": user, "item": item, "hour": hour, "request": request, "x": x,
            "price_missing": price_missing, "label_u": label_u, "linear": linear,
            "logits": logits}


def true_probabilities(world: SynthWorld, draw: dict[str, Any]) -> dict[str, np.ndarray]:
    """Each row's probability that its label is 1, per task (a child's includes its parent's:
    the child is drawn only after the parent's positive)."""
    p = _sigmoid(draw["logits"] + world.intercept)
    out: dict[str, np.ndarray] = {}
    for t, name in enumerate(world.tasks):
        parent = PARENT_TASK.get(name)
        out[name] = p[:, t] * out[parent] if parent in out else p[:, t]
    return out


def _labels(world: SynthWorld, draw: dict[str, Any]) -> dict[str, np.ndarray]:
    p = _sigmoid(draw["logits"] + world.intercept)
    out: dict[str, np.ndarray] = {}
    for t, name in enumerate(world.tasks):
        hit = draw["label_u"][:, t] < p[:, t]
        parent = PARENT_TASK.get(name)
        if parent in out:
            hit &= out[parent].astype(bool)
        out[name] = hit.astype(np.int32)
    return out


def _day_number(ds: str) -> int:
    return (parse_date(ds, "ds") - _EPOCH).days


@lru_cache(maxsize=4)
def _drift_phases(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per user and per item, the phase of its slowly changing attribute (from the seed alone:
    drawing them does not move any other random draw)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _DRIFT_TAG]))
    return rng.uniform(0.0, 2 * np.pi, N_USERS), rng.uniform(0.0, 2 * np.pi, N_ITEMS)


def _drifted(spec: DatasetSpec, name: str, base: np.ndarray, phase: np.ndarray,
             day: int) -> np.ndarray:
    lo, hi = _bounds(spec, name)
    factor = np.exp(DRIFT_AMPLITUDE * np.sin(2 * np.pi * day / DRIFT_PERIOD_DAYS + phase))
    return np.clip(np.round(base * factor), lo, hi)


def day_attributes(world: SynthWorld, ds: str) -> tuple[np.ndarray, np.ndarray]:
    """``(user_activity [N_USERS], item_popularity [N_ITEMS])`` on day ``ds``."""
    day = _day_number(ds)
    user_phase, item_phase = _drift_phases(world.seed)
    return (_drifted(world.spec, "user_activity", world.users["user_activity"], user_phase, day),
            _drifted(world.spec, "item_popularity", world.items["item_popularity"], item_phase,
                     day))


def _take_vocab(vocab: tuple[str, ...], idx: np.ndarray) -> pa.Array:
    return pa.array(vocab, type=pa.string()).take(pa.array(idx, type=pa.int32()))


def _float_col(values: np.ndarray) -> pa.Array:
    return pa.array(values, type=pa.float64(), from_pandas=True)   # NaN -> null


def _table(schema: pa.Schema, columns: dict[str, Any]) -> pa.Table:
    missing = [f.name for f in schema if f.name not in columns]
    if missing:
        raise ConfigError(f"synth spec column(s) {missing} have no generator in jobs/synth.py")
    return pa.Table.from_arrays([pa.array(columns[f.name], type=f.type)
                                 if not isinstance(columns[f.name], pa.Array)
                                 else columns[f.name] for f in schema], schema=schema)


def _columns(world: SynthWorld, day: int, d: dict[str, Any], rows: np.ndarray,
             activity: np.ndarray, popularity: np.ndarray) -> dict[str, Any]:
    """The features columns of drawn rows (``rows``: their index within the day)."""
    spec = world.spec
    user, item = d["user"], d["item"]
    price = world.items["item_price"][item].copy()
    price[d["price_missing"]] = np.nan
    cols: dict[str, Any] = {
        "impression_id": day * ID_STRIDE + rows,
        "request_id": day * ID_STRIDE + d["request"],
        "user_id": world.users["user_id"][user],
        "item_id": world.items["item_id"][item],
        "item_category": _take_vocab(_vocab(spec, "item_category"),
                                     world.items["item_category"][item]),
        "platform": _take_vocab(_vocab(spec, "platform"), world.users["platform"][user]),
        "user_cohort": _take_vocab(_vocab(spec, "user_cohort"), world.users["user_cohort"][user]),
        "hour": world.hour_values[d["hour"]],
        "user_activity": activity[user],
        "item_popularity": popularity[item],
        "item_price": _float_col(price),
        "user_age": _float_col(world.users["user_age"][user]),
        "position": pa.nulls(len(rows), pa.int64()),      # not logged (see _logged_chunks)
        "propensity": pa.nulls(len(rows), pa.float64()),
    }
    for j, name in enumerate(world.latent_names):
        cols[name] = d["x"][:, j]
    return cols


def _chunks(world: SynthWorld, ds: str, rows: int) -> Iterator[tuple[pa.Table, pa.Table, np.ndarray]]:
    """The day's rows in chunks of CHUNK_ROWS: (features, labels, linear parts w_t.x)."""
    spec, day = world.spec, _day_number(ds)
    f_schema, l_schema = features_arrow_schema(spec), labels_arrow_schema(spec)
    activity, popularity = day_attributes(world, ds)
    for k, start in enumerate(range(0, rows, CHUNK_ROWS)):
        n = min(CHUNK_ROWS, rows - start)
        rng = np.random.default_rng(np.random.SeedSequence([world.seed, _DAY_TAG, day, k]))
        d = _draw(world, rng, n, start)
        cols = _columns(world, day, d, start + np.arange(n, dtype=np.int64), activity, popularity)
        labels = _labels(world, d)
        yield (_table(f_schema, cols),
               _table(l_schema, {"impression_id": cols["impression_id"], **labels}),
               d["linear"])


# --------------------------------------------------------------------------------------------
# Logged exploration (--logging-policy): a pool per request, a stochastic list shown from it


def logging_inclusion(world: SynthWorld, policy: str, d: dict[str, Any],
                      popularity: np.ndarray, pool: int, k: np.ndarray) -> np.ndarray:
    """The logging policy's inclusion probability of every candidate ([R * pool], pools
    contiguous), see LOGGING_POLICIES; mixed with EXPLORATION uniform."""
    n_req = len(k)
    group = np.repeat(np.arange(n_req), pool)
    if policy == "uniform":
        weights = np.ones(n_req * pool)
    elif policy == "popularity":
        weights = popularity[d["item"]] + 1.0
    elif policy == "softmax":
        logit = (d["logits"][:, 0] + world.intercept[0]).reshape(n_req, pool)
        weights = np.exp((logit - logit.max(axis=1, keepdims=True)) / LOGGING_TEMPERATURE).ravel()
    else:
        raise InputError(f"--logging-policy must be one of {', '.join(LOGGING_POLICIES)}, "
                         f"got {policy!r}")
    return mixed_with_uniform(capped_inclusion(weights, group, k), group, k, EXPLORATION)


def _logged_chunks(world: SynthWorld, ds: str, rows: int, policy: str,
                   pool: int) -> Iterator[tuple[pa.Table, pa.Table, pa.Table, pa.Table]]:
    """The day's logged traffic in chunks of about CHUNK_ROWS candidates: (features of the
    shown impressions, their labels, every candidate of the pools, the candidates' true label
    probabilities). ``rows`` impressions are shown, REQUEST_SIZE per request (the last one
    fewer), each request's from a pool of ``pool`` candidates drawn like impressions."""
    spec, day = world.spec, _day_number(ds)
    f_schema, l_schema = features_arrow_schema(spec), labels_arrow_schema(spec)
    activity, popularity = day_attributes(world, ds)
    requests = -(-rows // REQUEST_SIZE)
    per_chunk = max(1, CHUNK_ROWS // pool)
    for c, first in enumerate(range(0, requests, per_chunk)):
        n_req = min(per_chunk, requests - first)
        rng = np.random.default_rng(np.random.SeedSequence(
            [world.seed, _LOG_TAG, LOGGING_POLICIES.index(policy), pool, day, c]))
        d = _draw(world, rng, n_req * pool, first * pool, pool)
        k = np.minimum(REQUEST_SIZE, rows - (first + np.arange(n_req)) * REQUEST_SIZE)
        pi = logging_inclusion(world, policy, d, popularity, pool, k)
        shown = systematic_sample(pi.reshape(n_req, pool), k, rng)
        # positions: the shown candidates in a random order, 1..k
        order = np.argsort(rng.random((n_req, pool)) + 2.0 * ~shown, axis=1)
        position = np.empty((n_req, pool), dtype=np.int64)
        np.put_along_axis(position, order, np.arange(1, pool + 1)[None, :], axis=1)
        shown, position = shown.ravel(), position.ravel()
        ids = first * pool + np.arange(n_req * pool, dtype=np.int64)
        cols = _columns(world, day, d, ids, activity, popularity)
        cols["propensity"] = pi
        cols["position"] = pa.array(position, mask=~shown)
        take = np.flatnonzero(shown)
        take = take[np.lexsort((position[take], d["request"][take]))]
        candidates = _table(f_schema, cols)
        labels = _table(l_schema, {"impression_id": cols["impression_id"], **_labels(world, d)})
        truth = pa.table({"impression_id": cols["impression_id"],
                          **{f"q_{t}": q for t, q in true_probabilities(world, d).items()}})
        yield candidates.take(take), labels.take(take), candidates, truth


def synth_logged_day(spec: DatasetSpec | str, seed: int, ds: str, rows: int, policy: str,
                     pool: int = POOL_SIZE, rho: float = 0.5,
                     world: SynthWorld | None = None) -> dict[str, pa.Table]:
    """One logged day in memory: ``features``, ``labels``, ``candidates``, ``truth`` (Arrow),
    the same rows as ``generate_synth(..., logging_policy=policy, pool_size=pool)``."""
    world = world or build_world(spec, seed, rho)
    _check_rows(rows)
    _check_pool(policy, pool)
    parts = list(_logged_chunks(world, ds, rows, policy, pool))
    return {name: pa.concat_tables([p[i] for p in parts])
            for i, name in enumerate(("features", "labels", "candidates", "truth"))}


def _check_pool(policy: str, pool: int) -> None:
    if policy not in LOGGING_POLICIES:
        raise InputError(f"--logging-policy must be one of {', '.join(LOGGING_POLICIES)}, "
                         f"got {policy!r}")
    if isinstance(pool, bool) or not isinstance(pool, int) or not REQUEST_SIZE <= pool <= 10_000:
        raise InputError(f"--pool-size must be an integer within [{REQUEST_SIZE}, 10000] (a "
                         f"request shows {REQUEST_SIZE}), got {pool!r}")


def synth_day(spec: DatasetSpec | str, seed: int, ds: str, rows: int, rho: float = 0.5,
              return_latent: bool = False, world: SynthWorld | None = None):
    """One day in memory: ``(features, labels)`` Arrow tables, plus the linear latent parts
    ``w_t . x`` as an ``[rows, T]`` array when ``return_latent``. Same rows as ``generate_synth``."""
    world = world or build_world(spec, seed, rho)
    _check_rows(rows)
    parts = list(_chunks(world, ds, rows))
    features = pa.concat_tables([p[0] for p in parts])
    labels = pa.concat_tables([p[1] for p in parts])
    if return_latent:
        return features, labels, np.concatenate([p[2] for p in parts])
    return features, labels


def catalog_tables(world: SynthWorld, ds: str) -> dict[str, pa.Table]:
    """The item catalog and users table on day ``ds`` (one row per item / user), typed like the
    features."""
    spec = world.spec
    schema = features_arrow_schema(spec)
    items, users = world.items, world.users
    activity, popularity = day_attributes(world, ds)
    item_cols = {
        "item_id": items["item_id"],
        "item_category": _take_vocab(_vocab(spec, "item_category"), items["item_category"]),
        "item_popularity": popularity,
        "item_price": _float_col(items["item_price"]),
    }
    user_cols = {
        "user_id": users["user_id"],
        "platform": _take_vocab(_vocab(spec, "platform"), users["platform"]),
        "user_cohort": _take_vocab(_vocab(spec, "user_cohort"), users["user_cohort"]),
        "user_activity": activity,
        "user_age": _float_col(users["user_age"]),
    }
    out = {}
    for name, cols, names in (("items", item_cols, ITEM_COLUMNS), ("users", user_cols, USER_COLUMNS)):
        fields = [schema.field(c) for c in names]
        out[name] = _table(pa.schema([pa.field(f.name, f.type, nullable=f.name not in
                                               ("item_id", "user_id")) for f in fields]), cols)
    return out


def catalog_path(cfg: JobConfig, table: str, ds: str | None = None) -> Path:
    """``<wh>/synth/catalog/items`` or ``.../users``; with ``ds``, that day's snapshot."""
    if table not in CATALOG_TABLES:
        raise ValueError(f"unknown catalog table {table!r}")
    wh = Warehouse(cfg.warehouse)
    return wh.catalog(DATASET, table) if ds is None else wh.snapshot(DATASET, table, ds)


# --------------------------------------------------------------------------------------------
# The job


def _check_rows(rows: int) -> None:
    if not isinstance(rows, int) or rows < 1 or rows >= ID_STRIDE:
        raise InputError(f"--rows-per-day must be an integer within [1, {ID_STRIDE - 1}], got {rows!r}")


@dataclass
class SynthResult:
    rows: int
    seconds: float
    days: dict[str, Any]
    outputs: dict[str, str]
    settings: dict[str, Any]

    def __getitem__(self, key: str) -> Any:  # the dict this function used to return
        return getattr(self, key)

    def record(self) -> RunRecord:
        return RunRecord(input_rows=self.rows,  # generated rows (there is no input file)
                         output_rows=self.rows, outputs=dict(self.outputs),
                         details={**self.settings, "days": self.days, "seconds": self.seconds,
                                  "catalog": {"users": N_USERS, "items": N_ITEMS}})


def generate_synth(cfg: JobConfig, start: str, days: int, rows_per_day: int, seed: int = 0,
                   task_correlation: float = 0.5, logging_policy: str | None = None,
                   pool_size: int = POOL_SIZE) -> SynthResult:
    """Write ``days`` daily partitions of ``rows_per_day`` impressions from ``start`` into
    ``<wh>/synth/{features,labels}/ds=D/`` and each day's users and items snapshot into
    ``<wh>/synth/catalog/{users,items}/ds=D/``, each partition staged and swapped in
    (:func:`jobs.core.warehouse.replacing`). With ``logging_policy`` the impressions are logged
    exploration: each request's pool goes to ``candidates/ds=D/`` and the pools' true label
    probabilities to ``candidate_truth/ds=D/`` (module docstring)."""
    first = parse_date(start, "--start")
    if not isinstance(days, int) or days < 1:
        raise InputError(f"--days must be a positive integer, got {days!r}")
    _check_rows(rows_per_day)
    if not isinstance(seed, int) or seed < 0:
        raise InputError(f"--seed must be a non-negative integer, got {seed!r}")
    if logging_policy is not None:
        _check_pool(logging_policy, pool_size)
    t0 = time.perf_counter()
    world = build_world(load_spec(DATASET), seed, float(task_correlation))
    wh = Warehouse(cfg.warehouse)
    outputs: dict[str, str] = {}
    per_day: dict[str, Any] = {}
    total = 0
    tables = ("features", "labels") + (("candidates", "candidate_truth") if logging_policy else ())

    for ds in [(first + dt.timedelta(days=i)).isoformat() for i in range(days)]:
        counts = {t: 0 for t in world.tasks}
        targets = {t: wh.partition(DATASET, t, ds) for t in tables}
        chunks = (_logged_chunks(world, ds, rows_per_day, logging_policy, pool_size)
                  if logging_policy else
                  ((f, lab) for f, lab, _ in _chunks(world, ds, rows_per_day)))
        files = 0
        with ExitStack() as stack:
            for t in ("features", "labels"):
                stack.enter_context(wh.lock(DATASET, t, ds, wait_seconds=cfg.locks.wait_seconds,
                                            poll_seconds=cfg.locks.poll_seconds))
            staged = {t: stack.enter_context(replacing(targets[t])) for t in tables}
            for tmp in staged.values():
                tmp.mkdir(parents=True)
            for k, parts in enumerate(chunks):
                for t, part in zip(tables, parts):
                    pq.write_table(part, staged[t] / f"part-{k:05d}.parquet",
                                   row_group_size=ROW_GROUP_ROWS)
                for t in world.tasks:
                    counts[t] += int(np.asarray(parts[1].column(t)).sum())
                files += 1

        rates = {t: counts[t] / rows_per_day for t in world.tasks}
        info: dict[str, Any] = {"rows": rows_per_day, "files": files, "positives": counts,
                                "label_rates": rates}
        for child, parent in PARENT_TASK.items():
            if child in counts and parent in counts and counts[parent]:
                info[f"{child}_given_{parent}"] = counts[child] / counts[parent]
        per_day[ds] = info
        outputs.update({f"{t}/ds={ds}": str(targets[t]) for t in tables})
        total += rows_per_day
        for name, table in catalog_tables(world, ds).items():
            target = catalog_path(cfg, name, ds)
            with replacing(target) as tmp:
                tmp.mkdir(parents=True)
                pq.write_table(table, tmp / "part-00000.parquet")
            outputs[f"catalog/{name}/ds={ds}"] = str(target)

    settings = {"seed": seed, "task_correlation": float(task_correlation),
                "rows_per_day": rows_per_day, "logging_policy": logging_policy}
    if logging_policy:
        settings.update(pool_size=pool_size, list_size=REQUEST_SIZE, exploration=EXPLORATION)
    return SynthResult(rows=total, seconds=round(time.perf_counter() - t0, 3), days=per_day,
                       outputs=outputs, settings=settings)


__all__ = ["generate_synth", "synth_day", "synth_logged_day", "true_probabilities",
           "LOGGING_POLICIES", "build_world", "catalog_tables", "catalog_path",
           "SynthWorld", "CHUNK_ROWS", "ID_STRIDE"]
