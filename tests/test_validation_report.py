"""A day's validation report, opened in headless Chromium as a user would: offline (no request,
no console error), its tables visible, and only real columns in it (no _key_copies / _reason)."""

from __future__ import annotations

import pytest
from browser import visit
from test_validate import N, good_rows, run, write_features

from jobs.validate.rules import KEY_COPIES, REASON
from schemas.spec import load_spec


@pytest.fixture(scope="module")
def spec():
    return load_spec("synth")


def test_validation_report_reads_offline_with_real_columns(spark, job_config, spec, chromium, tmp_path):
    key = spec.key_names[0]
    cols = good_rows(spec, N, seed=5)
    cols[key][2] = cols[key][1]          # a duplicated key
    cols["x3"][4] = 99.0                 # out of range
    write_features(job_config, spec, cols)
    job_config.validation.keep_data_docs = False
    manifest, report = run(spark, job_config, spec)
    assert report.status == "quarantined"
    page = visit(chromium, manifest.outputs["report"])
    (tmp_path / "validation.png").write_bytes(page.screenshot)
    assert page.errors == [] and page.requests == []
    assert page.tables == 3  # counts, quarantine reasons, expectations
    assert "QUARANTINED" in page.text and f"duplicate_key:{key}" in page.text
    assert "out_of_range:x3" in page.text
    assert KEY_COPIES not in page.text and REASON not in page.text
    assert page.screenshot[:4] == b"\x89PNG"
