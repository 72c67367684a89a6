"""A day's validation report that reads offline: ``validation/ds=D/report.html``.

GX's Data Docs pull Bootstrap, jQuery and Vega from CDNs, so without network their index lists
no validation and the result pages are unstyled; they also show the helper columns
``_key_copies`` / ``_reason`` as if they were data. This page is ours: one file, inline CSS, no
script, built from the decision (:class:`~jobs.validate.decision.ValidationReport`), and it names
only real columns: the duplicate-key rule names the key columns, the bad-row-fraction policy
names "row-level rules", and helper names are dropped from observed values.
"""

from __future__ import annotations

import html
import json
from typing import Any

from jobs.validate.rules import KEY_COPIES, REASON

HELPERS = (KEY_COPIES, REASON)
CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px 32px;color:#1d2330;max-width:1300px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;margin-top:26px;border-bottom:1px solid #dde;padding-bottom:4px}
.sub{color:#5a6275;margin-top:0}
.badge{display:inline-block;padding:8px 16px;border-radius:6px;font-size:18px;font-weight:600;margin:8px 0}
.passed{background:#dff3e4;color:#12622b}.quarantined{background:#fff3d6;color:#7a5300}.failed{background:#fbe3e4;color:#8a1f26}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{border:1px solid #d8dbe3;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f2f4f8}td{max-width:480px;overflow-wrap:anywhere}td.n{text-align:right}tr.bad td{background:#fbe3e4}
code{font-size:12px}
.bar{display:inline-block;height:12px;border-radius:2px;vertical-align:middle}.track{display:inline-block;width:220px;background:#eef0f4;border-radius:2px}
.ok-bar{background:#3a9d5d}.near-bar{background:#e0a526}.over-bar{background:#c8343e}
svg.spark polyline{fill:none;stroke:#3b5bdb;stroke-width:1.5}svg.spark line{stroke:#c8343e;stroke-dasharray:3 2}
"""

SPARK_W, SPARK_H = 120, 24


def _bar_class(value: float, limit: float | None) -> str:
    if limit is None or limit <= 0:
        return "ok-bar"
    return "over-bar" if value > limit else ("near-bar" if value > 0.5 * limit else "ok-bar")


def _sparkline(points: list[tuple[str, float]], limit: float | None) -> str:
    """A small inline SVG line of one feature's PSI over the trailing days (dashed: threshold)."""
    if not points:
        return ""
    top = max([v for _, v in points] + [limit or 0.0]) or 1.0
    n = len(points)
    xy = " ".join(f"{(i / max(1, n - 1)) * (SPARK_W - 4) + 2:.1f},"
                  f"{SPARK_H - 2 - v / top * (SPARK_H - 4):.1f}" for i, (_, v) in enumerate(points))
    line = ""
    if limit:
        y = SPARK_H - 2 - limit / top * (SPARK_H - 4)
        line = f"<line x1=0 x2={SPARK_W} y1={y:.1f} y2={y:.1f} />"
    title = ", ".join(f"{d}: {v:.3g}" for d, v in points)
    return (f"<svg class=spark width={SPARK_W} height={SPARK_H} role=img>"
            f"<title>{html.escape(title)}</title>{line}<polyline points='{xy}' /></svg>")


def render_drift_rows(rows, history: dict | None = None, note: str = "") -> str:
    """The drift section: one row per feature (or prediction column), a bar of its PSI on a
    scale of twice the threshold coloured by the threshold (green, amber past half, red past
    it), its other statistics and a small line of its PSI over the trailing days."""
    if not rows:
        return f"<p>{_e(note)}</p>" if note else ""
    by: dict[tuple, dict] = {}
    for r in rows:
        by.setdefault((r.model_version or "", r.feature), {})[r.statistic] = r
    out = [f"<p>{_e(note)}</p>" if note else "",
           "<table class=drift><tr><th>feature</th>"
           + ("<th>model version</th>" if any(k[0] for k in by) else "")
           + "<th>PSI</th><th></th><th>JS</th><th>null share &Delta;</th><th>drifted</th>"
             "<th>trailing days (PSI)</th><th>reference</th></tr>"]
    for (version, feature), stats in by.items():
        p = stats.get("psi")
        limit = p.threshold if p is not None else None
        value = p.value if p is not None else 0.0
        width = 0 if limit is None else min(1.0, value / (2 * limit)) if limit else 1.0
        drifted = any(s.drifted for s in stats.values())
        any_row = next(iter(stats.values()))
        cells = [f"<td>{_e(feature)}</td>"]
        if any(k[0] for k in by):
            cells.append(f"<td>{_e(version)}</td>")
        cells += [
            f"<td class=n>{_e(_fmt(value))}</td>",
            f"<td><span class=track><span class='bar {_bar_class(value, limit)}' "
            f"style='width:{width * 100:.1f}%'></span></span></td>",
            f"<td class=n>{_e(_fmt(stats['js'].value)) if 'js' in stats else ''}</td>",
            f"<td class=n>{_e(_fmt(stats['null_share'].value)) if 'null_share' in stats else ''}</td>",
            f"<td>{'DRIFT' if drifted else ''}</td>",
            f"<td>{_sparkline((history or {}).get(feature, []), limit)}</td>",
            f"<td>{_e(any_row.reference)}</td>"]
        out.append(f"<tr class={'bad' if drifted else 'ok'}>{''.join(cells)}</tr>")
    return "".join(out) + "</table>"


def _clean(value: Any) -> Any:
    """Observed values without the helper columns (lists, dicts, nested)."""
    if isinstance(value, str):
        return None if value in HELPERS else value
    if isinstance(value, (list, tuple)):
        return [c for c in (_clean(v) for v in value) if c is not None]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if k not in HELPERS}
    return value


def _column(rule) -> str:
    if rule.column == REASON:
        return "(row-level rules)"
    if rule.column == KEY_COPIES:
        return "(key)"
    return ", ".join(c for c in rule.column.split(",") if c not in HELPERS)


def _fmt(value: Any) -> str:
    value = _clean(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        text = json.dumps(value, default=str)
        return text if len(text) <= 300 else text[:297] + "..."
    return str(value)


def _e(value: Any) -> str:
    return html.escape(str(value))


def render_validation_html(report) -> str:
    rules = sorted(report.rules, key=lambda r: (r.success, r.level, r.rule, r.column))
    rows = []
    for r in rules:
        rows.append(
            f"<tr class={'ok' if r.success else 'bad'}><td>{'pass' if r.success else 'FAIL'}</td>"
            f"<td>{_e(r.rule)}</td><td>{_e(_column(r))}</td><td>{_e(r.level)}</td>"
            f"<td class=n>{_e(_fmt(r.unexpected_count))}</td><td class=n>{_e(_fmt(r.element_count))}</td>"
            f"<td><code>{_e(_fmt(r.observed_value))}</code></td><td class=n>{_e(_fmt(r.limit))}</td>"
            f"<td>{_e(r.error or '')}</td></tr>")
    reasons = "".join(f"<tr><td>{_e(k)}</td><td class=n>{v}</td></tr>"
                      for k, v in sorted(report.reasons.items(), key=lambda kv: -kv[1]))
    counts = [("rows read", report.rows_read or report.input_rows), ("input rows", report.input_rows),
              ("passed rows", report.passed_rows), ("quarantined rows", report.quarantined_rows),
              ("expectations", len(report.rules)),
              ("unsuccessful", sum(not r.success for r in report.rules))]
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>Validation {_e(report.dataset)} {_e(report.ds)}</title><style>{CSS}</style></head><body>",
        f"<h1>Validation of {_e(report.dataset)} features, ds={_e(report.ds)}</h1>",
        "<p class=sub>Great Expectations suite derived from the dataset spec; full result in "
        "<code>result.json</code> beside this page.</p>",
        f"<div class='badge {_e(report.status)}'>{_e(report.status.upper())}</div>",
        f"<p>{_e(report.message)}</p>",
        "<h2>Counts</h2><table>" + "".join(f"<tr><th>{_e(k)}</th><td class=n>{v:,}</td></tr>"
                                            for k, v in counts) + "</table>",
    ]
    drift = render_drift_rows(report.drift, report.drift_history,
                              (report.drift_details or {}).get("note", ""))
    if drift:
        parts.append("<h2>Feature drift</h2>" + drift)
    if reasons:
        parts.append("<h2>Quarantine reasons</h2><table><tr><th>rule:column</th><th>rows</th></tr>"
                     f"{reasons}</table>")
    parts += ["<h2>Expectations</h2><table><tr><th>result</th><th>rule</th><th>column</th><th>level</th>"
              "<th>unexpected</th><th>rows</th><th>observed</th><th>limit</th><th>error</th></tr>",
              "".join(rows), "</table></body></html>"]
    return "\n".join(parts)
