"""The few lines a person reads on stderr after a job: one function per command, each over the
job's run manifest (a dict, as printed and kept under ``_runs/``: data in, text out).

``summarize(manifest)`` picks the command's function; ``colour`` (only when stderr is a
terminal, see :func:`use_colour`) marks the status words, nothing else. No function here reads
the warehouse or Spark: what a summary shows is in the manifest, so the demo and the CLI print
the same text and a manifest file read back later gives it again.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from typing import Any, Callable, TextIO

from jobs.core import metric_registry
from jobs.core.registry import format_table

Manifest = dict[str, Any]
MAX_ITEMS = 5  # reasons shown (compare's decision, validate's quarantine); the rest are counted

_COLOURS = {"green": "\x1b[32m", "red": "\x1b[31m", "yellow": "\x1b[33m"}
_RESET = "\x1b[0m"
_WORD_COLOUR = {"succeeded": "green", "passed": "green", "scored": "green", "SHIP": "green",
                "better": "green", "quarantined": "yellow", "skipped": "yellow",
                "failed": "red", "worse": "red", "NO SHIP": "red", "not_run": "red"}


def use_colour(stream: TextIO) -> bool:
    """Colour only for a terminal, and never with ``NO_COLOR`` set (https://no-color.org)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and "NO_COLOR" not in os.environ


def _word(text: str, colour: bool) -> str:
    name = _WORD_COLOUR.get(text)
    return f"{_COLOURS[name]}{text}{_RESET}" if colour and name else text


def _num(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _value(value: Any, metric: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if metric_registry.metric(metric).role == "size":
        return f"{int(value):,}"
    return f"{value:.4f}"


def _head(m: Manifest, what: str = "") -> str:
    ds = f" ds={m['ds']}" if m.get("ds") else ""
    return f"{m['job']} {m['dataset']}{ds}{': ' + what if what else ''}"


# --------------------------------------------------------------------------------------------
# One function per command


def validate_summary(m: Manifest, colour: bool = False) -> str:
    d, out = m.get("details", {}), m.get("outputs", {})
    status = d.get("validation_status", "?")
    reused = " (decision reused: features unchanged)" if d.get("reused_decision") else ""
    lines = [_head(m, f"{_word(status, colour)}{reused}, {_num(d.get('rows_read', 0))} rows read, "
                      f"{_num(m['output_rows'])} passed, {_num(m['quarantined_rows'])} "
                      f"quarantined")]
    reasons = d.get("reasons") or {}  # quarantine reason -> rows
    if reasons:
        shown = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        more = f" (+{len(shown) - MAX_ITEMS} more)" if len(shown) > MAX_ITEMS else ""
        lines.append("  quarantined for: " + ", ".join(
            f"{reason} {_num(n)}" for reason, n in shown[:MAX_ITEMS]) + more)
    if out.get("report"):
        lines.append(f"  report: {out['report']}")
    return "\n".join(lines)


def score_summary(m: Manifest, colour: bool = False) -> str:
    d, out = m.get("details", {}), m.get("outputs", {})
    source = f" ({d['model_source']})" if d.get("model_source") else ""
    if "recommendations" in out:
        return "\n".join([
            _head(m, f"{_num(m['input_rows'])} candidate pairs scored by {m['model_version']}"
                     f"{source}, top {d.get('top_k')} per user ({d.get('method')} scoring, "
                     f"{d.get('fusion')} fusion), {_num(m['output_rows'])} rows"),
            f"  recommendations: {out['recommendations']}"])
    lines = [_head(m, f"{_num(m['output_rows'])} of {_num(m['input_rows'])} validated rows "
                      f"scored by {m['model_version']}{source}")]
    lines += [f"  {name}: {path}" for name, path in out.items()]
    return "\n".join(lines)


def metrics_table(pooled: dict[str, dict[str, float]], tasks: list[str] | None = None) -> str:
    """task x metric (segment ``all``), the registry's metrics in its order."""
    tasks = tasks or list(pooled)
    shown = [n for n in metric_registry.names("size", "quality")
             if any(n in pooled.get(t, {}) for t in tasks)]
    rows = [{"task": t, **{n: _value(pooled.get(t, {}).get(n), n) for n in shown}}
            for t in tasks]
    return format_table(rows, ["task", *shown])


def evaluate_summary(m: Manifest, colour: bool = False) -> str:
    d = m.get("details", {})
    lines = [_head(m, f"{_num(m['input_rows'])} prediction rows, {_num(m['output_rows'])} metric "
                      f"rows -> {m.get('outputs', {}).get('metrics')}")]
    for version, pooled in (d.get("pooled") or {}).items():
        lines.append(f"model {version} (segment all, {_num(d.get('matched_rows', {}).get(version, 0))}"
                     f" rows with labels):")
        lines += [f"  {line}" for line in metrics_table(pooled).splitlines()]
    return "\n".join(lines)


def compare_summary(m: Manifest, colour: bool = False) -> str:
    d, out = m.get("details", {}), m.get("outputs", {})
    decision, pairing = d.get("decision") or {}, d.get("pairing") or {}
    baseline, _, candidate = (m.get("model_version") or ",").partition(",")
    verdict = _word("SHIP" if decision.get("ship") else "NO SHIP", colour)
    lines = [f"compare {m['dataset']} {d.get('start')}..{d.get('end')}: candidate {candidate} vs "
             f"baseline {baseline}: {verdict}",
             f"  {_num(pairing.get('labelled_rows', 0))} paired rows with labels; per task: "
             + ", ".join(f"{t} {_word(v, colour)}" for t, v in (decision.get("tasks") or {}).items())]
    reasons = decision.get("reasons") or []  # the broken guardrails among them
    lines += [f"  - {reason}" for reason in reasons[:MAX_ITEMS]]
    if len(reasons) > MAX_ITEMS:
        lines.append(f"  - ... and {len(reasons) - MAX_ITEMS} more reason(s) (the report lists "
                     f"every one)")
    gates = decision.get("gates") or []
    if gates:
        counts = Counter(g["status"] for g in gates)
        lines.append("  gates: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        lines += [f"    {_word(g['status'], colour)}: {g['rule']} ({g['figure']})" for g in gates]
    cf = d.get("counterfactual") or {}
    if cf.get("status") == "estimated":
        by_policy: dict[str, list[str]] = {}
        for key, v in (cf.get("verdicts") or {}).items():
            policy, task, estimator = key.split("/")
            if estimator == "dr":
                by_policy.setdefault(policy, []).append(f"{task} {_word(v, colour)}")
        lines.append("  counterfactual (doubly robust, each model's own lists): "
                     + "; ".join(f"{p}: {', '.join(t)}" for p, t in by_policy.items()))
    elif cf.get("status") == "no_propensities":
        lines.append("  counterfactual: not estimated (no logged propensities in the range)")
    if out.get("html"):
        lines.append(f"  report: {out['html']}")
    return "\n".join(lines)


def backfill_table(days: list[dict[str, Any]], several_models: bool,
                   colour: bool = False) -> str:
    columns = ["ds", *(["model"] if several_models else []), "status", "model_version",
               "validation", "input_rows", "output_rows", "quarantined_rows", "evaluation",
               "seconds", "error"]
    rows = [{c: ("" if d.get(c) is None else d[c]) for c in columns} for d in days]
    table = format_table(rows, columns)
    if not colour:
        return table
    # colour after aligning (escape codes have no width): only the status column's words
    head, *body = table.splitlines()
    at = head.index("status")
    coloured = []
    for line in body:
        word = line[at:].split(" ", 1)[0]
        coloured.append(line[:at] + _word(word, True) + line[at + len(word):])
    return "\n".join([head, *coloured])


def backfill_summary(m: Manifest, colour: bool = False) -> str:
    d = m.get("details", {})
    days, models = d.get("days") or [], d.get("models") or [d.get("model")]
    several = len(models) > 1
    counts = ", ".join(f"{n} {_word(s, colour)}" for s, n in (d.get("counts") or {}).items() if n)
    unit = f"model-day(s) ({len(models)} models)" if several else "day(s)"
    lines = [backfill_table(days, several, colour), f"{len(days)} {unit}: {counts}"]
    return "\n".join(lines)


def models_summary(m: Manifest, colour: bool = False) -> str:
    d = m.get("details", {})
    if d.get("note"):
        return d["note"]
    said = "; ".join(f"registered {e['version']}" if e["event"] == "register" else
                     f"@{e['alias']} -> {e['version']} from {e['effective']}"
                     for e in d.get("events") or [])
    return said or generic_summary(m, colour)


def generic_summary(m: Manifest, colour: bool = False) -> str:
    model = f", model {m['model_version']}" if m.get("model_version") else ""
    lines = [_head(m, f"{_word(m['status'], colour)}, {_num(m['input_rows'])} rows in, "
                      f"{_num(m['output_rows'])} out{model}")]
    lines += [f"  {name}: {path}" for name, path in (m.get("outputs") or {}).items()]
    return "\n".join(lines)


SUMMARIES: dict[str, Callable[[Manifest, bool], str]] = {
    "validate": validate_summary, "score": score_summary, "evaluate": evaluate_summary,
    "compare": compare_summary, "backfill": backfill_summary,
    "models-register": models_summary, "models-promote": models_summary,
    "models-import": models_summary,
}


def summarize(m: Manifest, colour: bool = False) -> str | None:
    """The command's summary of a finished manifest; None for a failed one (its error line
    says it all), except a backfill's, whose per-day table shows which days failed."""
    if m.get("status") != "succeeded" and not (m.get("job") == "backfill"
                                                and (m.get("details") or {}).get("days")):
        return None
    return SUMMARIES.get(m.get("job"), generic_summary)(m, colour)


def recommendations_summary(m: Manifest, tasks: list[str], k: int) -> str:
    """``evaluate --recommendations``' figures of one version in a few lines: top-K accuracy
    per task, the catalog figures, and what they mean."""
    d = m.get("details", {})
    figures = next(iter((d.get("recommendations") or {}).values()), {})

    def cell(key: str) -> str:
        value = figures.get(key)
        return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) \
            else f"{value:.3f}"

    columns = ["task", *(f"{family}@{k}" for family in metric_registry.RECOMMENDATION_AT_K)]
    rows = [{"task": t, **{c: cell(f"{t}/{c}") for c in columns[1:]}} for t in tasks]
    lines = [format_table(rows, columns),
             f"catalog: coverage {cell('all/coverage')} of the items, exposure Gini "
             f"{cell('all/exposure_gini')}, popularity bias {cell('all/popularity_bias')} "
             f"(1 = only the most popular), diversity {cell('all/diversity')}, novelty "
             f"{cell('all/novelty')} bits",
             f"recall@{k}: share of a user's positives logged {d.get('recommendations_judged_on')} "
             f"that made their top {k} (users with one); coverage: share of the items "
             f"recommended to anyone"]
    return "\n".join(lines)
