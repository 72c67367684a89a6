"""The A/B comparison of one group of paired rows, and the verdicts and decision over a report.

Spark-free (numpy / pandas): ``jobs.compare.stage`` hands every (task, scope) group of paired,
labelled rows to :func:`group_records` on an executor and the small result back to
:func:`finish_report` / :func:`decide` on the driver.

Metrics and how their uncertainty is measured (``method`` column of the records):

- ``auc`` — exact DeLong (``jobs.compare.stats``), no resampling;
- ``logloss``, ``ne``, ``calibration`` — user-clustered paired Poisson bootstrap of their
  sufficient statistics (rows, positives, score sum, log-loss sum per user);
- ``gauc`` — the same bootstrap over users, exact: a user's AUC does not change when all of
  their rows are replicated, so a replicate is the weighted mean of the per-user AUCs;
- ``pr_auc`` — the point estimate is exact (every distinct score a threshold); its bootstrap
  runs on histograms of the scores on a fine logit grid (:data:`LOGIT_STEP` wide bins), because
  an exact average precision per replicate would need a sort per replicate. The bin width moves
  the replicate values by far less than their spread, so the interval is honest, if not exact.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import sparse

from jobs.compare import stats
from jobs.core import metric_registry, ranking
from jobs.core.metric_registry import Sums
from jobs.core.slices import SEP
from mmoe_model.hashing import splitmix64
from schemas.tables import ddl_arrow_schema

LOGIT_STEP = 0.05                     # PR-AUC bootstrap bins, in logit units
LOGIT_RANGE = 16.0
PLOT_STEP = 0.1                       # the report's figures: bins of this width in logit units
PLOT_BINS = int(2 * LOGIT_RANGE / PLOT_STEP)
RECORD_COLUMNS = ["task", "scope", "segment", "metric", "method", "baseline_value",
                  "candidate_value", "delta", "se", "p_value", "ci_low", "ci_high", "n", "payload"]
RECORD_SCHEMA = ("task string, scope string, segment string, metric string, method string, "
                 "baseline_value double, candidate_value double, delta double, se double, "
                 "p_value double, ci_low double, ci_high double, n long, payload string")


N_LOGIT_BINS = int(2 * LOGIT_RANGE / LOGIT_STEP) + 1
# bootstrapped from per-user sums (registry formulas, as evaluate); auc by DeLong, pr_auc on bins
SUM_METRICS = tuple(m for m in metric_registry.COMPARED if m not in ("auc", "pr_auc"))
SUM_COLUMNS = 9   # _Level.X: rows, positives, 2 score sums, 2 log-loss sums, 3 GAUC terms


def _logit_bin(s: np.ndarray, step: float = LOGIT_STEP) -> np.ndarray:
    p = np.clip(s, 1e-7, 1 - 1e-7)
    z = np.clip(np.log(p) - np.log1p(-p), -LOGIT_RANGE, LOGIT_RANGE)
    return np.floor((z + LOGIT_RANGE) / step).astype(np.int64)


def plot_bins(s: np.ndarray) -> np.ndarray:
    """The report's bin of each score: :data:`PLOT_STEP`-wide bins of its log-odds, clipped to
    ±:data:`LOGIT_RANGE` (a rare task's scores spread over many bins, not one bin at 0)."""
    return np.minimum(_logit_bin(s, PLOT_STEP), PLOT_BINS - 1)


def _plot_payload(y: np.ndarray, sb: np.ndarray, sc: np.ndarray) -> str:
    """Histograms per arm on log-odds bins (:func:`plot_bins`): enough for ROC curves,
    quantile-binned reliability diagrams and score distributions of the report without any row
    leaving the executor. Bin i covers log-odds [lo + i * step, lo + (i + 1) * step)."""
    out: dict = {"scale": "logit", "lo": -LOGIT_RANGE, "step": PLOT_STEP, "bins": PLOT_BINS}
    for arm, s in (("baseline", sb), ("candidate", sc)):
        b = plot_bins(s)
        out[arm] = {"pos": np.bincount(b, weights=y, minlength=PLOT_BINS).astype(int).tolist(),
                    "cnt": np.bincount(b, minlength=PLOT_BINS).tolist(),
                    "psum": np.round(np.bincount(b, weights=s, minlength=PLOT_BINS), 9).tolist()}
    return json.dumps(out)


def _record(task, scope, segment, metric, method, t: stats.Test, n, payload=None) -> dict:
    return {"task": task, "scope": scope, "segment": segment, "metric": metric, "method": method,
            "baseline_value": t.baseline, "candidate_value": t.candidate, "delta": t.delta,
            "se": t.se, "p_value": t.p_value, "ci_low": t.ci_low, "ci_high": t.ci_high,
            "n": int(n), "payload": payload}


@dataclass
class _Arm:
    s: np.ndarray
    rank: stats.Ranked
    bins: np.ndarray
    ll: np.ndarray


def _sum_metrics(S: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(baseline, candidate) values per replicate row of the per-pair sums S (see _level_sums)."""
    w, wy = S[:, 0], S[:, 1]
    arms = [metric_registry.values(Sums(w, wy, p_sum=S[:, 2 + a], logloss_sum=S[:, 4 + a],
                                        gauc_sum=S[:, 6 + a], gauc_rows=S[:, 8]), SUM_METRICS)
            for a in (0, 1)]
    return {m: (arms[0][m], arms[1][m]) for m in SUM_METRICS}


@dataclass
class _Level:
    """One segment level's per-(segment, user) pair sums, ready for the replicates."""

    groups: int
    bounds: np.ndarray        # pairs of group g: bounds[g]:bounds[g + 1]
    pair_user: np.ndarray
    X: np.ndarray             # pairs x 9: rows, positives, score sums, log-loss sums, GAUC terms
    hist: list                # per arm: (positives, rows) per pair x logit bin, sparse
    ap: list                  # per arm: exact average precision per group
    deltas: list = field(default_factory=list)
    ranking: list = field(default_factory=list)   # ranking metrics: X[:, SUM_COLUMNS:] holds their
    lists: np.ndarray | None = None               # per-arm sums, then the judged requests; per group


@dataclass
class _Lists:
    """What the ranking metrics need of a group: each row's request code and key order."""

    request: np.ndarray
    requests: int
    tie: np.ndarray
    ks: tuple[int, ...]


def _ranking_columns(code: np.ndarray, y: np.ndarray, b: _Arm, c: _Arm, ucode: np.ndarray,
                     users: int, pair_key: np.ndarray, lists: _Lists) -> tuple[list[str], np.ndarray]:
    """Per (segment, user) pair: each ranking metric's sum over the pair's judged requests, per
    arm, then the judged requests. A list is one request within one segment value
    (``jobs.core.ranking``); it belongs to the user of its rows."""
    group = code * lists.requests + lists.request
    per_arm = [ranking.request_values(group, y, a.s, lists.tie, lists.ks) for a in (b, c)]
    judged = per_arm[0].judged
    first_row = np.unique(group, return_index=True)[1]
    list_pair = np.searchsorted(pair_key, (per_arm[0].groups // lists.requests) * users
                                + ucode[first_row])[judged]
    names = list(per_arm[0].values)
    cols = [np.bincount(list_pair, weights=arm.values[m][judged], minlength=len(pair_key))
            for m in names for arm in per_arm]
    cols.append(np.bincount(list_pair, minlength=len(pair_key)).astype(np.float64))
    return names, np.column_stack(cols)


def _level(code: np.ndarray, groups: int, y: np.ndarray, b: _Arm, c: _Arm, ucode: np.ndarray,
           users: int, lists: _Lists | None = None) -> _Level:
    """Clusters are (segment value, user) pairs; a pair's weight is its user's, so a user weighs
    the same in every segment. Pairs are numbered in (segment, user) order, so a segment's
    pairs are one slice."""
    pair_key, pair = np.unique(code * users + ucode, return_inverse=True)
    pair = pair.reshape(-1)
    npairs = len(pair_key)
    yf = y.astype(np.float64)
    cols = [np.ones(len(y)), yf, b.s, c.s, b.ll, c.ll]
    X = np.column_stack([np.bincount(pair, weights=v, minlength=npairs) for v in cols])
    # GAUC: per-pair (user within segment) AUCs, exact, weighted by the pair's rows
    auc_b, cnt = stats.grouped_auc(pair, y, b.s, npairs, b.rank)
    auc_c, _ = stats.grouped_auc(pair, y, c.s, npairs, c.rank)
    wn = np.where(np.isfinite(auc_b), cnt, 0.0)
    X = np.hstack([X, np.column_stack([wn * np.nan_to_num(auc_b), wn * np.nan_to_num(auc_c), wn])])
    shape = (npairs, N_LOGIT_BINS)
    hist = [(sparse.csr_matrix((np.ones(int(y.sum())), (pair[y], a.bins[y])), shape=shape),
             sparse.csr_matrix((np.ones(len(y)), (pair, a.bins)), shape=shape)) for a in (b, c)]
    ap = [stats.grouped_average_precision(code, y, a.s, groups, a.rank) for a in (b, c)]
    names: list[str] = []
    if lists is not None:
        names, R = _ranking_columns(code, y, b, c, ucode, users, pair_key, lists)
        X = np.hstack([X, R])
    bounds = np.searchsorted(pair_key // users, np.arange(groups + 1))
    judged = np.array([X[lo:hi, -1].sum() if names else 0.0
                       for lo, hi in zip(bounds[:-1], bounds[1:])])
    return _Level(groups, bounds, pair_key % users, X, hist, ap, [{} for _ in range(groups)],
                  names, judged)


def _ranking_values(level: _Level, S: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(baseline, candidate) ranking values per replicate row of pair sums S: the weighted sum
    of the per-request values over the weighted judged requests."""
    out = {}
    count = S[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        for i, m in enumerate(level.ranking):
            vb, vc = S[:, SUM_COLUMNS + 2 * i], S[:, SUM_COLUMNS + 1 + 2 * i]
            out[m] = (np.where(count > 0, vb / count, np.nan), np.where(count > 0, vc / count, np.nan))
    return out


def _replicates(level: _Level, W_users: np.ndarray) -> None:
    """Add one chunk of replicates (user weights W_users, users x chunk) to the level's deltas."""
    W = W_users[level.pair_user]
    for g in range(level.groups):
        lo, hi = level.bounds[g], level.bounds[g + 1]
        Wg = W[lo:hi]
        S = Wg.T @ level.X[lo:hi]
        values = _sum_metrics(S)
        values.update(_ranking_values(level, S))
        values["pr_auc"] = tuple(
            stats.average_precision(np.asarray((h_pos[lo:hi].T @ Wg).T),
                                    np.asarray((h_cnt[lo:hi].T @ Wg).T)) for h_pos, h_cnt in level.hist)
        for m, (vb, vc) in values.items():
            level.deltas[g].setdefault(m, []).append(vc - vb)


def _level_tests(level: _Level, alpha: float) -> list[dict[str, stats.Test]]:
    out = []
    for g in range(level.groups):
        lo, hi = level.bounds[g], level.bounds[g + 1]
        S = level.X[lo:hi].sum(axis=0, keepdims=True)
        point = _sum_metrics(S)
        point["pr_auc"] = (level.ap[0][g:g + 1], level.ap[1][g:g + 1])
        point.update(_ranking_values(level, S))
        out.append({m: stats.bootstrap_test(float(point[m][0][0]), float(point[m][1][0]),
                                            np.concatenate(level.deltas[g][m]), alpha) for m in point})
    return out


def _segment_codes(values: pd.Series, column: str) -> tuple[np.ndarray, list[str]]:
    """Dense codes of a slice's values and the ``column=value`` names, sorted by value (a
    crossed slice's values arrive named: ``platform=ios & user_cohort=new``). A categorical
    column (as Arrow dictionaries arrive) is coded without a Python object per row."""
    prefix = "" if SEP in column else f"{column}="
    if isinstance(values.dtype, pd.CategoricalDtype):
        cats = np.asarray(values.cat.categories.astype(str))
        used, codes = np.unique(values.cat.codes.to_numpy(), return_inverse=True)
        names = cats[used]
        order = np.argsort(names, kind="stable")
        remap = np.empty(len(order), dtype=np.int64)
        remap[order] = np.arange(len(order))
        return remap[codes.reshape(-1)], [f"{prefix}{v}" for v in names[order]]
    names, codes = np.unique(values.astype(str).to_numpy(), return_inverse=True)
    return codes.reshape(-1).astype(np.int64), [f"{prefix}{v}" for v in names]


def _lists(pdf: pd.DataFrame, ks) -> _Lists | None:
    """The ranking metrics' lists of a group: column ``r`` (the request) and ``k0..`` (the key
    columns, the tie-break); None without them."""
    if "r" not in pdf.columns or not ks:
        return None
    request, rcode = np.unique(pdf["r"].to_numpy(dtype=np.int64), return_inverse=True)
    keys = [pdf[c].to_numpy() for c in sorted((c for c in pdf.columns if c[:1] == "k" and
                                                 c[1:].isdigit()), key=lambda c: int(c[1:]))]
    return _Lists(rcode.reshape(-1).astype(np.int64), len(request), ranking.tie_ranks(*keys),
                  tuple(ks))


def group_records_arrow(table, segments: list[str], replicates: int, seed: int, alpha: float,
                        ks=()):
    """``group_records`` on an Arrow table (``applyInArrow``): strings become categoricals, so a
    10M-row group costs no Python object per row."""
    out = group_records(table.to_pandas(strings_to_categorical=True), segments, replicates, seed,
                        alpha, ks)
    return pa.Table.from_pandas(out, schema=ddl_arrow_schema(RECORD_SCHEMA), preserve_index=False)


def group_records(pdf: pd.DataFrame, segments: list[str], replicates: int, seed: int,
                  alpha: float, ks=()) -> pd.DataFrame:
    """All records of one (task, scope) group of paired, labelled rows.

    ``pdf`` columns: task, scope, u (int64 user hash), y (0/1), b, c (the two arms' scores) and
    seg0.. (string value of each segment column); with ``ks`` and columns r (the request) and
    k0.. (the keys), the per-request ranking metrics too (``jobs.core.ranking``; their ``n`` is
    the requests with a positive). One record per segment x metric, plus, for segment ``all``,
    a ``plot`` record whose payload holds the report's histograms.

    Cost: two float sorts (one per arm), then integer sorts per segment level; the bootstrap is
    O(pairs x replicates) on (segment, user) sums, never O(rows x replicates).
    """
    if pdf.empty:
        return pd.DataFrame(columns=RECORD_COLUMNS)
    task, scope = str(pdf["task"].iloc[0]), str(pdf["scope"].iloc[0])
    y = pdf["y"].to_numpy().astype(np.int64) > 0
    arms = []
    for col in ("b", "c"):
        s = pdf[col].to_numpy(dtype=np.float64)
        arms.append(_Arm(s, stats.score_ranks(s), _logit_bin(s), stats.logloss_terms(y, s)))
    b, c = arms
    uniq_users, ucode = np.unique(pdf["u"].to_numpy(dtype=np.int64), return_inverse=True)
    ucode = ucode.reshape(-1)
    user_hashes = splitmix64(uniq_users)
    levels: list[tuple[np.ndarray, list[str]]] = [(np.zeros(len(y), dtype=np.int64), ["all"])]
    for i, col in enumerate(segments):
        levels.append(_segment_codes(pdf[f"seg{i}"], col))
    lists = _lists(pdf, ks)
    prepared = [_level(code, len(names), y, b, c, ucode, len(uniq_users), lists)
                for code, names in levels]
    for start in range(0, replicates, 64):  # weights drawn once per user and chunk, for every level
        W_users = stats.poisson_weights(user_hashes, np.arange(start, min(start + 64, replicates)),
                                        seed).astype(np.float64)
        for level in prepared:
            _replicates(level, W_users)
    out = []
    for (code, names), level in zip(levels, prepared):
        groups = len(names)
        moments = stats.delong_moments(code, y, b.s, c.s, groups, (b.rank, c.rank))
        counts = np.bincount(code, minlength=groups)
        boot = _level_tests(level, alpha)
        for g, name in enumerate(names):
            out.append(_record(task, scope, name, "auc", "delong",
                               stats.delong_test(moments[g], alpha), counts[g]))
            out += [_record(task, scope, name, m, "bootstrap", t,
                            level.lists[g] if m in level.ranking else counts[g])
                    for m, t in boot[g].items()]
    nan = stats.Test(*(math.nan,) * 7)
    out.append(_record(task, scope, "all", "plot", "none", nan, len(y), _plot_payload(y, b.s, c.s)))
    return pd.DataFrame(out, columns=RECORD_COLUMNS)


# --------------------------------------------------------------------------------------------
# Verdicts and the decision (driver side, on the small report)


is_better = metric_registry.is_better      # direction from the registry
regression = metric_registry.regression    # how much worse (positive = worse)


def verdict(metric: str, row: dict, alpha: float) -> str:
    """``better`` / ``worse`` only when the adjusted p-value is below ``alpha`` AND the row's own
    interval (``ci_low`` / ``ci_high``, at the adjusted level) excludes 0: the three agree by
    construction (:func:`stats.adjusted_levels` makes them agree in exact arithmetic; the
    conjunction keeps a rounding tie at the boundary from splitting them)."""
    p = row["p_value_adjusted"]
    if p is None or not math.isfinite(p) or p >= alpha or row["delta"] == 0:
        return "no_difference"
    if not (row["ci_low"] > 0 or row["ci_high"] < 0):
        return "no_difference"
    return "better" if is_better(metric, row["baseline_value"], row["candidate_value"]) else "worse"


TOO_SMALL = "too_small"   # a slice value below compare.min_slice_rows / min_slice_requests


def too_small(rows: pd.DataFrame, min_rows: int, min_requests: int) -> np.ndarray:
    """Rows of a slice (segment not ``all``) with fewer than ``min_rows`` rows, or, for a
    ranking metric (whose ``n`` counts requests with a positive), fewer than ``min_requests``."""
    ranked = rows["metric"].map(metric_registry.is_ranking).to_numpy(dtype=bool)
    floor = np.where(ranked, min_requests, min_rows)
    return ((rows["segment"] != "all").to_numpy() & (rows["n"].to_numpy(dtype=float) < floor))


def finish_report(records: pd.DataFrame, method: str, alpha: float, min_rows: int = 0,
                  min_requests: int = 0) -> pd.DataFrame:
    """Adjusted p-values over every judged test of the report, each row's interval at the same
    multiplicity, and a verdict per row.

    ``ci_low`` / ``ci_high`` are the verdict's interval (level ``ci_level``,
    :func:`stats.adjusted_levels`): it excludes 0 exactly when the verdict is a difference.
    The unadjusted 95 % interval of the row alone is kept as ``ci_low_raw`` / ``ci_high_raw``.
    A slice value that is :func:`too_small` is not judged: verdict ``too_small``, no adjusted
    p-value or interval, and it is not one of the tests the others are adjusted for."""
    rows = records[records["metric"] != "plot"].copy().reset_index(drop=True)
    rows = rows.rename(columns={"ci_low": "ci_low_raw", "ci_high": "ci_high_raw"})
    small = too_small(rows, min_rows, min_requests)
    judged = ~small
    p = rows["p_value"].to_numpy(dtype=float)[judged]
    delta, se = rows["delta"].to_numpy(dtype=float), rows["se"].to_numpy(dtype=float)
    level = stats.adjusted_levels(p, method, alpha)
    for col in ("p_value_adjusted", "ci_level", "ci_low", "ci_high"):
        rows[col] = np.nan
    rows.loc[judged, "p_value_adjusted"] = stats.adjust_pvalues(p, method)
    rows.loc[judged, "ci_level"] = 1.0 - level
    low, high = stats.normal_interval(delta[judged], se[judged], level)
    rows.loc[judged, "ci_low"], rows.loc[judged, "ci_high"] = low, high
    # se 0 (identical or degenerate arms): the point itself is the interval, as the raw one
    degenerate = judged & (se == 0)
    rows.loc[degenerate, "ci_low"] = rows.loc[degenerate, "ci_low_raw"]
    rows.loc[degenerate, "ci_high"] = rows.loc[degenerate, "ci_high_raw"]
    rows["verdict"] = [TOO_SMALL if s else verdict(m, r, alpha) for s, m, r in
                       zip(small, rows["metric"], rows.to_dict("records"))]
    return rows


@dataclass
class Decision:
    ship: bool
    tasks: dict[str, str]                      # task -> better | worse | no_difference
    reasons: list[str] = field(default_factory=list)
    broken_guardrails: list[str] = field(default_factory=list)
    guardrails_by_task: dict[str, list[str]] = field(default_factory=dict)  # task -> broken ones
    gates: list[dict] = field(default_factory=list)   # each gate: rule, figure, status

    @property
    def failed_gates(self) -> list[str]:
        return [f"{g['rule']} ({g['figure']})" for g in self.gates if g["status"] == "failed"]

    def as_dict(self) -> dict:
        return {"ship": self.ship, "tasks": self.tasks, "reasons": self.reasons,
                "broken_guardrails": self.broken_guardrails, "gates": self.gates}


def _fmt(x: float) -> str:
    return f"{x:.4g}" if x is not None and math.isfinite(x) else "n/a"


def check_gate(gate, row: dict | None) -> dict:
    """One gate against its pooled row: status ``passed`` / ``failed``, or ``n/a`` when the
    report has no such task, metric or slice (e.g. a ranking gate on a data set without
    requests), and the figure it was judged on."""
    out = {"rule": gate.describe(), "task": gate.task, "metric": gate.metric,
           "segment": gate.segment, "kind": gate.kind, "threshold": gate.threshold}
    if row is None:
        return {**out, "status": "n/a", "figure": "no such row in this report", "value": None}
    if row["verdict"] == TOO_SMALL:  # not judged: the gate neither passes nor fails on noise
        return {**out, "status": "n/a", "figure": f"slice too small (n={int(row['n'])})",
                "value": None}
    cand, base = row["candidate_value"], row["baseline_value"]
    if gate.kind == "must_improve":
        ok, value, figure = row["verdict"] == "better", None, f"verdict {row['verdict']}"
    elif not (math.isfinite(cand) and (gate.kind == "min" or math.isfinite(base))):
        ok, value, figure = False, None, "undefined value"
    elif gate.kind == "min":
        lower = metric_registry.metric(gate.metric).direction == "lower"
        ok = cand <= gate.threshold if lower else cand >= gate.threshold
        value, figure = cand, f"candidate {_fmt(cand)}"
    else:
        value = regression(gate.metric, base, cand)
        ok, figure = value <= gate.threshold, f"regression {_fmt(value)}"
    return {**out, "status": "passed" if ok else "failed", "figure": figure, "value": value}


def decide(report: pd.DataFrame, decision_metrics: list[str], guardrails, tasks: list[str],
           gates=()) -> Decision:
    """Per task: worse when a decision metric is significantly worse (pooled, segment all), better
    when one is significantly better and none worse. Ship when no task is worse, no guardrail
    breaks, no gate fails (:func:`check_gate`) and at least one task is better; no gates: the
    decision as before."""
    pooled = report[(report["scope"] == "all") & (report["segment"] == "all")]
    by = {(r["task"], r["metric"]): r for r in pooled.to_dict("records")}
    verdicts, reasons, broken, by_task = {}, [], [], {}
    for task in tasks:
        v = [by[(task, m)]["verdict"] for m in decision_metrics if (task, m) in by]
        verdicts[task] = "worse" if "worse" in v else "better" if "better" in v else "no_difference"
        for m in decision_metrics:
            r = by.get((task, m))
            if r is not None and r["verdict"] != "no_difference":
                p = r["p_value_adjusted"]
                reasons.append(f"{task}: {m} {r['verdict']} ({_fmt(r['baseline_value'])} -> "
                               f"{_fmt(r['candidate_value'])}, adjusted p"
                               f"{'<1e-300' if p == 0 else '=' + _fmt(p)})")
        for g in guardrails:
            r = by.get((task, g.metric))
            if r is None or not math.isfinite(r["candidate_value"]) or not math.isfinite(r["baseline_value"]):
                continue
            worse_by = regression(g.metric, r["baseline_value"], r["candidate_value"])
            limit = g.max_regression * (abs(r["baseline_value"]) if g.relative else 1.0)
            if worse_by > limit:
                what = (f"{g.metric} regressed by {_fmt(worse_by)} "
                        f"(> {'relative ' if g.relative else ''}limit {_fmt(limit)})")
                broken.append(f"{task}: {what}")
                by_task.setdefault(task, []).append(what)
    rows = {(r["task"], r["segment"], r["metric"]): r
            for r in report[report["scope"] == "all"].to_dict("records")}
    checked = [check_gate(g, rows.get((g.task, g.segment, g.metric))) for g in gates]
    failed = [g for g in checked if g["status"] == "failed"]
    ship = (not broken and not failed and "worse" not in verdicts.values()
            and "better" in verdicts.values())
    if not any(v == "better" for v in verdicts.values()):
        reasons.append("no task is significantly better")
    return Decision(ship, verdicts, reasons + [f"guardrail broken: {b}" for b in broken]
                    + [f"gate failed: {g['rule']} ({g['figure']})" for g in failed], broken,
                    by_task, checked)
