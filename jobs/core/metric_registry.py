"""The one list of offline metrics: name, display order, direction, and how each value is
computed from a group's sufficient statistics.

Everything that names, orders or judges a metric reads it from here: the evaluate engine
(``jobs.evaluate.metrics`` computes :class:`Sums` per group and turns them into values with
:func:`values`), the gate metrics (``jobs.evaluate.gates``), the A/B comparison
(``jobs.compare.records``: point estimates and bootstrap replicates of the sum metrics go
through the same :func:`values`; ``is_better`` / ``regression`` come from the direction), the
A/B table and report (display order), the demo's summary and the config's guardrails and
decision metrics (:data:`COMPARED`). Adding a metric = one :class:`Metric` below, its
sufficient statistics in :class:`Sums` if it needs new ones, and the code that fills them.

Roles: ``size`` (row counts), ``quality`` (has a direction; compared in A/B tests and allowed
as a guardrail or decision metric), ``support`` (how many users a quality metric rests on),
``drift`` (mean prediction next to the label rate, per day: prediction drift seen against
the labels), ``gate`` (gate diagnostics of predictions scored ``--with-gates``, computed in Spark by
``jobs.evaluate.gates``, not from :class:`Sums`).

Pure numpy, vectorised: every :class:`Sums` field may be an array (e.g. one entry per bootstrap
replicate); a value is NaN where it is undefined (the metrics table stores it as null).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

Direction = Literal["higher", "lower", "closer_to_1"]
Role = Literal["size", "quality", "support", "drift", "gate", "ranking", "catalog"]


@dataclass(frozen=True)
class Sums:
    """Sufficient statistics of one group (or, as arrays, of many groups / replicates).

    ``count`` rows, ``positives``, ``p_sum`` sum of scores, ``logloss_sum`` sum of the clipped
    per-row log losses, ``auc2`` 2 x (pairs where the positive scores higher + tied pairs / 2),
    ``ap_sum`` sum over positive thresholds of positives(at t) x precision(>= t), ``gauc_sum``
    sum over users with both classes of rows x user AUC, ``gauc_rows`` their rows,
    ``gauc_users`` / ``gauc_excluded`` the users used / the single-class users left out.
    A statistic the caller does not have stays NaN (and so does every value that needs it)."""

    count: np.ndarray | float
    positives: np.ndarray | float
    p_sum: np.ndarray | float = np.nan
    logloss_sum: np.ndarray | float = np.nan
    auc2: np.ndarray | float = np.nan
    ap_sum: np.ndarray | float = np.nan
    gauc_sum: np.ndarray | float = np.nan
    gauc_rows: np.ndarray | float = np.nan
    gauc_users: np.ndarray | float = np.nan
    gauc_excluded: np.ndarray | float = np.nan


def _f(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _ratio(num, den, defined) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(defined, _f(num) / _f(den), np.nan)


def _two_class(s: Sums) -> np.ndarray:
    return (_f(s.positives) > 0) & (_f(s.positives) < _f(s.count))


def _logloss(s: Sums) -> np.ndarray:
    return _ratio(s.logloss_sum, s.count, _f(s.count) > 0)


def _ne(s: Sums) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = _f(s.positives) / _f(s.count)
        entropy = -(rate * np.log(rate) + (1.0 - rate) * np.log(1.0 - rate))
    return _ratio(_logloss(s), entropy, _two_class(s))


def _auc(s: Sums) -> np.ndarray:
    pos, cnt = _f(s.positives), _f(s.count)
    return _ratio(s.auc2, 2.0 * pos * (cnt - pos), _two_class(s))


@dataclass(frozen=True)
class Metric:
    name: str
    role: Role
    direction: Direction | None
    doc: str
    value: Callable[[Sums], np.ndarray] | None = None   # None: computed elsewhere (gates)


# Display order: the metrics table, the A/B tables and report, the demo all list metrics so.
REGISTRY: tuple[Metric, ...] = (
    Metric("count", "size", None, "rows of the group", lambda s: _f(s.count)),
    Metric("positives", "size", None, "rows with label > 0", lambda s: _f(s.positives)),
    Metric("auc", "quality", "higher", "exact ROC AUC, tied scores count 1/2; null for one class",
           _auc),
    Metric("gauc", "quality", "higher",
           "per-user AUC weighted by the user's rows, over users with both classes",
           lambda s: _ratio(s.gauc_sum, s.gauc_rows, _f(s.gauc_rows) > 0)),
    Metric("pr_auc", "quality", "higher",
           "average precision, step-wise, tied scores one threshold; null without positives",
           lambda s: _ratio(s.ap_sum, s.positives, _f(s.positives) > 0)),
    Metric("logloss", "quality", "lower", "mean log loss, p clipped to [1e-15, 1 - 1e-15]",
           _logloss),
    Metric("ne", "quality", "lower", "logloss / entropy of the base rate; null for one class",
           _ne),
    Metric("calibration", "quality", "closer_to_1", "mean(p) / observed rate; null without "
           "positives", lambda s: _ratio(s.p_sum, s.positives, _f(s.positives) > 0)),
    Metric("gauc_users", "support", None, "users with both classes (used by gauc)",
           lambda s: _f(s.gauc_users)),
    Metric("gauc_excluded_users", "support", None, "single-class users left out of gauc",
           lambda s: _f(s.gauc_excluded)),
    Metric("mean_prediction", "drift", None, "mean(p) of the group",
           lambda s: _ratio(s.p_sum, s.count, _f(s.count) > 0)),
    Metric("label_rate", "drift", None, "observed rate: positives / rows",
           lambda s: _ratio(s.positives, s.count, _f(s.count) > 0)),
    Metric("gate_entropy", "gate", None, "mean gate entropy / log E (jobs.evaluate.gates)"),
    Metric("gate_max_share", "gate", None,
           "share of the gate mass on the most used expert (jobs.evaluate.gates)"),
    # the recommendations written for a day, beside their top-K accuracy (CATALOG_AT_K);
    # computed by jobs.evaluate.recommendations, segment 'recommendations', task 'all'
    Metric("coverage", "catalog", "higher", "distinct recommended items / items in the catalog"),
    Metric("exposure_gini", "catalog", "lower",
           "Gini coefficient of the items' recommendation counts over the whole catalog"),
    Metric("popularity_bias", "catalog", "lower",
           "mean popularity percentile (catalog.rank_by, 1 = the most popular) of the "
           "recommended items"),
    Metric("diversity", "catalog", "higher",
           "intra-list diversity: share of a list's item pairs in different catalog.category "
           "values, mean over users with >= 2 items"),
    Metric("novelty", "catalog", "higher",
           "mean self-information -log2((users shown the item + 1) / (users + 1)) of the "
           "recommended items, from the day's logged impressions"),
)
BY_NAME: dict[str, Metric] = {m.name: m for m in REGISTRY}


# Per-request ranking metrics (``jobs.core.ranking`` computes them): a family with a cut-off K
# is named ``<family>@K`` (K from ``evaluation.ranking_ks``); ``mrr`` has none. All higher-better.
RANKING_AT_K = {
    "ndcg": "DCG@K / ideal DCG@K per request, gain 2^y - 1, discount 1 / log2(rank + 1)",
    "map": "precision at each positive ranked <= K, summed, / min(positives, K) per request",
    "recall": "positives ranked <= K / positives per request",
    "hit_rate": "1 when a positive is ranked <= K, per request",
}
RANKING_PLAIN = {"mrr": "1 / rank of the first positive, per request"}
# Top-K accuracy of the recommendations (per user with a logged positive, the list's top K):
# recall, ndcg and hit_rate as above with a user's list for a request, and precision@K.
CATALOG_AT_K = {"precision": "positives ranked <= K / K, per user with a positive"}
RECOMMENDATION_AT_K = ("recall", "ndcg", "hit_rate", *CATALOG_AT_K)   # in display order
_RANKING_ORDER = (*RANKING_AT_K, *RANKING_PLAIN)


def _ranking(name: str) -> Metric | None:
    family, at, k = name.partition("@")
    if (at and family in RANKING_AT_K and k.isdigit() and int(k) >= 1) or \
            (not at and family in RANKING_PLAIN):
        doc = RANKING_AT_K[family] if at else RANKING_PLAIN[family]
        return Metric(name, "ranking", "higher", doc + "; mean over requests with a positive")
    return None


def ranking_names(ks) -> list[str]:
    """The ranking metrics for cut-offs ``ks``, in display order (ndcg@K first)."""
    return [f"{f}@{k}" for f in RANKING_AT_K for k in sorted(ks)] + list(RANKING_PLAIN)


def is_ranking(name: str) -> bool:
    return _ranking(name) is not None


def names(*roles: Role) -> tuple[str, ...]:
    """Metric names of the given roles (all without roles), in display order."""
    return tuple(m.name for m in REGISTRY if not roles or m.role in roles)


ENGINE = names("size", "quality", "support", "drift")   # what jobs.evaluate.metrics computes
COMPARED = names("quality")                      # A/B tests, guardrails, decision metrics
GATES = names("gate")


def _catalog_at_k(name: str) -> Metric | None:
    family, at, k = name.partition("@")
    if at and family in CATALOG_AT_K and k.isdigit() and int(k) >= 1:
        return Metric(name, "catalog", "higher", CATALOG_AT_K[family])
    return None


def metric(name: str) -> Metric:
    found = BY_NAME.get(name) or _ranking(name) or _catalog_at_k(name)
    if found is None:
        raise ValueError(f"unknown metric {name!r} (one of {', '.join(BY_NAME)}, or a ranking "
                         f"metric: {', '.join([f + '@K' for f in RANKING_AT_K] + list(RANKING_PLAIN))})")
    return found


def values(sums: Sums, which: Iterable[str] = ENGINE) -> dict[str, np.ndarray]:
    """The values of the named metrics from one :class:`Sums` (NaN where undefined)."""
    out = {}
    for name in which:
        m = metric(name)
        if m.value is None:
            raise ValueError(f"metric {name!r} is not computed from sums")
        out[name] = m.value(sums)
    return out


def rank(name: str) -> int:
    """Display position of a metric: the ranking metrics first (by family, then K), then the
    registry's order; unknown names sort last."""
    if is_ranking(name):
        family, _, k = name.partition("@")
        return -1_000_000 + _RANKING_ORDER.index(family) * 10_000 + (int(k) if k else 9_999)
    return _RANK.get(name, len(_RANK))


_RANK = {m.name: i for i, m in enumerate(REGISTRY)}


def regression(name: str, baseline, candidate):
    """How much worse the candidate is (positive = worse), in the metric's own units."""
    direction = metric(name).direction
    if direction == "higher":
        return baseline - candidate
    if direction == "lower":
        return candidate - baseline
    if direction == "closer_to_1":
        return abs(candidate - 1.0) - abs(baseline - 1.0)
    raise ValueError(f"metric {name!r} has no direction")


def is_better(name: str, baseline, candidate) -> bool:
    return regression(name, baseline, candidate) < 0
