"""The A/B comparison of one group of paired rows, and the verdicts and decision over a report.

Spark-free (numpy / pandas): ``jobs.stages.compare`` hands every (task, scope) group of paired,
labelled rows to :func:`group_records` on an executor and the small result back to
:func:`finish_report` / :func:`decide` on the driver.

Metrics and how their uncertainty is measured (``method`` column of the records):

- ``auc`` — exact DeLong (``jobs.stats``), no resampling;
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
from scipy import sparse

from jobs import stats

METRIC_ORDER = ("auc", "gauc", "pr_auc", "logloss", "ne", "calibration")
LOGIT_STEP = 0.02                     # PR-AUC bootstrap bins, in logit units
LOGIT_RANGE = 16.0
PLOT_BINS = 100                       # equal-width score bins for the report's figures
RECORD_COLUMNS = ["task", "scope", "segment", "metric", "method", "baseline_value",
                  "candidate_value", "delta", "se", "p_value", "ci_low", "ci_high", "n", "payload"]
RECORD_SCHEMA = ("task string, scope string, segment string, metric string, method string, "
                 "baseline_value double, candidate_value double, delta double, se double, "
                 "p_value double, ci_low double, ci_high double, n long, payload string")


def _logit_bin(s: np.ndarray) -> np.ndarray:
    p = np.clip(s, 1e-7, 1 - 1e-7)
    z = np.clip(np.log(p) - np.log1p(-p), -LOGIT_RANGE, LOGIT_RANGE)
    return np.floor((z + LOGIT_RANGE) / LOGIT_STEP).astype(np.int64)


def _exact_ap(y: np.ndarray, s: np.ndarray) -> float:
    values, inverse = np.unique(s, return_inverse=True)
    pos = np.bincount(inverse, weights=y, minlength=len(values))
    cnt = np.bincount(inverse, minlength=len(values))
    return float(stats.average_precision(pos, cnt))


def _plot_payload(y: np.ndarray, sb: np.ndarray, sc: np.ndarray) -> str:
    """Histograms on equal-width score bins per arm: enough for ROC curves, reliability diagrams
    and score distributions of the report without any row leaving the executor."""
    out = {"bins": PLOT_BINS}
    for arm, s in (("baseline", sb), ("candidate", sc)):
        b = np.clip((s * PLOT_BINS).astype(np.int64), 0, PLOT_BINS - 1)
        out[arm] = {"pos": np.bincount(b, weights=y, minlength=PLOT_BINS).tolist(),
                    "cnt": np.bincount(b, minlength=PLOT_BINS).tolist(),
                    "psum": np.bincount(b, weights=s, minlength=PLOT_BINS).tolist()}
    return json.dumps(out)


def _record(task, scope, segment, metric, method, t: stats.Test, n, payload=None) -> dict:
    return {"task": task, "scope": scope, "segment": segment, "metric": metric, "method": method,
            "baseline_value": t.baseline, "candidate_value": t.candidate, "delta": t.delta,
            "se": t.se, "p_value": t.p_value, "ci_low": t.ci_low, "ci_high": t.ci_high,
            "n": int(n), "payload": payload}


def _bootstrap_group(y, sb, sc, ucode, user_hashes, replicates, seed, alpha) -> dict[str, stats.Test]:
    """Bootstrap tests of one segment's rows (all metrics but AUC)."""
    users, pair = np.unique(ucode, return_inverse=True)
    pair = pair.reshape(-1)
    hashes = user_hashes[users]
    npairs = len(users)
    yf = y.astype(np.float64)
    llb, llc = stats.logloss_terms(y, sb), stats.logloss_terms(y, sc)
    row_values = np.column_stack([np.ones(len(y)), yf, sb, sc, llb, llc])
    per_user = np.zeros((npairs, row_values.shape[1]))
    np.add.at(per_user, pair, row_values)
    # GAUC: per-user AUCs (exact), weighted by the user's rows, users with both classes only
    auc_b, cnt = stats.grouped_auc(pair, y, sb, npairs)
    auc_c, _ = stats.grouped_auc(pair, y, sc, npairs)
    both = np.isfinite(auc_b)
    wn = np.where(both, cnt, 0.0)
    gauc_values = np.column_stack([wn * np.nan_to_num(auc_b), wn * np.nan_to_num(auc_c), wn])
    X = np.hstack([per_user, gauc_values])
    # PR-AUC: per-user histograms on the logit grid (occupied bins only), one per arm
    hist = {}
    for arm, s in (("b", sb), ("c", sc)):
        occupied, bins = np.unique(_logit_bin(s), return_inverse=True)
        shape = (npairs, len(occupied))
        hist[arm] = (sparse.csr_matrix((yf, (pair, bins.reshape(-1))), shape=shape),
                     sparse.csr_matrix((np.ones(len(y)), (pair, bins.reshape(-1))), shape=shape))

    def values(S: np.ndarray, ap_b: np.ndarray, ap_c: np.ndarray) -> dict[str, tuple]:
        w, wy = S[:, 0], S[:, 1]
        out = {m: (stats.metric_from_sums(m, w, wy, S[:, 2], S[:, 4]),
                   stats.metric_from_sums(m, w, wy, S[:, 3], S[:, 5]))
               for m in ("logloss", "ne", "calibration")}
        with np.errstate(divide="ignore", invalid="ignore"):
            out["gauc"] = (np.where(S[:, 8] > 0, S[:, 6] / S[:, 8], np.nan),
                           np.where(S[:, 8] > 0, S[:, 7] / S[:, 8], np.nan))
        out["pr_auc"] = (ap_b, ap_c)
        return out

    point = values(X.sum(axis=0, keepdims=True), np.array([_exact_ap(yf, sb)]),
                   np.array([_exact_ap(yf, sc)]))
    deltas: dict[str, list[np.ndarray]] = {m: [] for m in point}
    for start in range(0, replicates, 64):
        reps = np.arange(start, min(start + 64, replicates))
        W = stats.poisson_weights(hashes, reps, seed).astype(np.float64)
        S = W.T @ X
        ap = {arm: stats.average_precision(np.asarray((h_pos.T @ W).T), np.asarray((h_cnt.T @ W).T))
              for arm, (h_pos, h_cnt) in hist.items()}
        for m, (vb, vc) in values(S, ap["b"], ap["c"]).items():
            deltas[m].append(vc - vb)
    return {m: stats.bootstrap_test(float(point[m][0][0]), float(point[m][1][0]),
                                    np.concatenate(deltas[m]), alpha) for m in point}


def group_records(pdf: pd.DataFrame, segments: list[str], replicates: int, seed: int,
                  alpha: float) -> pd.DataFrame:
    """All records of one (task, scope) group of paired, labelled rows.

    ``pdf`` columns: task, scope, u (int64 user hash), y (0/1), b, c (the two arms' scores) and
    seg0.. (string value of each segment column). One record per segment x metric, plus, for
    segment ``all``, a ``plot`` record whose payload holds the report's histograms.
    """
    if pdf.empty:
        return pd.DataFrame(columns=RECORD_COLUMNS)
    task, scope = str(pdf["task"].iloc[0]), str(pdf["scope"].iloc[0])
    y = pdf["y"].to_numpy().astype(np.int64) > 0
    sb = pdf["b"].to_numpy(dtype=np.float64)
    sc = pdf["c"].to_numpy(dtype=np.float64)
    uniq_users, ucode = np.unique(pdf["u"].to_numpy(dtype=np.int64), return_inverse=True)
    ucode = ucode.reshape(-1)
    user_hashes = stats.hash64(uniq_users)
    levels: list[tuple[np.ndarray, list[str]]] = [(np.zeros(len(y), dtype=np.int64), ["all"])]
    for i, col in enumerate(segments):
        values, codes = np.unique(pdf[f"seg{i}"].astype(str).to_numpy(), return_inverse=True)
        levels.append((codes.reshape(-1), [f"{col}={v}" for v in values]))
    out = []
    for code, names in levels:
        moments = stats.delong_moments(code, y, sb, sc, len(names))
        for g, name in enumerate(names):
            rows = np.flatnonzero(code == g)
            out.append(_record(task, scope, name, "auc", "delong",
                               stats.delong_test(moments[g], alpha), len(rows)))
            tests = _bootstrap_group(y[rows], sb[rows], sc[rows], ucode[rows], user_hashes,
                                     replicates, seed, alpha)
            out += [_record(task, scope, name, m, "bootstrap", t, len(rows)) for m, t in tests.items()]
    nan = stats.Test(*(math.nan,) * 7)
    out.append(_record(task, scope, "all", "plot", "none", nan, len(y), _plot_payload(y, sb, sc)))
    return pd.DataFrame(out, columns=RECORD_COLUMNS)


# --------------------------------------------------------------------------------------------
# Verdicts and the decision (driver side, on the small report)


def is_better(metric: str, baseline: float, candidate: float) -> bool:
    if metric in ("logloss", "ne"):
        return candidate < baseline
    if metric == "calibration":
        return abs(candidate - 1.0) < abs(baseline - 1.0)
    return candidate > baseline


def regression(metric: str, baseline: float, candidate: float) -> float:
    """How much worse the candidate is (positive = worse), in the metric's own units."""
    if metric in ("logloss", "ne"):
        return candidate - baseline
    if metric == "calibration":
        return abs(candidate - 1.0) - abs(baseline - 1.0)
    return baseline - candidate


def verdict(metric: str, row: dict, alpha: float) -> str:
    p = row["p_value_adjusted"]
    if p is None or not math.isfinite(p) or p >= alpha or row["delta"] == 0:
        return "no_difference"
    return "better" if is_better(metric, row["baseline_value"], row["candidate_value"]) else "worse"


def finish_report(records: pd.DataFrame, method: str, alpha: float) -> pd.DataFrame:
    """Adjusted p-values over every test of the report, and a verdict per row."""
    rows = records[records["metric"] != "plot"].copy()
    rows["p_value_adjusted"] = stats.adjust_pvalues(rows["p_value"].to_numpy(dtype=float), method)
    rows["verdict"] = [verdict(m, r, alpha) for m, r in zip(rows["metric"], rows.to_dict("records"))]
    return rows.reset_index(drop=True)


@dataclass
class Decision:
    ship: bool
    tasks: dict[str, str]                      # task -> better | worse | no_difference
    reasons: list[str] = field(default_factory=list)
    broken_guardrails: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"ship": self.ship, "tasks": self.tasks, "reasons": self.reasons,
                "broken_guardrails": self.broken_guardrails}


def _fmt(x: float) -> str:
    return f"{x:.4g}" if x is not None and math.isfinite(x) else "n/a"


def decide(report: pd.DataFrame, decision_metrics: list[str], guardrails, tasks: list[str]) -> Decision:
    """Per task: worse when a decision metric is significantly worse (pooled, segment all), better
    when one is significantly better and none worse. Ship when no task is worse, no guardrail
    breaks and at least one task is better."""
    pooled = report[(report["scope"] == "all") & (report["segment"] == "all")]
    by = {(r["task"], r["metric"]): r for r in pooled.to_dict("records")}
    verdicts, reasons, broken = {}, [], []
    for task in tasks:
        v = [by[(task, m)]["verdict"] for m in decision_metrics if (task, m) in by]
        verdicts[task] = "worse" if "worse" in v else "better" if "better" in v else "no_difference"
        for m in decision_metrics:
            r = by.get((task, m))
            if r is not None and r["verdict"] != "no_difference":
                reasons.append(f"{task}: {m} {r['verdict']} ({_fmt(r['baseline_value'])} -> "
                               f"{_fmt(r['candidate_value'])}, adjusted p={_fmt(r['p_value_adjusted'])})")
        for g in guardrails:
            r = by.get((task, g.metric))
            if r is None or not math.isfinite(r["candidate_value"]) or not math.isfinite(r["baseline_value"]):
                continue
            worse_by = regression(g.metric, r["baseline_value"], r["candidate_value"])
            limit = g.max_regression * (abs(r["baseline_value"]) if g.relative else 1.0)
            if worse_by > limit:
                broken.append(f"{task}: {g.metric} regressed by {_fmt(worse_by)} "
                              f"(> {'relative ' if g.relative else ''}limit {_fmt(limit)})")
    ship = not broken and "worse" not in verdicts.values() and "better" in verdicts.values()
    if not any(v == "better" for v in verdicts.values()):
        reasons.append("no task is significantly better")
    return Decision(ship, verdicts, reasons + [f"guardrail broken: {b}" for b in broken], broken)
