"""The counterfactual section of the A/B report (HTML and Markdown): each model's estimated value
on the lists it would itself show, the paired difference with its verdict, and a figure of the
estimates with their intervals (and the truth where the simulator knows it).

Pure: a :class:`jobs.compare.offpolicy.Counterfactual` in, text out.
"""

from __future__ import annotations

import html
import math

import pandas as pd

from jobs.compare.counterfactual import ESTIMATORS

TITLE = "Counterfactual: each model on the lists it would show (off-policy)"
NOTE = ("Value: expected positives per shown slot. ips: inverse propensity; snips: "
        "self-normalised; dr: doubly robust (reward model: the {reward} arm's predictions). "
        "Weights clipped at {clip:g}; ess: Kish's effective sample size. 95% intervals: delta "
        "method clustered by user. The ship decision above is made on the logged traffic; "
        "this section is reported beside it.")


def _f(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}g}"


def _esc(x) -> str:
    return html.escape(str(x))


def _interval(r: dict) -> str:
    return f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}]"


def _rows(table: pd.DataFrame, policy: str, task: str) -> dict:
    part = table[(table["policy"] == policy) & (table["task"] == task)]
    return {(r["arm"], r["estimator"]): r for r in part.to_dict("records")}


def figure(table: pd.DataFrame, tasks: list[str]):
    """One panel per task: every (policy, arm) row's snips and dr estimates with their
    intervals; the truth as a black tick where known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = table[table["arm"] != "difference"]
    labels = list(dict.fromkeys(f"{r['policy']} / {r['arm']}" for r in arms.to_dict("records")))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 0.45 * len(labels) + 1.2),
                             squeeze=False, sharey=True)
    colours = {"snips": "#3b5bdb", "dr": "#e8590c"}
    for ax, task in zip(axes[0], tasks):
        part = arms[arms["task"] == task]
        for r in part.to_dict("records"):
            if r["estimator"] not in colours:
                continue
            y = labels.index(f"{r['policy']} / {r['arm']}") + (0.15 if r["estimator"] == "dr" else -0.15)
            ax.errorbar(r["value"], y, xerr=[[r["value"] - r["ci_low"]], [r["ci_high"] - r["value"]]],
                        fmt="o", ms=4, color=colours[r["estimator"]], capsize=2,
                        label=r["estimator"])
            if r["truth"] is not None and math.isfinite(r["truth"]):
                ax.plot([r["truth"]], [y], marker="|", ms=12, color="black")
        ax.set_title(task, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(labels)), labels, fontsize=8)
    axes[0][0].invert_yaxis()
    handles, names = axes[0][0].get_legend_handles_labels()
    uniq = dict(zip(names, handles))
    if table["truth"].notna().any():
        from matplotlib.lines import Line2D
        uniq["truth"] = Line2D([], [], marker="|", ms=12, color="black", ls="")
    fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=len(uniq), fontsize=8,
               bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def html_section(cf, tasks: list[str], png) -> str:
    """``png``: the report's figure-to-<img> function."""
    if cf is None:
        return ""
    if cf.status != "estimated":
        return f"<h2>{_esc(TITLE)}</h2><p>Not estimated: {_esc(cf.reason)}.</p>"
    table = cf.table
    tasks = [t for t in tasks if t in set(table["task"])]
    first = table.iloc[0]
    head = ("<tr><th class=l>policy</th><th class=l>task</th><th class=l>estimator</th>"
            "<th>baseline</th><th>candidate</th><th>delta [95% CI]</th><th class=l>verdict</th>"
            "<th>ess (base / cand)</th><th>truth delta</th></tr>")
    body = []
    for policy in [p for p in dict.fromkeys(table["policy"]) if p != "logged"]:
        for task in tasks:
            rows = _rows(table, policy, task)
            for est in ESTIMATORS:
                b, c, d = (rows.get((a, est)) for a in ("baseline", "candidate", "difference"))
                if b is None or c is None or d is None:
                    continue
                body.append(
                    f"<tr class={_esc(d['verdict'])}><td class=l>{_esc(policy)}</td>"
                    f"<td class=l>{_esc(task)}</td><td class=l>{est}</td><td>{_f(b['value'])}</td>"
                    f"<td>{_f(c['value'])}</td><td>{_f(d['value'], 3)} {_interval(d)}</td>"
                    f"<td class=l>{_esc(d['verdict']).replace('_', ' ')}</td>"
                    f"<td>{_f(b['ess'], 5)} / {_f(c['ess'], 5)}</td><td>{_f(d['truth'], 3)}</td></tr>")
    logged = table[(table["arm"] == "logged") & (table["estimator"] == "ips")]
    ref = ", ".join(f"{r['task']} {_f(r['value'])}" for r in logged.to_dict("records"))
    return "".join([
        f"<h2>{_esc(TITLE)}</h2>",
        f"<p class=sub>days with logged propensities: {_esc(', '.join(cf.days))}"
        + (f"; the logged traffic's own value: {_esc(ref)}" if ref else "") + "</p>",
        f"<div class=wide><table>{head}{''.join(body)}</table></div>",
        f"<div class=figs>{png(figure(table, tasks))}</div>",
        "<p class=sub>" + _esc(NOTE.format(reward=first["reward_model"], clip=first["max_weight"]))
        + "</p>"])


def markdown_lines(cf, tasks: list[str]) -> list[str]:
    if cf is None:
        return []
    if cf.status != "estimated":
        return [f"Counterfactual (off-policy): not estimated ({cf.reason}).", ""]
    table = cf.table
    tasks = [t for t in tasks if t in set(table["task"])]
    lines = ["Counterfactual (off-policy, doubly robust): value per shown slot on each model's "
             "own lists", "", "| policy | task | baseline | candidate | delta [95% CI] | verdict |",
             "|---|---|---|---|---|---|"]
    for policy in [p for p in dict.fromkeys(table["policy"]) if p != "logged"]:
        for task in tasks:
            rows = _rows(table, policy, task)
            b, c, d = (rows.get((a, "dr")) for a in ("baseline", "candidate", "difference"))
            if b is None or c is None or d is None:
                continue
            lines.append(f"| {policy} | {task} | {_f(b['value'])} | {_f(c['value'])} | "
                         f"{_f(d['value'], 3)} {_interval(d)} | {d['verdict'].replace('_', ' ')} |")
    return lines + [""]


__all__ = ["html_section", "markdown_lines", "figure"]
