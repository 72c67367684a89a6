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

from jobs.core import metric_registry
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
.better{background:#dff3e4}.worse{background:#fbe3e4}.no_difference{color:#5a6275}
.raw{color:#8a90a0}td{white-space:nowrap}
.figs{display:flex;flex-wrap:wrap;gap:8px}.figs img{border:1px solid #e5e7ee;max-width:100%}
ul{margin-top:4px}
""" + "\n".join(line for line in VALIDATION_CSS.splitlines() if line.startswith((".bar", ".ok-bar", "svg.spark")))


def _f(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
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


def _task_figures(task: str, payload: dict, auc: dict) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    colors = {"baseline": "#4c72b0", "candidate": "#dd8452"}
    ax = axes[0]
    for arm in ("baseline", "candidate"):
        fpr, tpr = _roc(payload[arm])
        ax.plot(fpr, tpr, color=colors[arm], label=f"{arm} (AUC {_f(auc.get(arm))})")
    ax.plot([0, 1], [0, 1], ":", color="#999")
    ax.set(title=f"{task}: ROC", xlabel="false positive rate", ylabel="true positive rate")
    ax.legend(loc="lower right", fontsize=8)
    ax = axes[1]
    for arm in ("baseline", "candidate"):
        h = payload[arm]
        pos, cnt, psum = (np.asarray(h[k], float).reshape(10, -1).sum(axis=1) for k in ("pos", "cnt", "psum"))
        keep = cnt > 0
        ax.plot(psum[keep] / cnt[keep], pos[keep] / cnt[keep], "o-", color=colors[arm], label=arm, ms=4)
    ax.plot([0, 1], [0, 1], ":", color="#999")
    ax.set(title=f"{task}: reliability", xlabel="mean predicted", ylabel="observed rate",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[2]
    edges = np.linspace(0, 1, payload["bins"] + 1)
    for arm in ("baseline", "candidate"):
        cnt = np.asarray(payload[arm]["cnt"], float)
        ax.stairs(cnt / max(cnt.sum(), 1.0), edges, color=colors[arm], label=arm)
    ax.set(title=f"{task}: score distribution", xlabel="score", ylabel="share of rows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _daily_figure(report: pd.DataFrame, tasks: list[str]) -> str:
    daily = report[report["day"].notna() & (report["segment"] == "all")]
    if daily.empty:
        return ""
    plt = _plt()
    metrics = [m for m in ("auc", "logloss", "calibration") if m in set(daily["metric"])]
    fig, axes = plt.subplots(len(metrics), len(tasks), figsize=(4.2 * len(tasks), 2.6 * len(metrics)),
                             squeeze=False)
    for i, m in enumerate(metrics):
        for j, t in enumerate(tasks):
            ax = axes[i][j]
            d = daily[(daily["task"] == t) & (daily["metric"] == m)].sort_values("day")
            x = pd.to_datetime(d["day"])
            ax.axhline(0.0, color="#999", lw=0.8)
            ax.fill_between(x, d["ci_low"], d["ci_high"], color="#dd8452", alpha=0.25, step="mid")
            ax.plot(x, d["delta"], "o-", color="#dd8452", ms=4)
            ax.set_title(f"{t}: {m} delta (95% CI)", fontsize=9)
            ax.tick_params(labelsize=7)
            for label in ax.get_xticklabels():
                label.set_rotation(30)
    fig.tight_layout()
    return _png(fig)


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


def _verdict_table(rows: pd.DataFrame, label_col: str) -> str:
    head = (f"<tr><th class=l>{label_col}</th><th class=l>metric</th><th>baseline</th><th>candidate</th>"
            "<th>delta</th><th>adjusted CI (level)</th><th>p adjusted</th><th class=l>verdict</th>"
            "<th class=raw>raw 95% CI</th><th class=raw>raw p</th><th>n</th></tr>")
    body = []
    for r in rows.to_dict("records"):
        body.append(
            f"<tr class={_esc(r['verdict'])}><td class=l>{_esc(r[label_col])}</td><td class=l>{_esc(r['metric'])}</td>"
            f"<td>{_f(r['baseline_value'])}</td><td>{_f(r['candidate_value'])}</td><td>{_f(r['delta'], 3)}</td>"
            f"<td>{_interval(r, '_adjusted')} ({_level(r.get('ci_level_adjusted'))})</td>"
            f"<td>{_f(r['p_value_adjusted'], 3)}</td>"
            f"<td class=l>{_esc(r['verdict']).replace('_', ' ')}</td>"
            f"<td class=raw>{_interval(r, '')}</td><td class=raw>{_f(r['p_value'], 3)}</td>"
            f"<td>{r['n']}</td></tr>")
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


def _ordered(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.assign(_m=rows["metric"].map(metric_registry.rank)).sort_values(["task", "segment", "_m"]).drop(columns="_m")


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
    tasks = list(dict.fromkeys(report["task"]))
    pooled = report[report["day"].isna()]
    d = result.decision
    ship = ("ship", "SHIP") if d.ship else ("noship", "DO NOT SHIP")
    p = result.pairing
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>A/B {_esc(result.baseline)} vs {_esc(result.candidate)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_esc(result.dataset)}: candidate {_esc(result.candidate)} vs baseline {_esc(result.baseline)}</h1>",
        f"<p class=sub>{_esc(result.start)} .. {_esc(result.end)} &middot; segments: "
        f"{_esc(', '.join(result.segments) or 'none')}</p>",
        f"<div class='verdict {ship[0]}'>{ship[1]}</div>",
        "<ul>" + "".join(f"<li>{_esc(r)}</li>" for r in d.reasons) + "</ul>",
        "<h2>Per task</h2><table><tr><th class=l>task</th><th class=l>verdict</th>"
        "<th class=l>guardrails</th></tr>"
        + "".join(f"<tr class={_esc(v)}><td class=l>{_esc(t)}</td><td class=l>{_esc(v).replace('_', ' ')}</td>"
                  f"<td class=l>{_guardrails(d, t)}</td></tr>"
                  for t, v in d.tasks.items()) + "</table>",
        "<h2>Pairing</h2><table>"
        + "".join(f"<tr><th class=l>{_esc(k.replace('_', ' '))}</th><td>{v}</td></tr>" for k, v in
                  [*p.__dict__.items(), ("labelled_rows", p.labelled_rows)]) + "</table>",
        "<h2>Verdicts (whole range, all rows)</h2>",
        _verdict_table(_ordered(pooled[pooled["segment"] == "all"]), "task"),
    ]
    for t in tasks:
        auc = pooled[(pooled["task"] == t) & (pooled["segment"] == "all") & (pooled["metric"] == "auc")]
        values = {} if auc.empty else {"baseline": auc.iloc[0]["baseline_value"],
                                       "candidate": auc.iloc[0]["candidate_value"]}
        if t in result.plots:
            parts += [f"<h2>{_esc(t)}</h2><div class=figs>{_task_figures(t, result.plots[t], values)}</div>"]
    daily = _daily_figure(report, tasks)
    if daily:
        parts += ["<h2>Per-day delta with 95% CI</h2><div class=figs>", daily, "</div>"]
    segs = pooled[pooled["segment"] != "all"]
    if not segs.empty:
        parts += ["<h2>Segments (whole range)</h2>",
                  _verdict_table(_ordered(segs).assign(label=lambda x: x["task"] + " / " + x["segment"]), "label")]
    if result.gates:
        flags = []
        for arm, g in result.gates.items():
            for t, f in g["flags"].items():
                if f["collapsed"]:
                    flags.append(f"{arm} {t}: collapsed gate (> 90% of the mass on one expert)")
                if f["dead_experts"]:
                    flags.append(f"{arm} {t}: dead expert(s) {f['dead_experts']}")
        parts += ["<h2>Gates</h2>", "<ul>" + "".join(f"<li>{_esc(x)}</li>" for x in flags) + "</ul>"
                  if flags else "<p>No collapsed gate, no dead expert.</p>",
                  f"<div class=figs>{_gate_figure(result.gates)}</div>"]
    drift = _drift_section(result)
    if drift:
        parts += ["<h2>Prediction drift (score distribution vs the arm's trailing days)</h2>", drift]
    parts.append("<p class=sub>AUC: DeLong's test (exact). Other metrics: paired bootstrap clustered "
                 "by user, normal interval. p-values adjusted over every test in this report. "
                 f"{INTERVALS_NOTE}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(result) -> str:
    d = result.decision
    pooled = result.report[result.report["day"].isna() & (result.report["segment"] == "all")]
    lines = [f"### A/B `{result.candidate}` vs `{result.baseline}` ({result.dataset}, "
             f"{result.start}..{result.end}): **{'SHIP' if d.ship else 'DO NOT SHIP'}**", ""]
    lines += [f"- {r}" for r in d.reasons] + [""]
    lines += ["| task | verdict | guardrails | AUC (base -> cand) | delta AUC [adjusted CI] "
              "| logloss delta [adjusted CI] |", "|---|---|---|---|---|---|"]
    for t, v in d.tasks.items():
        rows = {r["metric"]: r for r in pooled[pooled["task"] == t].to_dict("records")}
        a, ll = rows.get("auc"), rows.get("logloss")
        auc = f"{_f(a['baseline_value'])} -> {_f(a['candidate_value'])}" if a else "n/a"
        da = f"{_f(a['delta'], 3)} {_interval(a, '_adjusted')}" if a else "n/a"
        dl = f"{_f(ll['delta'], 3)} {_interval(ll, '_adjusted')}" if ll else "n/a"
        broken = getattr(d, "guardrails_by_task", {}).get(t, [])
        lines.append(f"| {t} | {v.replace('_', ' ')} | {'broken: ' + '; '.join(broken) if broken else 'ok'} "
                     f"| {auc} | {da} | {dl} |")
    lines += ["", "Adjusted CI: at the verdicts' multiplicity (it excludes 0 exactly when the verdict "
              "is a difference); the report's tables show the raw 95% CI beside it."]
    p = result.pairing
    lines += ["", f"Paired rows: {p.paired_rows} ({p.labelled_rows} labelled); baseline only: "
              f"{p.baseline_only_rows}; candidate only: {p.candidate_only_rows}; paired without "
              f"labels: {p.paired_without_labels}.", ""]
    return "\n".join(lines)
