"""A day's validation report that reads offline: ``validation/ds=D/report.html``.

GX's Data Docs pull Bootstrap, jQuery and Vega from CDNs, so without network their index lists
no validation and the result pages are unstyled; they also show the helper columns
``_key_copies`` / ``_reason`` as if they were data. This page is ours: one file, inline CSS, no
script, built from the decision (:class:`~jobs.validate.stage.ValidationReport`), and it names
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
"""


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
    if reasons:
        parts.append("<h2>Quarantine reasons</h2><table><tr><th>rule:column</th><th>rows</th></tr>"
                     f"{reasons}</table>")
    parts += ["<h2>Expectations</h2><table><tr><th>result</th><th>rule</th><th>column</th><th>level</th>"
              "<th>unexpected</th><th>rows</th><th>observed</th><th>limit</th><th>error</th></tr>",
              "".join(rows), "</table></body></html>"]
    return "\n".join(parts)
