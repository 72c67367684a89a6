"""The validate job: GX suite from the spec, decisions, quarantine, status, passed_rows.

Partitions are small parquet files written in the test's warehouse (pyarrow, so NaN stays NaN
and no Spark job is spent on fixtures; the clean case is written by Spark with
``features_struct``). Expected quarantine rows and reasons are built by the tests themselves,
row by row, not by the code under test.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.core.errors import MissingInputError, NotValidated, ValidationFailed
from jobs.core.manifest import RunManifest, run_job
from jobs.core.tables import DatasetTables
from jobs.core.warehouse import Warehouse, fingerprint
from jobs.validate.rules import KEY_COPIES, REASON, RowCountBounds, build_suite
from jobs.validate.history import row_count_bounds
from jobs.validate.scorable import passed_rows, read_status
from jobs.validate.stage import validate_partition
from schemas.spec import load_spec
from schemas.tables import features_arrow_schema, features_struct, labels_arrow_schema

DS = "2026-03-10"
N = 400


@pytest.fixture(scope="module")
def spec():
    return load_spec("synth")


def good_rows(spec, n: int, seed: int = 0, first_key: int = 0) -> dict[str, list]:
    """Rows that satisfy every rule of ``spec`` (derived from the spec, no column named here)."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {k: list(range(first_key, first_key + n)) for k in spec.key_names}
    for f in spec.dense_features:
        lo = 0.0 if f.min is None else f.min
        hi = lo + 50.0 if f.max is None else min(f.max, lo + 50.0)
        values = rng.uniform(lo, hi, n)
        cols[f.name] = [int(v) for v in values] if f.dtype == "long" else values.tolist()
    for f in spec.categorical_features:
        if f.vocabulary is not None:
            picks = rng.choice(list(f.vocabulary), n)
            cols[f.name] = [int(v) for v in picks] if f.dtype == "long" else picks.tolist()
        else:
            cols[f.name] = [int(v) for v in rng.integers(0, 10**6, n)]
    for a in spec.attributes:
        cols[a.name] = ([int(v) for v in rng.integers(0, 10**6, n)] if a.dtype == "long" else
                        rng.uniform(0, 1, n).tolist() if a.dtype == "double" else
                        [f"a{v}" for v in rng.integers(0, 10**6, n)])
    return {c: cols[c] for c in spec.features_table_columns}


def write_parquet(directory: Path, cols: dict[str, list], schema: pa.Schema) -> None:
    """pyarrow write that keeps NaN as NaN; every field nullable (bad data is not polite)."""
    schema = pa.schema([f.with_nullable(True) for f in schema if f.name in cols] +
                       [pa.field(n, pa.string()) for n in cols if n not in schema.names])
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    table = pa.table({f.name: pa.array(cols[f.name], f.type) for f in schema}, schema=schema)
    pq.write_table(table, directory / "part-00000.parquet")


def features_dir(cfg, spec, ds=DS) -> Path:
    return Warehouse(cfg.warehouse).partition(spec.name, "features", ds)


def write_features(cfg, spec, cols, ds=DS, schema=None) -> None:
    write_parquet(features_dir(cfg, spec, ds), cols, schema or features_arrow_schema(spec))


def run(spark, cfg, spec, ds=DS) -> tuple[RunManifest, object]:
    outcome = run_job("validate", spec.name, ds, lambda: cfg,
                      lambda cfg, run_id: validate_partition(spark, cfg, spec, ds, run_id=run_id))
    if outcome.error is not None:
        raise outcome.error
    return outcome.manifest, outcome.result


def run_failing(spark, cfg, spec, ds=DS) -> tuple[RunManifest, str]:
    cfg.validation.keep_data_docs = False  # the docs are checked once, in the clean case
    outcome = run_job("validate", spec.name, ds, lambda: cfg,
                      lambda cfg, run_id: validate_partition(spark, cfg, spec, ds, run_id=run_id))
    assert isinstance(outcome.error, ValidationFailed), outcome.error
    return outcome.manifest, str(outcome.error)


def assert_failed_cleanly(cfg, spec, manifest, ds=DS) -> None:
    """Failure: status failed, result JSON kept, no quarantine partition, nothing passed on."""
    wh = Warehouse(cfg.warehouse)
    status = read_status(cfg, spec, ds)
    assert status is not None and status.status == "failed"
    assert (wh.partition(spec.name, "validation", ds) / "result.json").is_file()
    assert not wh.partition(spec.name, "quarantine", ds).exists()
    assert manifest.input_rows == manifest.output_rows + manifest.quarantined_rows
    assert manifest.output_rows == 0
    with pytest.raises(NotValidated):
        passed_rows(None, cfg, spec, ds)  # refused before any Spark work


def quarantine_rows(cfg, spec, ds=DS) -> list[tuple]:
    """(key, reason) of the quarantine partition, read with pyarrow."""
    path = Warehouse(cfg.warehouse).partition(spec.name, "quarantine", ds)
    table = pq.read_table(str(path), columns=[spec.key_names[0], "reason"]).to_pylist()
    rows = [(r[spec.key_names[0]], r["reason"]) for r in table]
    return sorted(rows, key=lambda t: (t[0] is not None, t))


# --------------------------------------------------------------------------------------------


def test_clean_partition_passes(spark, job_config, spec):
    cols = good_rows(spec, N, seed=1)
    struct = features_struct(spec)
    rows = list(zip(*(cols[f.name] for f in struct)))
    spark.createDataFrame(rows, schema=features_struct(spec)).coalesce(1).write.mode(
        "overwrite").parquet(str(features_dir(job_config, spec)))

    manifest, report = run(spark, job_config, spec)

    assert report.status == "passed", report.message
    assert (manifest.input_rows, manifest.output_rows, manifest.quarantined_rows) == (N, N, 0)
    # GX: row count, null shares, the rest; + the drift aggregate
    assert 1 <= manifest.details["spark_jobs"] <= 5
    vdir = Warehouse(job_config.warehouse).partition(spec.name, "validation", DS)
    result = json.loads((vdir / "result.json").read_text())
    assert result["success"] is True and result["statistics"]["evaluated_expectations"] > 40
    assert (vdir / "data_docs" / "index.html").is_file()
    pages = list((vdir / "data_docs" / "validations").rglob("*.html"))
    assert len(pages) == 1
    page = " ".join(re.sub(r"<[^>]+>", " ", pages[0].read_text()).split())
    assert "Must have greater than or equal to 100 rows" in page and "x15" in page
    status = read_status(job_config, spec, DS)
    assert (status.status, status.input_rows, status.passed_rows) == ("passed", N, N)
    assert not Warehouse(job_config.warehouse).partition(spec.name, "quarantine", DS).exists()
    assert passed_rows(spark, job_config, spec, DS).count() == N


def test_row_level_failures_are_quarantined_and_reruns_replace(spark, job_config, spec):
    key = spec.key_names[0]
    cols = good_rows(spec, N, seed=2)
    expected: dict[int, str] = {}  # row index -> reason, written by hand

    def bad(i, column, value, reason):
        cols[column][i] = value
        expected[i] = reason

    bad(0, key, None, f"null_key:{key}")
    bad(2, key, cols[key][1], f"duplicate_key:{key}")
    expected[1] = f"duplicate_key:{key}"          # all copies of a duplicated key
    bad(3, "x0", float("nan"), "out_of_range:x0")   # NaN and ±inf are outside every range
    bad(4, "x1", float("inf"), "out_of_range:x1")
    bad(5, "x5", float("-inf"), "out_of_range:x5")
    bad(6, "user_age", 130.0, "out_of_range:user_age")
    bad(7, "platform", "tv", "unknown_category:platform")
    bad(8, "hour", 24, "unknown_category:hour")   # long-typed vocabulary
    cols["x2"][9] = -11.0
    bad(9, "item_category", "cars", "out_of_range:x2;unknown_category:item_category")
    # a range is closed: values exactly on either bound pass, the next double beyond fails
    bounds = {f.name: (f.min, f.max) for f in spec.dense_features}
    for i, (column, side) in enumerate([("x3", 1), ("x4", 0), ("user_age", 1), ("user_age", 0)]):
        cols[column][11 + i] = float(bounds[column][side])
    for i, (column, side) in enumerate([("x6", 1), ("x7", 0), ("x8", 1)]):
        edge = float(bounds[column][side])
        bad(15 + i, column, float(np.nextafter(edge, np.inf if side else -np.inf)), f"out_of_range:{column}")
    write_features(job_config, spec, cols)
    labels = {k: cols[k] for k in spec.key_names} | {t: [1] * N for t in spec.task_names}
    labels["click"][10] = 2
    expected[10] = "label_not_binary:click"
    write_parquet(Warehouse(job_config.warehouse).partition(spec.name, "labels", DS), labels,
                  labels_arrow_schema(spec))
    oracle = sorted(((cols[key][i], r) for i, r in expected.items()),
                    key=lambda t: (t[0] is not None, t))

    manifest, report = run(spark, job_config, spec)

    assert report.status == "quarantined"
    assert quarantine_rows(job_config, spec) == oracle
    q = len(expected)
    assert (manifest.input_rows, manifest.output_rows, manifest.quarantined_rows) == (N, N - q, q)
    assert manifest.input_rows == manifest.output_rows + manifest.quarantined_rows
    assert report.message.startswith(f"validation quarantined {q} of {N} rows (")
    for rule in ("null_key:impression_id 1", "duplicate_key:impression_id 2",
                 "out_of_range:x0 1", "out_of_range:x1 1", "out_of_range:x5 1",  # GX: NaN/inf
                 "out_of_range:user_age 1", "out_of_range:x2 1", "unknown_category:platform 1",
                 "unknown_category:hour 1", "unknown_category:item_category 1",
                 "label_not_binary:click 1", "out_of_range:x6 1", "out_of_range:x7 1",
                 "out_of_range:x8 1"):
        assert rule in report.message, report.message
    for on_bound in ("x3", "x4"):                 # GX agrees the bounds are inclusive
        assert f"out_of_range:{on_bound}" not in report.message, report.message
    assert report.reasons == Counter(r for reasons in expected.values()
                                     for r in reasons.split(";"))
    quarantine_path = Warehouse(job_config.warehouse).partition(spec.name, "quarantine", DS)
    schema = pq.read_schema(next(quarantine_path.glob("*.parquet")))
    assert schema.names == spec.features_table_columns + ["reason"]
    assert KEY_COPIES not in schema.names and REASON not in schema.names
    status = read_status(job_config, spec, DS)
    assert (status.status, status.passed_rows, status.quarantined_rows) == (
        "quarantined", N - q, q)

    passed = passed_rows(spark, job_config, spec, DS)
    passed_keys = Counter(r[key] for r in passed.select(key).collect())
    assert passed_keys == Counter(cols[key][i] for i in range(N) if i not in expected)

    # rerun: the same quarantine table, not twice as much
    job_config.validation.keep_data_docs = False
    manifest2, _ = run(spark, job_config, spec)
    assert quarantine_rows(job_config, spec) == oracle
    assert (manifest2.output_rows, manifest2.quarantined_rows) == (N - q, q)

    # the same bad rows under on_bad_rows=fail: failed, and the earlier quarantine is gone
    job_config.validation.on_bad_rows = "fail"
    manifest3, message = run_failing(spark, job_config, spec)
    assert f"{q} of {N} rows break row-level rules and validation.on_bad_rows is 'fail'" in message
    assert "unknown_category:platform 1" in message
    assert_failed_cleanly(job_config, spec, manifest3)


def test_gx_results_equal_without_its_unexpected_values_queries(spark, job_config, spec,
                                                                monkeypatch):
    """jobs/validate/gx.py drops GX's per-expectation ``unexpected_values`` query (asked for 0
    values). Oracle: the same partition validated by GX as shipped (its own dependencies put
    back): every result equal but for the empty ``partial_unexpected_list``."""
    from jobs.validate.gx import GX_DEPENDENCIES

    cols = good_rows(spec, N, seed=4)
    cols["x0"][3] = float("nan")
    cols["platform"][5] = "tv"
    cols["user_age"][7] = None
    write_features(job_config, spec, cols)
    job_config.validation.keep_data_docs = False
    job_config.drift.enabled = False
    result_json = Warehouse(job_config.warehouse).partition(spec.name, "validation", DS) / "result.json"

    def results() -> list[dict]:
        validate_partition(spark, job_config, spec, DS)
        return [{"type": r["expectation_config"]["type"],
                 "kwargs": r["expectation_config"]["kwargs"], "success": r["success"],
                 "result": r["result"]} for r in json.loads(result_json.read_text())["results"]]

    ours = results()
    with monkeypatch.context() as m:
        for cls, original in GX_DEPENDENCIES.items():
            m.setattr(cls, "get_validation_dependencies", original)
        shipped = results()
    assert len(GX_DEPENDENCIES) == 3 and len(ours) == len(shipped) > 50
    listed = [r for r in shipped if "partial_unexpected_list" in r["result"]]
    assert len(listed) > 20 and all(r["result"]["partial_unexpected_list"] == [] for r in listed)
    assert not [r for r in ours if "partial_unexpected_list" in r["result"]]
    for r in shipped:
        r["result"].pop("partial_unexpected_list", None)
    assert ours == shipped
    assert sum((r["result"].get("unexpected_count") or 0) > 0 for r in ours) >= 2  # bad rows seen


def test_too_many_bad_rows_fail_the_partition(spark, job_config, spec):
    cols = good_rows(spec, N, seed=4)
    for i in range(32):                       # 8 % > max_bad_row_fraction 5 %
        cols["x3"][i] = 10.5
    write_features(job_config, spec, cols)
    job_config.validation.max_bad_row_fraction = 0.05

    manifest, message = run_failing(spark, job_config, spec)

    assert message.startswith("validation failed: bad row fraction 0.08 > "
                              "validation.max_bad_row_fraction 0.05"), message
    assert "(32 of 400 rows: out_of_range:x3 32)" in message
    assert_failed_cleanly(job_config, spec, manifest)


@pytest.mark.parametrize("change, expected", [
    ("drop", "validation failed: missing column 'x7'"),
    ("retype", "validation failed: column 'user_age' has type StringType, expected DoubleType"),
])
def test_schema_failures(spark, job_config, spec, change, expected):
    cols = good_rows(spec, 150, seed=6)
    schema = features_arrow_schema(spec)
    if change == "drop":
        del cols["x7"]
    else:
        cols["user_age"] = [str(v) for v in cols["user_age"]]
        schema = schema.set(schema.get_field_index("user_age"), pa.field("user_age", pa.string()))
    write_features(job_config, spec, cols, schema=schema)

    manifest, message = run_failing(spark, job_config, spec)

    assert message.startswith(expected), message
    assert manifest.details["spark_jobs"] == 0  # schema rules need no Spark job
    assert_failed_cleanly(job_config, spec, manifest)


def test_empty_partition_fails(spark, job_config, spec):
    write_features(job_config, spec, {k: [] for k in good_rows(spec, 1)})

    manifest, message = run_failing(spark, job_config, spec)

    assert message.startswith("validation failed: partition is empty (0 rows; "
                              "row_count.min_rows 100)"), message
    assert_failed_cleanly(job_config, spec, manifest)


def test_null_fraction_over_limit_fails(spark, job_config, spec):
    cols = good_rows(spec, N, seed=7)
    for i in range(0, N, 3):                   # 134 of 400 = 0.335 > user_age's 0.2
        cols["user_age"][i] = None
    write_features(job_config, spec, cols)

    manifest, message = run_failing(spark, job_config, spec)

    assert message.startswith("validation failed: column 'user_age' null fraction 0.34 > 0.20 "
                              "(134 of 400 rows)"), message
    assert_failed_cleanly(job_config, spec, manifest)


def test_row_count_against_trailing_median(spark, job_config, spec):
    wh = DatasetTables(job_config, spec.name)  # the tables of the job config
    for i, (day, n) in enumerate([("2026-03-06", 150), ("2026-03-07", 999),
                                  ("2026-03-08", 160), ("2026-03-09", 170)]):
        write_features(job_config, spec, good_rows(spec, n, seed=10 + i), ds=day)
    policy = spec.row_count
    bounds = row_count_bounds(wh, spec, DS)
    median = 165.0  # of the previous 4 partitions (trailing_partitions is 7)
    assert bounds == RowCountBounds(
        min_rows=max(policy.min_rows, math.ceil(policy.min_ratio_to_median * median)),
        max_rows=int(policy.max_ratio_to_median * median), median=median, trailing=4)
    assert row_count_bounds(wh, spec, "2026-03-06").max_rows is None  # no history yet
    # min_rows out of the way, the ratio bound shows its rounding: 0.5 x 165 = 82.5 -> 83 rows
    # (82 rows are fewer than half the median: rounding down would let them through)
    loose = dataclasses.replace(spec, row_count=dataclasses.replace(policy, min_rows=1))
    assert row_count_bounds(wh, loose, DS) == RowCountBounds(min_rows=83, max_rows=330,
                                                             median=median, trailing=4)

    write_features(job_config, spec, good_rows(spec, 400, seed=20))  # 400 > 2 x 165
    manifest, message = run_failing(spark, job_config, spec)
    assert message.startswith("validation failed: row count 400 > 330 (row_count"), message
    assert_failed_cleanly(job_config, spec, manifest)


def test_missing_partition_and_unvalidated_ds(job_config, spec):
    with pytest.raises(MissingInputError, match="features partition"):
        validate_partition(None, job_config, spec, DS)
    with pytest.raises(NotValidated, match="has not been validated"):
        passed_rows(None, job_config, spec, DS)


def test_features_rewritten_after_validation_are_not_passed(spark, job_config, spec):
    write_features(job_config, spec, good_rows(spec, 150, seed=8))
    vdir = Warehouse(job_config.warehouse).partition(spec.name, "validation", DS)
    vdir.mkdir(parents=True)
    (vdir / "status.json").write_text(json.dumps(
        {"status": "passed", "dataset": spec.name, "ds": DS, "quarantined_rows": 0,
         "features_fingerprint": [["old.parquet", 1]]}))
    with pytest.raises(NotValidated, match="changed after it was validated"):
        passed_rows(spark, job_config, spec, DS)


@pytest.mark.parametrize("name", ["census-group1", "census-group2", "synth"])
def test_suite_is_derived_from_the_spec(name):
    spec = load_spec(name)
    suite = build_suite(spec, RowCountBounds(min_rows=10, max_rows=None), with_labels=True,
                        max_bad_row_fraction=0.05)
    by_rule: dict[str, list] = {}
    for e in suite.expectations:
        by_rule.setdefault(e.meta["rule"], []).append(e)
    typed = spec.features_table_columns + spec.task_names
    assert sorted(e.column for e in by_rule["wrong_type"]) == sorted(typed)
    assert set(by_rule["missing_column"][0].column_set) == set(typed)
    assert sorted(e.column for e in by_rule["out_of_range"]) == sorted(
        f.name for f in spec.dense_features)
    vocab = [f for f in spec.categorical_features if f.vocabulary is not None]
    assert sorted(e.column for e in by_rule.get("unknown_category", []) + by_rule.get(
        "oov_fraction", [])) == sorted(f.name for f in vocab)
    for e in by_rule.get("oov_fraction", []):
        assert e.mostly == pytest.approx(1 - spec.column(e.column).max_oov_fraction)
    hashed = {f.name for f in spec.categorical_features if f.hash_buckets is not None}
    row_level = {e.column for e in suite.expectations if e.meta["level"] == "row"}
    assert not hashed & row_level  # hash-bucket categoricals: type (and null rate) only
    assert {e.column for e in by_rule["label_not_binary"]} == set(spec.task_names)
    assert {e.column for e in by_rule["null_key"]} == set(spec.key_names)
    assert [e.column for e in by_rule["bad_row_fraction"]] == [REASON]


def test_files_that_disagree_on_the_schema_fail(job_config, spec):
    cols = good_rows(spec, 5, seed=9)
    write_features(job_config, spec, cols)
    other = features_arrow_schema(spec)
    other = other.set(other.get_field_index("x0"), pa.field("x0", pa.string()))
    write_parquet(features_dir(job_config, spec) / "more", cols | {"x0": ["a"] * 5}, other)

    manifest, message = run_failing(None, job_config, spec)  # refused before Spark
    assert "disagree on their schema" in message
    assert read_status(job_config, spec, DS).status == "failed"
    assert manifest.input_rows == manifest.output_rows + manifest.quarantined_rows == 0


def test_a_failure_before_gx_is_reused_while_the_features_are_unchanged(spark, job_config, spec):
    """A day refused before GX ran (here: a column the spec does not know) records what it
    decided on, so the backfill's reuse fails it again without another GX run, and a rewrite
    of the features is judged afresh."""
    cols = good_rows(spec, 120, seed=31)
    cols["debug_note"] = ["x"] * 120
    write_features(job_config, spec, cols)
    manifest, message = run_failing(spark, job_config, spec)
    assert "unexpected column 'debug_note'" in message
    stored = read_status(job_config, spec, DS)
    assert stored.features_fingerprint == fingerprint(features_dir(job_config, spec))
    with pytest.raises(ValidationFailed, match="features unchanged since"):
        validate_partition(spark, job_config, spec, DS, reuse_current=True)
    write_features(job_config, spec, good_rows(spec, 120, seed=31))  # fixed upstream
    report = validate_partition(spark, job_config, spec, DS, reuse_current=True)
    assert report.status == "passed" and not report.reused
