"""Counterfactual A/B: each model judged on the lists it would itself have shown, estimated
off-policy from logged propensities (``mmoe compare``'s ``policy_values`` table).

The logged traffic (``mmoe data synth --logging-policy``, or any features table with
``propensity``) shows each request a list of ``k`` candidates out of the request's pool (the
``candidates`` table), candidate ``i`` with inclusion probability ``pi0_i`` (its
``propensity``). A target policy shows ``k`` of the same pool with inclusion ``pi_i``
(:mod:`jobs.core.policy`): ``top_k`` the model's ``k`` best by ``p_<task>`` (ties: the lower
key); ``softmax`` inclusion proportional to ``exp(logit(p)/temperature)`` (p clipped to
[1e-6, 1 - 1e-6]), capped at 1. Its value for a task is
the expected number of positives per shown slot, ``V = sum_r sum_i pi_i q_i / sum_r k_r``. The
labels do not depend on the position (the simulator has no position effect), so a list's value
is that of its set, and the estimators weigh each logged impression by
``w = min(pi_i / pi0_i, max_weight)``:

- ``ips``:   ``sum w y / sum k``;
- ``snips``: ``sum w y / sum w`` (self-normalised);
- ``dr``:    ``(sum_pool pi q^ + sum w (y - q^)) / sum k``, the reward model ``q^`` being a named
  arm's predictions (``compare.counterfactual.reward_model``, the baseline's by default; the
  same for both arms, so their difference is not the reward model's).

For a conditional task (conversion after a click) the reward is the task's label, which implies
the parent's, and the score is the joint ``p_parent * p_child``. ``ess`` is Kish's effective
sample size ``(sum w)^2 / sum w^2`` over the logged impressions. Intervals are asymptotic:
every estimate is a ratio of per-user sums ``A/B``; its variance is the delta method's,
clustered by user (``sum_u (A_u - V B_u)^2 / (sum B)^2`` times ``n/(n-1)``), and the paired
difference candidate − baseline uses the difference of the two linearisations per user
(method ``delta_user``). The truth, when the pools' true probabilities are known (synth's
``candidate_truth``), is ``V`` itself on the logged requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pandas as pd
from scipy import stats

from jobs.core.policy import capped_inclusion

ESTIMATORS = ("ips", "snips", "dr")
POLICIES = ("top_k", "softmax")
LOGGED = "logged"            # the policy (and arm) of the logged traffic itself
METHOD = "delta_user"
ARMS = ("baseline", "candidate")
_EPS = 1e-6

SUM_COLUMNS = ("a_ips", "a_dr", "sw", "sw2", "truth", "slots", "shown", "clipped")
SUMS_SCHEMA = ("u long, arm string, policy string, task string, a_ips double, a_dr double, "
               "sw double, sw2 double, truth double, slots double, shown long, clipped long")


# --------------------------------------------------------------------------------------------
# Target policies


def target_inclusion(score: np.ndarray, group: np.ndarray, k: np.ndarray, key: np.ndarray,
                     policy: str, temperature: float) -> np.ndarray:
    """Inclusion probability [n] of every pool candidate under ``policy`` ranking by ``score``
    (``group``: request index 0..G-1, ``k``: [G] list sizes; ties go to the lower ``key``)."""
    if policy == "top_k":
        order = np.lexsort((key, -score, group))
        starts = np.r_[0, np.flatnonzero(np.diff(group[order])) + 1]
        sizes = np.diff(np.r_[starts, len(order)])
        rank = np.arange(len(order)) - np.repeat(starts, sizes)
        pi = np.empty(len(score))
        pi[order] = rank < k[group[order]]
        return pi
    if policy == "softmax":
        p = np.clip(score, _EPS, 1.0 - _EPS)
        logit = np.log(p) - np.log1p(-p)
        top = np.full(len(k), -np.inf)
        np.maximum.at(top, group, logit)
        return capped_inclusion(np.exp((logit - top[group]) / temperature), group, k)
    raise ValueError(f"unknown target policy {policy!r} (one of {', '.join(POLICIES)})")


def task_scores(frame: pd.DataFrame, prefix: str, tasks: list[str],
                parents: dict[str, str]) -> dict[str, np.ndarray]:
    """Each task's score from an arm's ``<prefix>_<task>`` columns: a conditional child's is
    the joint ``p_parent * p_child`` (its label implies the parent's)."""
    out = {}
    for t in tasks:
        p = frame[f"{prefix}_{t}"].to_numpy(dtype=np.float64)
        out[t] = p * frame[f"{prefix}_{parents[t]}"].to_numpy(dtype=np.float64) \
            if t in parents else p
    return out


# --------------------------------------------------------------------------------------------
# Per-user sums (on the executors: one partition holds every row of its users)


@dataclass(frozen=True)
class SumsConfig:
    tasks: tuple[str, ...]
    parents: dict[str, str] = field(default_factory=dict)   # child -> parent
    policies: tuple[str, ...] = POLICIES
    temperature: float = 0.5
    max_weight: float = 1000.0
    reward_arm: str = "baseline"
    arms: tuple[str, ...] = ARMS
    truth: bool = False


def user_sums(pool: pd.DataFrame, cfg: SumsConfig) -> pd.DataFrame:
    """Per (user, arm, policy, task) the sums the estimators are ratios of.

    ``pool``: one row per candidate with ``u`` (user), ``r`` (request), ``key`` (tie-break),
    ``shown`` (logged), ``propensity`` (logging inclusion; needed on shown rows, on every row
    for the ``logged`` policy), ``y_<task>`` (labels of shown rows), ``<arm>_<task>`` (scores)
    and, with ``cfg.truth``, ``q_<task>`` (true probabilities). Requests without a shown row
    are left out."""
    shown_any = pool.groupby("r", sort=False)["shown"].transform("any")
    pool = pool[shown_any.to_numpy(dtype=bool)]
    if pool.empty:
        return pd.DataFrame(columns=["u", "arm", "policy", "task", *SUM_COLUMNS])
    group, _ = pd.factorize(pool["r"], sort=False)
    ucode, users = pd.factorize(pool["u"], sort=False)
    shown = pool["shown"].to_numpy(dtype=bool)
    k = np.bincount(group, shown).astype(np.float64)
    pi0 = pool["propensity"].to_numpy(dtype=np.float64)
    key = pool["key"].to_numpy()
    n_users = len(users)
    req_user = np.zeros(len(k), dtype=np.int64)
    req_user[group] = ucode
    slots = np.bincount(req_user, k, minlength=n_users)
    reward = task_scores(pool, cfg.reward_arm, list(cfg.tasks), cfg.parents)
    rows = []

    def add(arm, policy, task, pi):
        y = np.nan_to_num(pool[f"y_{task}"].to_numpy(dtype=np.float64))
        w = np.where(shown, pi / np.where(shown, pi0, 1.0), 0.0)
        wc = np.minimum(w, cfg.max_weight)
        q_hat = reward[task]
        dr = pi * q_hat + wc * (y - q_hat)
        sums = {"a_ips": wc * y, "a_dr": dr, "sw": wc, "sw2": wc * wc,
                "truth": pi * pool[f"q_{task}"].to_numpy(dtype=np.float64) if cfg.truth
                else np.zeros(len(pi))}
        part = {c: np.bincount(ucode, v, minlength=n_users) for c, v in sums.items()}
        part["shown"] = np.bincount(ucode, shown, minlength=n_users).astype(np.int64)
        part["clipped"] = np.bincount(ucode, w > cfg.max_weight, minlength=n_users).astype(np.int64)
        rows.append(pd.DataFrame({"u": users, "arm": arm, "policy": policy, "task": task,
                                  **part, "slots": slots}))

    for arm in cfg.arms:
        scores = task_scores(pool, arm, list(cfg.tasks), cfg.parents)
        for policy in cfg.policies:
            for task in cfg.tasks:
                add(arm, policy, task,
                    target_inclusion(scores[task], group, k, key, policy, cfg.temperature))
    if not np.isnan(pi0).any():          # the logging policy itself, as a reference
        for task in cfg.tasks:
            add(LOGGED, LOGGED, task, pi0)
    return pd.concat(rows, ignore_index=True)[["u", "arm", "policy", "task", *SUM_COLUMNS]]


def user_sums_batches(batches: Iterator[pd.DataFrame], cfg: SumsConfig) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` body: the partition's batches as one frame (a user's rows may span
    batches), then :func:`user_sums`."""
    frames = list(batches)
    if frames:
        yield user_sums(pd.concat(frames, ignore_index=True), cfg)


# --------------------------------------------------------------------------------------------
# Estimates (on the driver, from the per-user sums)


def _ratio(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    """V = sum a / sum b and each user's linearised contribution to it."""
    total = b.sum()
    value = a.sum() / total if total > 0 else float("nan")
    return value, (a - value * b) / total if total > 0 else np.full(len(a), np.nan)


def _se(influence: np.ndarray) -> float:
    n = len(influence)
    if n < 2:
        return float("nan")
    return float(np.sqrt(n / (n - 1) * np.sum(influence ** 2)))


def _estimate(sums: pd.DataFrame, estimator: str) -> tuple[float, np.ndarray]:
    a = sums["a_dr" if estimator == "dr" else "a_ips"].to_numpy(dtype=np.float64)
    b = sums["sw" if estimator == "snips" else "slots"].to_numpy(dtype=np.float64)
    return _ratio(a, b)


def policy_values(sums: pd.DataFrame, alpha: float = 0.05, truth: bool = False) -> pd.DataFrame:
    """The estimates from per-user sums: per (arm, policy, task, estimator) ``value``,
    ``ci_low``/``ci_high`` (two-sided ``1 - alpha``), ``se``, ``ess``, ``n`` (logged
    impressions), ``users``, ``clipped``, ``truth``; then per (policy, task, estimator) the paired
    difference candidate − baseline (arm ``difference``) with its ``verdict``."""
    z = float(stats.norm.ppf(1.0 - alpha / 2.0))
    sums = sums.groupby(["u", "arm", "policy", "task"], as_index=False, sort=True)[
        list(SUM_COLUMNS)].sum()
    out, influence = [], {}
    for (arm, policy, task), g in sums.groupby(["arm", "policy", "task"], sort=False):
        g = g.sort_values("u")
        sw, sw2 = g["sw"].sum(), g["sw2"].sum()
        true_value = g["truth"].sum() / g["slots"].sum() if truth else np.nan
        for est in ESTIMATORS:
            value, infl = _estimate(g, est)
            influence[(arm, policy, task, est)] = pd.Series(infl, index=g["u"].to_numpy())
            se = _se(infl)
            out.append({"arm": arm, "policy": policy, "task": task, "estimator": est,
                        "value": value, "ci_low": value - z * se, "ci_high": value + z * se,
                        "se": se, "ess": sw * sw / sw2 if sw2 > 0 else 0.0,
                        "n": int(g["shown"].sum()), "users": len(g),
                        "clipped": int(g["clipped"].sum()), "truth": true_value,
                        "verdict": None})
    table = pd.DataFrame(out)
    diffs = []
    for (policy, task, est), g in table[table["arm"].isin(ARMS)].groupby(
            ["policy", "task", "estimator"], sort=False):
        by = {r["arm"]: r for r in g.to_dict("records")}
        if set(by) != set(ARMS):
            continue
        b, c = (influence[(arm, policy, task, est)] for arm in ARMS)
        d = c.sub(b, fill_value=0.0).to_numpy()
        value, se = by["candidate"]["value"] - by["baseline"]["value"], _se(d)
        lo, hi = value - z * se, value + z * se
        diffs.append({"arm": "difference", "policy": policy, "task": task, "estimator": est,
                      "value": value, "ci_low": lo, "ci_high": hi, "se": se, "ess": np.nan,
                      "n": by["candidate"]["n"], "users": by["candidate"]["users"],
                      "clipped": by["candidate"]["clipped"] + by["baseline"]["clipped"],
                      "truth": by["candidate"]["truth"] - by["baseline"]["truth"],
                      "verdict": "better" if lo > 0 else "worse" if hi < 0 else "no_difference"})
    return pd.concat([table, pd.DataFrame(diffs)], ignore_index=True)


__all__ = ["ESTIMATORS", "POLICIES", "LOGGED", "SumsConfig", "target_inclusion", "task_scores",
           "user_sums", "user_sums_batches", "policy_values"]
