"""A day's validation report, opened in headless Chromium as a user would: offline (no request,
no console error), its tables visible, only real columns in it (no _key_copies / _reason), numbers
that never wrap, and each rule saying what it expected and what it saw."""

from __future__ import annotations

import re

import pytest
from browser import visit
from test_validate import DS, N, good_rows, run, write_features, write_parquet

from jobs.core.errors import ValidationFailed
from jobs.core.warehouse import Warehouse
from jobs.validate.rules import KEY_COPIES, REASON
from schemas.spec import load_spec
from schemas.tables import labels_arrow_schema

# Per expectations row: its cells' texts; per number cell (class n) its computed white-space and
# whether its text sits on one line (its text's boxes share one top).
ROWS = ("[...document.querySelectorAll('table.rules tr')].slice(1).map(tr =>"
        " [...tr.cells].map(td => td.innerText))")
NUMBER_CELLS = ("[...document.querySelectorAll('td.n, td.num')].map(td => {"
                " const r = document.createRange(); r.selectNodeContents(td);"
                " const lines = new Set([...r.getClientRects()].map(b => Math.round(b.top)));"
                " return [getComputedStyle(td).whiteSpace, lines.size <= 1, td.innerText]; })")
# the same page squeezed into a narrow window: tables scroll, numbers still do not wrap
NARROW = ("(() => { document.body.style.width = '100px'; const cells = " + NUMBER_CELLS
          + "; document.body.style.width = ''; return cells; })()")


@pytest.fixture(scope="module")
def spec():
    return load_spec("synth")


def test_validation_report_reads_offline_with_real_columns(spark, job_config, spec, chromium, tmp_path):
    key = spec.key_names[0]
    cols = good_rows(spec, N, seed=5)
    cols[key][2] = cols[key][1]          # a duplicated key
    cols["x3"][4] = 99.0                 # out of range
    cols["x3"][5] = -12.5                # out of range, the low side
    write_features(job_config, spec, cols)
    # a labels partition without one task: its missing_column row names the labels table
    missing_task = spec.task_names[-1]
    labels = {k: cols[k] for k in spec.key_names} | {t: [1] * N for t in spec.task_names
                                                      if t != missing_task}
    write_parquet(Warehouse(job_config.warehouse).partition(spec.name, "labels", DS),
                  labels, labels_arrow_schema(spec))
    job_config.validation.keep_data_docs = False
    with pytest.raises(ValidationFailed, match=f"missing column '{missing_task}' \\(labels table"):
        run(spark, job_config, spec)
    report_path = Warehouse(job_config.warehouse).partition(spec.name, "validation",
                                                            DS) / "report.html"
    # the page of the failed run, read as text (the browser looks at the next run's page)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in
             report_path.read_text().split("<tr")[1:]]
    missing = {r[2]: r for r in cells if len(r) > 6 and r[1] == "missing_column"}
    assert set(missing) == {"features", "labels"}
    assert missing["labels"][6] == f"missing: {missing_task}" and missing["labels"][0] == "FAIL"
    assert "labels table" in missing["labels"][5] and "features table" in missing["features"][5]
    assert missing["features"][6].startswith("all present")

    # the labels put right: the partition is quarantined, the rules say what they saw
    labels[missing_task] = [0] * N
    write_parquet(Warehouse(job_config.warehouse).partition(spec.name, "labels", DS),
                  labels, labels_arrow_schema(spec))
    manifest, report = run(spark, job_config, spec)
    assert report.status == "quarantined"
    page = visit(chromium, manifest.outputs["report"],
                 {"rows": ROWS, "numbers": NUMBER_CELLS, "narrow": NARROW}, full_page=True)
    (tmp_path / "validation.png").write_bytes(page.screenshot)
    assert page.errors == [] and page.requests == []
    assert page.tables == 3  # counts, quarantine reasons, expectations
    assert "QUARANTINED" in page.text and f"duplicate_key:{key}" in page.text
    assert KEY_COPIES not in page.text and REASON not in page.text
    assert page.screenshot[:4] == b"\x89PNG"

    rows = {(r[1], r[3]): r for r in page.probes["rows"]}
    x3 = spec.column("x3")
    out_of_range = rows[("out_of_range", "x3")]
    assert out_of_range[0] == "FAIL" and out_of_range[2] == "features"
    assert out_of_range[5] == f"finite, in [{x3.min:g}, {x3.max:g}]"
    # observed min/max: an independent oracle, the written values
    lo, hi = min(cols["x3"]), max(cols["x3"])
    assert (lo, hi) == (-12.5, 99.0)
    assert out_of_range[6].startswith(f"min {lo:g}, max {hi:g}")
    assert f"2 of {N:,} (0.50%) rows outside" in out_of_range[6] and out_of_range[7] == "2"
    duplicate = rows[("duplicate_key", key)]
    assert duplicate[6].startswith(f"2 of {N:,}")  # both copies of the key
    binary = rows[("label_not_binary", missing_task)]
    assert binary[2] == "labels" and binary[5] == "in {0, 1}" and binary[0] == "pass"
    row_count = rows[("row_count", "*")]
    assert row_count[6] == f"{N:,} rows" and row_count[5].startswith("rows in [")
    # every rule says what it expects and what it saw
    assert all(r[5] and r[6] for r in page.probes["rows"]), page.probes["rows"]

    # numbers never wrap: white-space nowrap, one line each, also in a narrow window
    for probe in ("numbers", "narrow"):
        cells = page.probes[probe]
        assert cells and all(ws == "nowrap" for ws, _, _ in cells), cells
        assert all(one_line for _, one_line, _ in cells), [c for c in cells if not c[1]]
