"""The A/B report of ``mmoe compare``: one self-contained HTML page (inline CSS, figures as
inline base64 PNG from matplotlib: no script, no external file, no network) and a short
Markdown summary to paste into a review.

Pure: a :class:`jobs.compare.stage.CompareResult` in, text out.
"""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np
import pandas as pd

from jobs.compare import counterfactual_report, recommendations
from jobs.compare.records import TOO_SMALL
from jobs.core import metric_registry
from jobs.core.slices import in_slice, slice_values
from jobs.validate.drift import DriftRow
from jobs.validate.report import CSS as VALIDATION_CSS
from jobs.validate.report import render_drift_rows

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px 32px;color:#1d2330;max-width:1300px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #dde;padding-bottom:4px}
.sub{color:#5a6275;margin-top:0}
.verdict{display:inline-block;padding:10px 18px;border-radius:6px;font-size:20px;font-weight:600;margin:8px 0}
.ship{background:#dff3e4;color:#12622b;border:1px solid #8fd19e}.noship{background:#fbe3e4;color:#8a1f26;border:1px solid #eea5aa}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{border:1px solid #d8dbe3;padding:4px 8px;text-align:right}
th{background:#f2f4f8}td.l,th.l{text-align:left}
.better{background:#dff3e4}.worse{background:#fbe3e4}.no_difference{color:#5a6275}.too_small{color:#9aa0ad;font-style:italic}
.passed{background:#dff3e4}.failed{background:#fbe3e4}.na{color:#5a6275}
.raw{color:#8a90a0}td{white-space:nowrap;font-variant-numeric:tabular-nums}
h3{font-size:15px;margin:18px 0 4px}details{margin:4px 0 12px}summary{cursor:pointer;color:#3b5bdb}
.wide{overflow-x:auto;max-width:100%}
.figs{display:flex;flex-wrap:wrap;gap:8px}.figs img{border:1px solid #e5e7ee;max-width:100%}.figs.wide img{max-width:none}
ul{margin-top:4px}
""" + "\n".join(line for line in VALIDATION_CSS.splitlines() if line.startswith((".bar", ".ok-bar", "svg.spark")))


def _f(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return f"{int(x):,}"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _esc(x) -> str:
    return html.escape(str(x))


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------------------------
# Figures (from the per-arm score histograms computed on the executors)


def _roc(h: dict) -> tuple[np.ndarray, np.ndarray]:
    pos, cnt = np.asarray(h["pos"], float), np.asarray(h["cnt"], float)
    neg = cnt - pos
    tpr = np.concatenate([[0.0], np.cumsum(pos[::-1]) / max(pos.sum(), 1.0)])
    fpr = np.concatenate([[0.0], np.cumsum(neg[::-1]) / max(neg.sum(), 1.0)])
    return fpr, tpr


RELIABILITY_BINS = 10
ARM_COLORS = {"baseline": "#4c72b0", "candidate": "#dd8452"}
PROBABILITY_TICKS = (1e-4, 1e-3, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99, 0.999, 0.9999)


def reliability_bins(h: dict, k: int = RELIABILITY_BINS) -> list[dict]:
    """About ``k`` quantile bins of one arm's scores (each ~1/k of the rows), merged from the
    payload's fine log-odds bins (a fine bin is never split: ties stay together): per bin its
    rows, positives, mean predicted score and observed rate. The rows add up to the arm's."""
    pos, cnt, psum = (np.asarray(h[key], float) for key in ("pos", "cnt", "psum"))
    total = cnt.sum()
    if total <= 0:
        return []
    group = np.minimum(((np.cumsum(cnt) - cnt / 2) / total * k).astype(int), k - 1)
    out = []
    for g in np.unique(group[cnt > 0]):
        m = (group == g) & (cnt > 0)
        n = cnt[m].sum()
        out.append({"rows": int(n), "positives": int(pos[m].sum()),
                    "mean_predicted": float(psum[m].sum() / n), "observed": float(pos[m].sum() / n)})
    return out


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def task_figure(task: str, payload: dict, auc: dict):
    """ROC, reliability (quantile bins, their rows written beside the points) and the score
    distribution on a log-odds axis (ticks labelled as probabilities) of one task."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    ax = axes[0]
    for arm in ("baseline", "candidate"):
        fpr, tpr = _roc(payload[arm])
        ax.plot(fpr, tpr, color=ARM_COLORS[arm], label=f"{arm} (AUC {_f(auc.get(arm))})")
    ax.plot([0, 1], [0, 1], ":", color="#999")
    ax.set(title=f"{task}: ROC", xlabel="false positive rate", ylabel="true positive rate")
    ax.legend(loc="lower right", fontsize=8)
    ax = axes[1]
    points = {arm: reliability_bins(payload[arm]) for arm in ("baseline", "candidate")}
    values = [v for bins in points.values() for b in bins for v in (b["mean_predicted"], b["observed"])]
    top = min(1.0, 1.15 * max(values, default=1.0)) or 1.0
    positive = [v for v in values if v > 0]
    # quantile bins of a rare task crowd near 0 on a linear axis: log axes when they span decades
    low = min(positive, default=top) / 1.5
    logs = top / low > 100
    for arm, bins in points.items():
        x = [b["mean_predicted"] for b in bins]
        y = [max(b["observed"], low) if logs else b["observed"] for b in bins]
        rows = [b["rows"] for b in bins]
        per_bin = f"~{int(np.median(rows)):,}" if rows else "0"
        ax.plot(x, y, "o-", color=ARM_COLORS[arm], ms=4,
                label=f"{arm}: {len(bins)} bins of {per_bin} rows")
    lo = low if logs else 0.0
    if logs:
        ticks = [p for p in (1e-4, 1e-3, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0) if lo <= p <= top]
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_ticks(ticks, [f"{p:g}" for p in ticks])
            axis.set_minor_formatter(plt.NullFormatter())
    ax.plot([lo, top], [lo, top], ":", color="#999")
    ax.set(title=f"{task}: reliability (quantile bins{', log axes' if logs else ''})",
           xlabel="mean predicted", ylabel="observed rate", xlim=(lo, top), ylim=(lo, top))
    ax.legend(loc="upper left", fontsize=7)
    ax = axes[2]
    edges = payload["lo"] + payload["step"] * np.arange(payload["bins"] + 1)
    used = np.nonzero(np.asarray(payload["baseline"]["cnt"]) + np.asarray(payload["candidate"]["cnt"]))[0]
    for arm in ("baseline", "candidate"):
        cnt = np.asarray(payload[arm]["cnt"], float)
        ax.stairs(cnt / max(cnt.sum(), 1.0), edges, color=ARM_COLORS[arm], label=arm)
    if used.size:
        lo, hi = edges[used[0]] - payload["step"], edges[used[-1] + 1] + payload["step"]
        ax.set_xlim(lo, hi)
        ticks = [p for p in PROBABILITY_TICKS if lo <= _logit(np.float64(p)) <= hi]
        ax.set_xticks([float(_logit(np.float64(p))) for p in ticks], [f"{p:g}" for p in ticks])
    ax.set(title=f"{task}: score distribution", xlabel="score (log-odds axis)",
           ylabel="share of rows")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _reliability_table(payload: dict) -> str:
    """The reliability bins of both arms, collapsed under the figures."""
    rows = []
    for arm in ("baseline", "candidate"):
        for i, b in enumerate(reliability_bins(payload[arm]), 1):
            rows.append(f"<tr><td class=l>{arm}</td><td>{i}</td><td>{b['rows']:,}</td>"
                        f"<td>{b['positives']:,}</td><td>{b['mean_predicted']:.4g}</td>"
                        f"<td>{b['observed']:.4g}</td></tr>")
    return ("<details><summary>reliability bins (rows per bin)</summary><table class=reliability>"
            "<tr><th class=l>arm</th><th>bin</th><th>rows</th><th>positives</th>"
            "<th>mean predicted</th><th>observed rate</th></tr>" + "".join(rows) + "</table></details>")


DAILY_RANKING = "ndcg@10"   # the per-day plot's first row: this metric's value for both arms


def daily_figure(report: pd.DataFrame, tasks: list[str]):
    """Per metric and task, each day's delta with its adjusted interval (the verdict's: filled
    when that day is a difference) as a point with an error bar; one tick per day, labelled
    with its date. None when the report has no per-day rows."""
    daily = report[report["day"].notna() & (report["segment"] == "all")]
    if daily.empty:
        return None
    plt = _plt()
    days = sorted({str(d) for d in daily["day"]})
    present = set(daily["metric"])
    arms_row = [DAILY_RANKING] if DAILY_RANKING in present else []
    metrics = [m for m in ("auc", "logloss", "calibration") if m in present]
    rows = len(arms_row) + len(metrics)
    fig, axes = plt.subplots(rows, len(tasks), squeeze=False,
                             figsize=(max(4.2, 0.28 * len(days) + 1.5) * len(tasks), 2.8 * rows))

    def day_axis(ax, title):
        ax.set_xticks(range(len(days)), days, rotation=90 if len(days) > 6 else 30,
                      ha="center" if len(days) > 6 else "right")
        ax.set_xlim(-0.6, len(days) - 0.4)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)

    for j, t in enumerate(tasks if arms_row else []):  # ranking: both arms' values per day
        ax = axes[0][j]
        d = daily[(daily["task"] == t) & (daily["metric"] == DAILY_RANKING)]
        x = np.array([days.index(str(v)) for v in d["day"]])
        for arm in ("baseline", "candidate"):
            ax.plot(x, d[f"{arm}_value"].to_numpy(float), "o-", color=ARM_COLORS[arm], ms=4,
                    label=arm)
        ax.legend(fontsize=7)
        day_axis(ax, f"{t}: {DAILY_RANKING} per day")
    for i, m in enumerate(metrics, start=len(arms_row)):
        for j, t in enumerate(tasks):
            ax = axes[i][j]
            d = daily[(daily["task"] == t) & (daily["metric"] == m)].copy()
            x = np.array([days.index(str(v)) for v in d["day"]])
            low = d["ci_low"].to_numpy(float)
            high = d["ci_high"].to_numpy(float)
            delta = d["delta"].to_numpy(float)
            err = np.nan_to_num(np.vstack([delta - low, high - delta]), nan=0.0).clip(min=0)
            ax.axhline(0.0, color="#999", lw=0.8)
            ax.errorbar(x, delta, yerr=err, fmt="none", ecolor=ARM_COLORS["candidate"], capsize=3)
            differs = (d["verdict"] != "no_difference").to_numpy()
            ax.plot(x[differs], delta[differs], "o", color=ARM_COLORS["candidate"], ms=5)
            ax.plot(x[~differs], delta[~differs], "o", mfc="white", color=ARM_COLORS["candidate"], ms=5)
            day_axis(ax, f"{t}: {m} delta (adjusted CI)")
    fig.tight_layout()
    return fig


def _gate_figure(gates: dict) -> str:
    plt = _plt()
    arms = [a for a in ("baseline", "candidate") if gates.get(a) and gates[a]["tasks"]]
    if not arms:
        return ""
    fig, axes = plt.subplots(2, len(arms), figsize=(6 * len(arms), 6.4), squeeze=False)
    for j, arm in enumerate(arms):
        tasks = gates[arm]["tasks"]
        names = list(tasks)
        width = max(v["experts"] for v in tasks.values())
        grid = np.full((len(names), width), np.nan)
        for i, t in enumerate(names):
            grid[i, :tasks[t]["experts"]] = tasks[t]["mean_weight"]
        ax = axes[0][j]
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=max(1e-9, float(np.nanmax(grid))), aspect="auto")
        ax.set(title=f"{arm}: mean gate weight", xlabel="expert", yticks=range(len(names)), yticklabels=names)
        for (i, k), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(k, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 0.6 * np.nanmax(grid) else "black")
        fig.colorbar(im, ax=ax, fraction=0.04)
        ax = axes[1][j]
        for t in names:
            h = np.asarray(tasks[t]["entropy_hist"], float)
            ax.stairs(h / max(h.sum(), 1.0), np.linspace(0, 1, len(h) + 1), label=t)
        ax.set(title=f"{arm}: gate entropy / log E", xlabel="normalised entropy", ylabel="share of rows")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------------------------
# Tables


def _verdict_table(rows: pd.DataFrame, label_col: str, header: str | None = None) -> str:
    head = (f"<tr><th class=l>{_esc(header or label_col)}</th><th class=l>metric</th><th>baseline</th><th>candidate</th>"
            "<th>delta</th><th>adjusted CI (level)</th><th>p adjusted</th><th class=l>verdict</th>"
            "<th class=raw>raw 95% CI</th><th class=raw>raw p</th><th>n</th></tr>")
    body = []
    for r in rows.to_dict("records"):
        body.append(
            f"<tr class={_esc(r['verdict'])}><td class=l>{_esc(r[label_col])}</td><td class=l>{_esc(r['metric'])}</td>"
            f"<td>{_f(r['baseline_value'])}</td><td>{_f(r['candidate_value'])}</td><td>{_f(r['delta'], 3)}</td>"
            f"<td>{_interval(r, '')} ({_level(r.get('ci_level'))})</td>"
            f"<td>{_f(r['p_value_adjusted'], 3)}</td>"
            f"<td class=l>{_esc(r['verdict']).replace('_', ' ')}</td>"
            f"<td class=raw>{_interval(r, '_raw')}</td><td class=raw>{_f(r['p_value'], 3)}</td>"
            f"<td>{_f(r['n'])}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _interval(r: dict, suffix: str) -> str:
    return f"[{_f(r.get('ci_low' + suffix), 3)}, {_f(r.get('ci_high' + suffix), 3)}]"


def _level(level) -> str:
    """A confidence level as a percentage with the digits it needs (95%, 99.6%, 99.93%)."""
    if level is None or not np.isfinite(level):
        return "n/a"
    digits = max(0, int(np.ceil(-np.log10(max(1.0 - level, 1e-12)))) - 1)
    return f"{100 * level:.{digits}f}%"


INTERVALS_NOTE = (
    "Adjusted CI: the interval at the same multiplicity as the verdict, so it excludes 0 exactly "
    "when the verdict is a difference (Benjamini-Hochberg: Benjamini-Yekutieli false-coverage-rate "
    "intervals, level 1 - R&alpha;/m for R differences among m tests; Holm: the level of its "
    "step-down). Raw 95% CI and raw p: one test alone, not adjusted; do not read a verdict "
    "from them.")


def _guardrails(d, task: str) -> str:
    broken = getattr(d, "guardrails_by_task", {}).get(task, [])
    return ("<b>broken</b>: " + _esc("; ".join(broken))) if broken else "ok"


def _ordered(rows: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    """Rows in the spec's task order, then segment, then the registry's metric order."""
    rank = {t: i for i, t in enumerate(tasks)}
    return (rows.assign(_t=rows["task"].map(lambda t: rank.get(t, len(rank))),
                        _m=rows["metric"].map(metric_registry.rank))
            .sort_values(["_t", "segment", "_m"], kind="stable").drop(columns=["_t", "_m"]))


def task_order(result) -> list[str]:
    """The spec's task order (the stage hands it over), else the report's."""
    return list(getattr(result, "tasks", None) or dict.fromkeys(result.report["task"]))


VERSION_FIELDS = [("version", "version"), ("reference", "given as"), ("arch", "architecture"),
                  ("kind", "kind"), ("epochs_run", "epochs run"), ("best_epoch", "best epoch"),
                  ("training_range", "training range"), ("seed", "seed"),
                  ("train_rows", "training rows"), ("val_auc", "validation AUC"),
                  ("registered", "registered"), ("aliases", "aliases"), ("artifact", "artifact")]


def _version_value(key: str, value) -> str:
    if key == "aliases":
        return ", ".join(value) if value else "none"
    if key == "registered" and value is None:
        return "not registered"
    if key == "val_auc" and isinstance(value, dict):
        return ", ".join(f"{t} {_f(v)}" for t, v in value.items())
    return "unknown" if value is None else _f(value)


def _versions_section(result) -> str:
    """What each arm is: its version, architecture, epochs, training range, aliases (from the
    artifact's metadata and the registry; "unknown" when the artifact cannot be found)."""
    versions = getattr(result, "versions", None) or {}
    if not versions:
        return ""
    arms = [a for a in ("baseline", "candidate") if a in versions]
    head = "<tr><th class=l></th>" + "".join(f"<th class=l>{a}</th>" for a in arms) + "</tr>"
    body = "".join(
        f"<tr><th class=l>{_esc(label)}</th>"
        + "".join(f"<td class=l>{_esc(_version_value(key, versions[a].get(key)))}</td>" for a in arms)
        + "</tr>" for key, label in VERSION_FIELDS)
    return f"<h2>What is compared</h2><div class=wide><table class=versions>{head}{body}</table></div>"


def _verdict_sections(pooled: pd.DataFrame, tasks: list[str]) -> list[str]:
    """The whole range's verdicts: per-request ranking metrics first, then pointwise, then each
    conditional task among its parent's positives (segment ``<parent>=1``)."""
    overall = _ordered(pooled[pooled["segment"] == "all"], tasks)
    ranked = overall["metric"].map(metric_registry.is_ranking).astype(bool)
    out = []
    if ranked.any():
        out += ["<h2>Ranking per request (whole range, all rows)</h2><div class=wide>",
                _verdict_table(overall[ranked], "task"), "</div>"]
    else:
        out.append("<p class=sub>No ranking metrics: this data set's spec names no request "
                   "column, so there is no per-request list to rank.</p>")
    out += ["<h2>Pointwise (whole range, all rows)</h2><div class=wide>",
            _verdict_table(overall[~ranked], "task"), "</div>"]
    conditional = pooled[pooled["segment"].isin(conditional_segments(pooled, tasks))]
    if not conditional.empty:
        rows = _ordered(conditional, tasks)
        out += ["<h2>Conditional tasks (among the parent's positives)</h2><div class=wide>",
                _verdict_table(rows.assign(label=rows["task"] + " | " + rows["segment"]), "label",
                               "task | among"), "</div>"]
    return out


def conditional_segments(pooled: pd.DataFrame, tasks: list[str]) -> list[str]:
    """Segments ``<task>=1`` naming a task of the report (the conditional slices)."""
    return [f"{t}=1" for t in tasks if f"{t}=1" in set(pooled["segment"])]


def _segments_section(segs: pd.DataFrame, slices: list[str], tasks: list[str]) -> str:
    """One block per slice (a segment column, or columns crossed): its rows with a verdict
    (better / worse) in a table, the rows without a difference and the slice values too small
    to judge collapsed under it."""
    out = []
    for name in slices:
        rows = _ordered(segs[segs["segment"].map(lambda s: in_slice(s, name))], tasks)
        if rows.empty:
            continue
        rows = rows.assign(label=rows["task"] + " / "
                           + rows["segment"].map(lambda s: slice_values(s, name)))
        decided = rows[rows["verdict"].isin(["better", "worse"])]
        small = rows[rows["verdict"] == TOO_SMALL]
        rest = rows[rows["verdict"] == "no_difference"]
        out.append(f"<h3>{_esc(name)}</h3>")
        header = f"task / {name}"
        out.append(_verdict_table(decided, "label", header) if not decided.empty else
                   f"<p>No slice of {_esc(name)} differs.</p>")
        if not rest.empty:
            out.append(f"<details><summary>{len(rest)} rows without a difference</summary>"
                       f"{_verdict_table(rest, 'label', header)}</details>")
        if not small.empty:
            values = small["segment"].nunique()
            out.append(f"<details><summary>{len(small)} rows of {values} slice value(s) too small "
                       f"to judge (compare.min_slice_rows / min_slice_requests)</summary>"
                       f"{_verdict_table(small, 'label', header)}</details>")
    return "".join(out)


def decision_gates_section(d) -> str:
    """``compare.gates``: each rule, the figure it was judged on and whether it passed."""
    gates = getattr(d, "gates", None) or []
    if not gates:
        return ""
    body = "".join(
        f"<tr class={'na' if g['status'] == 'n/a' else g['status']}><td class=l>{_esc(g['rule'])}</td>"
        f"<td class=l>{_esc(g['figure'])}</td><td class=l>{_esc(g['status'])}</td></tr>"
        for g in gates)
    return ("<h2>Decision gates (compare.gates)</h2><table><tr><th class=l>rule</th>"
            f"<th class=l>figure</th><th class=l>status</th></tr>{body}</table>")


def _drift_section(result) -> str:
    """Per arm: its last day's prediction drift rows (bar per task column, coloured by
    threshold) and each column's PSI over the range's days (small line)."""
    out = []
    for arm, version in (("baseline", result.baseline), ("candidate", result.candidate)):
        rows = getattr(result, "prediction_drift", {}).get(arm) or []
        if not rows:
            continue
        last = max(r["ds"] for r in rows)
        history: dict[str, list] = {}
        for r in sorted(rows, key=lambda r: r["ds"]):
            if r["statistic"] == "psi":
                history.setdefault(r["feature"], []).append((r["ds"], r["value"]))
        today = [DriftRow(r["feature"], r["statistic"], r["value"], r["threshold"], r["drifted"],
                          r["reference"], r["reference_days"], r["model_version"])
                 for r in rows if r["ds"] == last]
        drifted = sorted({r["feature"] + " on " + r["ds"] for r in rows if r["drifted"]})
        note = (f"{arm} {version}, ds={last}: "
                + (f"drifted: {', '.join(drifted)}" if drifted else "no drifted day in the range"))
        out.append(render_drift_rows(today, history, note))
    return "".join(out)


def render_html(result) -> str:
    report = result.report
    tasks = task_order(result)
    pooled = report[report["day"].isna()]
    d = result.decision
    ship = ("ship", "SHIP") if d.ship else ("noship", "DO NOT SHIP")
    p = result.pairing
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>A/B {_esc(result.baseline)} vs {_esc(result.candidate)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_esc(result.dataset)}: baseline {_esc(result.baseline)} vs candidate {_esc(result.candidate)}</h1>",
        f"<p class=sub>{_esc(result.start)} .. {_esc(result.end)} &middot; segments: "
        f"{_esc(', '.join(result.segments) or 'none')}</p>",
        f"<div class='verdict {ship[0]}'>{ship[1]}</div>",
        "<ul>" + "".join(f"<li>{_esc(r)}</li>" for r in d.reasons) + "</ul>",
        "<h2>Per task</h2><table class=tasks><tr><th class=l>task</th><th class=l>verdict</th>"
        "<th class=l>guardrails</th></tr>"
        + "".join(f"<tr class={_esc(d.tasks[t])}><td class=l>{_esc(t)}</td>"
                  f"<td class=l>{_esc(d.tasks[t]).replace('_', ' ')}</td>"
                  f"<td class=l>{_guardrails(d, t)}</td></tr>"
                  for t in tasks if t in d.tasks) + "</table>",
        decision_gates_section(d),
        _versions_section(result),
        "<h2>Pairing</h2><table>"
        + "".join(f"<tr><th class=l>{_esc(k.replace('_', ' '))}</th><td>{v:,}</td></tr>" for k, v in
                  [*p.__dict__.items(), ("labelled_rows", p.labelled_rows)]) + "</table>",
        *_verdict_sections(pooled, tasks),
    ]
    for t in tasks:
        auc = pooled[(pooled["task"] == t) & (pooled["segment"] == "all") & (pooled["metric"] == "auc")]
        values = {} if auc.empty else {"baseline": auc.iloc[0]["baseline_value"],
                                       "candidate": auc.iloc[0]["candidate_value"]}
        if t in result.plots:
            parts += [f"<h2>{_esc(t)}</h2><div class=figs>{_png(task_figure(t, result.plots[t], values))}"
                      f"</div>{_reliability_table(result.plots[t])}"]
    daily = daily_figure(report, tasks)
    if daily is not None:
        parts += ["<h2>Per-day delta with its adjusted CI (filled: a difference that day)</h2>"
                  "<div class='figs wide'>", _png(daily), "</div>"]
    segs = pooled[pooled["segment"] != "all"]
    if not segs.empty:
        parts += ["<h2>Segments (whole range)</h2><div class=wide>",
                  _segments_section(segs, list(result.segments), tasks), "</div>"]
    if result.gates:
        flags = []
        for arm, g in result.gates.items():
            for t, f in g["flags"].items():
                if f["collapsed"]:
                    flags.append(f"{arm} {t}: collapsed gate (> 90% of the mass on one expert)")
                if f["dead_experts"]:
                    flags.append(f"{arm} {t}: dead expert(s) {f['dead_experts']}")
        parts += ["<h2>Expert gates (mixture weights)</h2>", "<ul>" + "".join(f"<li>{_esc(x)}</li>" for x in flags) + "</ul>"
                  if flags else "<p>No collapsed gate, no dead expert.</p>",
                  f"<div class=figs>{_gate_figure(result.gates)}</div>"]
    parts.append(recommendations.html_section(getattr(result, "recommendations", None),
                                              getattr(result, "recommendation_days", []), tasks))
    parts.append(counterfactual_report.html_section(
        getattr(result, "counterfactual", None), tasks, _png))
    drift = _drift_section(result)
    if drift:
        parts += ["<h2>Prediction drift (score distribution vs the arm's trailing days)</h2>", drift]
    parts.append("<p class=sub>AUC: DeLong's test (exact). Other metrics: paired bootstrap clustered "
                 "by user, normal interval. p-values adjusted over every test in this report. "
                 f"{INTERVALS_NOTE}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _top_k(rows: pd.DataFrame) -> str:
    """The largest K among the recommendation rows' metrics (the list length)."""
    ks = [int(m.split("@")[1]) for m in rows["metric"] if "@" in m]
    return str(max(ks)) if ks else ""


def render_markdown(result) -> str:
    d = result.decision
    pooled = result.report[result.report["day"].isna() & (result.report["segment"] == "all")]
    lines = [f"### A/B baseline `{result.baseline}` vs candidate `{result.candidate}` "
             f"({result.dataset}, {result.start}..{result.end}): "
             f"**{'SHIP' if d.ship else 'DO NOT SHIP'}**", ""]
    for arm, v in (getattr(result, "versions", None) or {}).items():
        known = [f"{v['arch']}" if v.get("arch") else None,
                 f"{v['epochs_run']} epochs" if v.get("epochs_run") is not None else None,
                 f"trained on {v['training_range']}" if v.get("training_range") else None]
        what = ", ".join(k for k in known if k) or "no artifact found (its predictions only)"
        lines.append(f"- {arm} `{v['version']}`: {what}; "
                     f"{'registered' if v.get('registered') else 'not registered'}, aliases: "
                     f"{_version_value('aliases', v.get('aliases'))}")
    lines += [f"- {r}" for r in d.reasons] + [""]
    lines += ["| task | verdict | guardrails | AUC (base -> cand) | delta AUC [adjusted CI] "
              "| logloss delta [adjusted CI] |", "|---|---|---|---|---|---|"]
    for t in [t for t in task_order(result) if t in d.tasks]:
        v = d.tasks[t]
        rows = {r["metric"]: r for r in pooled[pooled["task"] == t].to_dict("records")}
        a, ll = rows.get("auc"), rows.get("logloss")
        auc = f"{_f(a['baseline_value'])} -> {_f(a['candidate_value'])}" if a else "n/a"
        da = f"{_f(a['delta'], 3)} {_interval(a, '')}" if a else "n/a"
        dl = f"{_f(ll['delta'], 3)} {_interval(ll, '')}" if ll else "n/a"
        broken = getattr(d, "guardrails_by_task", {}).get(t, [])
        lines.append(f"| {t} | {v.replace('_', ' ')} | {'broken: ' + '; '.join(broken) if broken else 'ok'} "
                     f"| {auc} | {da} | {dl} |")
    if d.gates:
        lines += ["", "| gate | figure | status |", "|---|---|---|"]
        lines += [f"| {g['rule']} | {g['figure']} | {g['status']} |" for g in d.gates]
    lines += ["", "Adjusted CI: at the verdicts' multiplicity (it excludes 0 exactly when the verdict "
              "is a difference); the report's tables show the raw 95% CI beside it."]
    rec = getattr(result, "recommendations", None)
    if rec is not None and not rec.empty:
        lines += ["", "Recommendations (paired by user): " + "; ".join(
            f"{r['task']} {r['metric']} {_f(r['baseline_value'])} -> {_f(r['candidate_value'])} "
            f"({r['verdict'].replace('_', ' ')})"
            for r in rec.to_dict("records") if r["metric"].endswith(f"@{_top_k(rec)}")
            or r["task"] == "all")]
    lines += [""] + counterfactual_report.markdown_lines(
        getattr(result, "counterfactual", None), task_order(result))
    p = result.pairing
    lines += [f"Paired rows: {p.paired_rows} ({p.labelled_rows} labelled); baseline only: "
              f"{p.baseline_only_rows}; candidate only: {p.candidate_only_rows}; paired without "
              f"labels: {p.paired_without_labels}.", ""]
    return "\n".join(lines)
