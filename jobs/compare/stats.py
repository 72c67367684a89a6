"""Paired statistics for offline A/B comparison of two models scored on the same rows.

Pure numpy (no Spark, no torch), so every formula is testable against an independent oracle and
the Spark stage (``jobs.compare.stage``) only moves data to these functions on the executors.

- **AUC**: DeLong, DeLong & Clarke-Pearson (1988), "Comparing the areas under two or more
  correlated ROC curves", exact: placement values from mid-ranks (tied scores count 1/2), no
  score binning. Everything a test needs is in 12 sums per group (:data:`MOMENTS`), so groups
  can be summed before the variance is formed.
- **Everything else**: a paired bootstrap clustered by user. Replicate r gives user u the
  weight Poisson(1) drawn from a hash of (u, r, seed) - deterministic, the same for both arms,
  independent of partitioning. A metric that is a ratio of sums is computed per replicate from
  per-user sums (a matrix product), so the cost is O(users x replicates), not O(rows x
  replicates). The interval is the normal bootstrap interval (delta +- z * bootstrap SE) and the
  p-value its two-sided normal counterpart, so interval and p-value always agree and p-values
  keep their resolution below 1/replicates (needed once they are adjusted for multiplicity).
- **Multiplicity**: Holm (family-wise error) or Benjamini-Hochberg (false discovery rate),
  and intervals adjusted to the same multiplicity (:func:`adjusted_levels`), so a row's
  adjusted interval excludes 0 exactly when its adjusted p-value is below alpha: for BH the
  Benjamini-Yekutieli (2005) false-coverage-rate intervals (level 1 - R alpha / m for R
  rejections among m tests), for Holm the level each row was tested at by the step-down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri

from jobs.core import metric_registry
from jobs.core.metric_registry import Sums
from mmoe_model.hashing import splitmix64, value_hash64

EPS = 1e-15
# Sums of placement values per group: positives m, negatives n, then for the positives' V10
# and the negatives' V01 under arm b (baseline) and c (candidate): sum b, sum c, sum b^2,
# sum c^2, sum b*c.
MOMENTS = ("m", "n", "s10b", "s10c", "q10b", "q10c", "x10", "s01b", "s01c", "q01b", "q01c", "x01")


# --------------------------------------------------------------------------------------------
# Grouped mid-rank placements


@dataclass(frozen=True)
class Ranked:
    """Dense ranks of scores (equal scores, equal rank) and the rows in score order."""

    rank: np.ndarray
    order: np.ndarray


def score_ranks(s: np.ndarray) -> Ranked:
    """One float sort per score column; every grouped ordering after it is an integer sort."""
    s = np.asarray(s, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    ss = s[order]
    new = np.ones(len(ss), dtype=np.int64)
    new[1:] = ss[1:] != ss[:-1]
    rank = np.empty(len(s), dtype=np.int64)
    rank[order] = np.cumsum(new) - 1
    return Ranked(rank, order)


@dataclass(frozen=True)
class Runs:
    """Rows ordered by (group, score); a run is a maximal set of tied rows of one group."""

    order: np.ndarray       # row indices in (group, score) order
    run_of: np.ndarray      # run of each ordered row
    code: np.ndarray        # group of each run
    pos: np.ndarray         # positives / negatives of each run
    neg: np.ndarray
    pos_before: np.ndarray  # positives / negatives of the group scoring below the run
    neg_before: np.ndarray


def _order(code: np.ndarray, ranked: Ranked) -> np.ndarray:
    """Rows in (group, score) order: a stable sort by group of the rows in score order (a radix
    sort when the groups fit in 16 bits, as segment values do)."""
    by_score = ranked.order
    if not len(code) or int(code.max()) < 1 << 16:
        return by_score[np.argsort(code[by_score].astype(np.uint16), kind="stable")]
    return by_score[np.argsort(code[by_score], kind="stable")]


def runs(code: np.ndarray, y: np.ndarray, ranked: Ranked) -> Runs:
    code = np.asarray(code, dtype=np.int64)
    rank = ranked.rank
    order = _order(code, ranked)
    cs, rs, ys = code[order], rank[order], y[order].astype(np.int64)
    new_run = np.ones(len(cs), dtype=bool)
    new_run[1:] = (cs[1:] != cs[:-1]) | (rs[1:] != rs[:-1])
    run_start = np.flatnonzero(new_run)
    run_pos = np.add.reduceat(ys, run_start) if len(ys) else ys
    run_neg = np.diff(np.append(run_start, len(cs))) - run_pos
    run_code = cs[run_start]
    cum_pos = np.cumsum(run_pos) - run_pos
    cum_neg = np.cumsum(run_neg) - run_neg
    first_run = np.ones(len(run_start), dtype=bool)
    first_run[1:] = run_code[1:] != run_code[:-1]
    base = np.maximum.accumulate(np.where(first_run, np.arange(len(run_start)), 0))
    return Runs(order, np.cumsum(new_run) - 1, run_code, run_pos, run_neg,
                cum_pos - cum_pos[base], cum_neg - cum_neg[base])


def placements(code: np.ndarray, y: np.ndarray, s: np.ndarray, groups: int,
               rank: Ranked | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, within its group ``code``: for a positive, the negatives scoring below it plus
    half the tied negatives; for a negative, the positives scoring above it plus half the tied
    positives. Also returns the positives and negatives per group.

    Divided by the group's negatives (resp. positives) these are DeLong's V10 (resp. V01).
    ``rank`` (:func:`score_ranks` of ``s``) saves the float sort when it is already known.
    """
    code = np.asarray(code, dtype=np.int64)
    y = np.asarray(y).astype(bool)
    out = np.zeros(len(y), dtype=np.float64)
    pos = np.bincount(code[y], minlength=groups).astype(np.int64)
    neg = np.bincount(code[~y], minlength=groups).astype(np.int64)
    if not len(y):
        return out, pos, neg
    r = runs(code, y, score_ranks(s) if rank is None else rank)
    pos_above = pos[r.code] - r.pos_before - r.pos
    v_pos = r.neg_before + 0.5 * r.neg
    v_neg = pos_above + 0.5 * r.pos
    ys = y[r.order]
    out[r.order] = np.where(ys, v_pos[r.run_of], v_neg[r.run_of])
    return out, pos, neg


def grouped_average_precision(code: np.ndarray, y: np.ndarray, s: np.ndarray, groups: int,
                              rank: Ranked | None = None) -> np.ndarray:
    """Exact average precision per group (each distinct score one threshold, as sklearn);
    NaN without positives."""
    code = np.asarray(code, dtype=np.int64)
    y = np.asarray(y).astype(bool)
    r = runs(code, y, score_ranks(s) if rank is None else rank)
    pos = np.bincount(code[y], minlength=groups).astype(np.float64)
    cnt = np.bincount(code, minlength=groups).astype(np.float64)
    tp_ge = pos[r.code] - r.pos_before
    n_ge = cnt[r.code] - r.pos_before - r.neg_before
    terms = r.pos * tp_ge / np.maximum(n_ge, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pos > 0, np.bincount(r.code, weights=terms, minlength=groups) / pos, np.nan)


def delong_moments(code: np.ndarray, y: np.ndarray, sb: np.ndarray, sc: np.ndarray,
                   groups: int, ranks: tuple[Ranked, Ranked] | None = None) -> np.ndarray:
    """The :data:`MOMENTS` of each group, shape (groups, 12)."""
    code = np.asarray(code, dtype=np.int64)
    y = np.asarray(y).astype(bool)
    rb, rc = ranks if ranks is not None else (None, None)
    vb, pos, neg = placements(code, y, sb, groups, rb)
    vc, _, _ = placements(code, y, sc, groups, rc)
    # V10 divides by the group's negatives, V01 by its positives
    denom = np.where(y, neg[code], pos[code]).astype(np.float64)
    denom[denom == 0] = np.nan  # single-class group: no AUC
    vb, vc = vb / denom, vc / denom
    out = np.zeros((groups, len(MOMENTS)))
    out[:, 0], out[:, 1] = pos, neg
    for offset, mask in ((2, y), (7, ~y)):
        g = code[mask]
        b, c = vb[mask], vc[mask]
        for k, values in enumerate((b, c, b * b, c * c, b * c)):
            out[:, offset + k] = np.bincount(g, weights=np.nan_to_num(values), minlength=groups)
    return out


@dataclass(frozen=True)
class Test:
    """A paired comparison: values of both arms, delta = candidate - baseline, its standard error,
    the two-sided p-value of delta = 0 and the (1 - alpha) interval."""

    baseline: float
    candidate: float
    delta: float
    se: float
    p_value: float
    ci_low: float
    ci_high: float


def _normal_test(baseline: float, candidate: float, se: float, alpha: float) -> Test:
    delta = candidate - baseline
    if not (math.isfinite(delta) and math.isfinite(se)):
        return Test(baseline, candidate, delta, se, math.nan, math.nan, math.nan)
    z = float(ndtri(1.0 - alpha / 2.0))
    if se <= 0.0:  # identical arms (or a degenerate resample): no evidence of any difference
        p = 1.0 if delta == 0.0 else 0.0
    else:
        p = float(2.0 * ndtr(-abs(delta) / se))
    return Test(baseline, candidate, delta, se, p, delta - z * se, delta + z * se)


def delong_test(moments: np.ndarray, alpha: float = 0.05) -> Test:
    """DeLong's test from one group's :data:`MOMENTS` (a 12-vector)."""
    m, n = float(moments[0]), float(moments[1])
    if m < 2 or n < 2:
        auc_b = moments[2] / m if m and n else math.nan
        auc_c = moments[3] / m if m and n else math.nan
        return Test(auc_b, auc_c, auc_c - auc_b, math.nan, math.nan, math.nan, math.nan)

    def cov(count: float, sb: float, sc: float, qb: float, qc: float, x: float) -> np.ndarray:
        mb, mc = sb / count, sc / count
        return np.array([[qb - count * mb * mb, x - count * mb * mc],
                         [x - count * mb * mc, qc - count * mc * mc]]) / (count - 1.0)

    s10 = cov(m, *moments[2:7])
    s01 = cov(n, *moments[7:12])
    auc_b, auc_c = moments[2] / m, moments[3] / m
    contrast = np.array([-1.0, 1.0])
    var = float(contrast @ s10 @ contrast / m + contrast @ s01 @ contrast / n)
    return _normal_test(float(auc_b), float(auc_c), math.sqrt(max(var, 0.0)), alpha)


def delong(y: np.ndarray, sb: np.ndarray, sc: np.ndarray, alpha: float = 0.05) -> Test:
    """DeLong's test on one group of rows."""
    code = np.zeros(len(y), dtype=np.int64)
    return delong_test(delong_moments(code, y, sb, sc, 1)[0], alpha)


def bootstrap_test(baseline: float, candidate: float, deltas: np.ndarray, alpha: float = 0.05) -> Test:
    """Normal bootstrap interval and p-value from the replicates' deltas (NaN replicates, e.g. a
    resample without positives, are left out)."""
    deltas = np.asarray(deltas, dtype=np.float64)
    deltas = deltas[np.isfinite(deltas)]
    se = float(np.std(deltas, ddof=1)) if len(deltas) > 1 else math.nan
    return _normal_test(baseline, candidate, se, alpha)


# --------------------------------------------------------------------------------------------
# Cluster bootstrap weights

_POISSON_CDF = np.cumsum([math.exp(-1.0) / math.factorial(k) for k in range(20)])


def poisson_weights(user_hash: np.ndarray, replicates: np.ndarray, seed: int) -> np.ndarray:
    """Poisson(1) weights, shape (users, len(replicates)), a pure function of (user hash,
    replicate, seed): the inverse CDF of a uniform made from hashing the three together."""
    user_hash = np.asarray(user_hash, dtype=np.uint64)
    with np.errstate(over="ignore"):
        salt = splitmix64(np.asarray(replicates, dtype=np.int64) * np.int64(1_000_003) + np.int64(seed))
        mixed = splitmix64((user_hash[:, None] ^ salt[None, :]).view(np.int64))
    uniform = (mixed >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return np.searchsorted(_POISSON_CDF, uniform, side="right").astype(np.float32)


def user_hash(values) -> np.ndarray:
    """64-bit hashes of user ids (integers hashed directly, anything else via its string)."""
    return value_hash64(np.asarray(values))


# --------------------------------------------------------------------------------------------
# Metrics from sufficient statistics (vectorised over replicates)


def logloss_terms(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return -np.log(np.where(np.asarray(y) > 0, p, 1.0 - p))


def metric_from_sums(metric: str, w: np.ndarray, wy: np.ndarray, wp: np.ndarray,
                     wll: np.ndarray) -> np.ndarray:
    """logloss, ne or calibration from (weighted) counts, positives, score sums and log-loss
    sums; NaN where undefined. The formulas are the registry's (``jobs.core.metric_registry``),
    the ones ``jobs.evaluate.metrics`` uses."""
    if metric not in ("logloss", "ne", "calibration"):
        raise ValueError(f"unknown sum metric {metric!r}")
    return metric_registry.values(Sums(w, wy, p_sum=wp, logloss_sum=wll), [metric])[metric]


def grouped_auc(code: np.ndarray, y: np.ndarray, s: np.ndarray, groups: int,
                rank: Ranked | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact AUC per group (NaN for a single-class group) and the group's row counts."""
    y = np.asarray(y).astype(bool)
    v, pos, neg = placements(code, y, s, groups, rank)
    num = np.bincount(np.asarray(code)[y], weights=v[y], minlength=groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = np.where((pos > 0) & (neg > 0), num / (pos * neg), np.nan)
    return auc, pos + neg


def average_precision(pos: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Average precision from score-ordered histograms (ascending score along the last axis), each
    bin one threshold (as tied scores are); vectorised over leading axes. Equals
    ``sklearn.metrics.average_precision_score`` when every bin holds one distinct score."""
    pos = np.asarray(pos, dtype=np.float64)
    count = np.asarray(count, dtype=np.float64)
    tp = np.cumsum(pos[..., ::-1], axis=-1)[..., ::-1]   # positives scoring >= the bin
    n = np.cumsum(count[..., ::-1], axis=-1)[..., ::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(n > 0, tp / n, 0.0)
        total = pos.sum(axis=-1)
        return np.where(total > 0, (pos * prec).sum(axis=-1) / total, np.nan)


# --------------------------------------------------------------------------------------------
# Multiplicity


def _tests(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The p-values as floats, an all-NaN output of their shape, the indices of the tests
    (finite p-values; NaN is no test)."""
    p = np.asarray(p, dtype=np.float64)
    return p, np.full(p.shape, np.nan), np.flatnonzero(np.isfinite(p))


def adjust_pvalues(p: np.ndarray, method: str) -> np.ndarray:
    """Holm's step-down or Benjamini-Hochberg's step-up adjusted p-values; NaN stays NaN and
    does not count as a test."""
    p, out, idx = _tests(p)
    k = len(idx)
    if not k:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    sorted_p = p[order]
    if method == "holm":
        adj = np.maximum.accumulate(np.minimum(1.0, (k - np.arange(k)) * sorted_p))
    elif method == "bh":
        adj = np.minimum.accumulate((k / np.arange(1, k + 1) * sorted_p)[::-1])[::-1]
        adj = np.minimum(adj, 1.0)
    else:
        raise ValueError(f"unknown adjustment {method!r} (holm or bh)")
    out[order] = adj
    return out


def adjusted_levels(p: np.ndarray, method: str, alpha: float) -> np.ndarray:
    """Per test, the miscoverage level of its multiplicity-adjusted interval (NaN where p is).

    - ``bh``: Benjamini & Yekutieli (2005), "False discovery rate-adjusted multiple confidence
      intervals for selected parameters": with R of the m tests rejected by BH at ``alpha``,
      every interval at level 1 - max(R, 1) alpha / m. The rejected have p < R alpha / m (their
      intervals exclude 0) and the others p >= (R + 1) alpha / m (theirs include it); the
      selected intervals keep the false coverage rate at or below alpha.
    - ``holm``: the level the step-down tested each row at: alpha / (m - r + 1) for the rejected
      r-th smallest p-value, alpha / (m - R) for every row not rejected.

    So with a normal interval (delta +- z(1 - level / 2) se, the p-value its counterpart), the
    adjusted interval excludes 0 exactly when ``adjust_pvalues(p, method) < alpha``.
    """
    p, out, idx = _tests(p)
    m = len(idx)
    if not m:
        return out
    rejected = adjust_pvalues(p, method)[idx] < alpha
    r = int(rejected.sum())
    if method == "bh":
        out[idx] = max(r, 1) * alpha / m
    elif method == "holm":
        rank = np.empty(m, dtype=np.int64)  # 1-based position among the sorted p-values
        rank[np.argsort(p[idx], kind="stable")] = np.arange(1, m + 1)
        out[idx] = np.where(rejected, alpha / (m - rank + 1), alpha / max(m - r, 1))
    else:
        raise ValueError(f"unknown adjustment {method!r} (holm or bh)")
    return out


def normal_interval(delta: np.ndarray, se: np.ndarray, level: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """delta -+ z(1 - level / 2) se: the interval of :func:`_normal_test` at another level."""
    z = ndtri(1.0 - np.asarray(level, dtype=np.float64) / 2.0)
    delta, se = np.asarray(delta, dtype=np.float64), np.asarray(se, dtype=np.float64)
    return delta - z * se, delta + z * se


def replicate_sums(cluster: np.ndarray, values: np.ndarray, hashes: np.ndarray, replicates: int,
                   seed: int, chunk: int = 64) -> np.ndarray:
    """Per-replicate weighted column sums, shape (replicates, k), of ``values`` (rows x k) whose
    rows belong to clusters ``cluster`` (codes into ``hashes``, one hash per cluster): rows are
    first summed per cluster, so each replicate costs one (clusters x k) product."""
    values = np.asarray(values, dtype=np.float64).reshape(len(cluster), -1)
    per_cluster = np.zeros((len(hashes), values.shape[1]))
    np.add.at(per_cluster, np.asarray(cluster, dtype=np.int64), values)
    out = np.empty((replicates, values.shape[1]))
    for start in range(0, replicates, chunk):
        reps = np.arange(start, min(start + chunk, replicates))
        out[reps] = poisson_weights(hashes, reps, seed).T.astype(np.float64) @ per_cluster
    return out
