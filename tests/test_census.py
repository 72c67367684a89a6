"""Census ingest against independent facts: the file's own lines, read with plain Python gzip."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from jobs.cli import app
from jobs.core.config import load_config
from jobs.core.errors import InputError
from jobs.core.warehouse import Warehouse
from jobs.data.census import ingest_census
from schemas.spec import load_spec
from schemas.tables import (
    features_arrow_schema,
    features_struct,
    labels_arrow_schema,
    labels_struct,
)

DS = "2026-01-05"
GROUPS = ("census-group1", "census-group2")


def _raw_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return fh.read().splitlines()


@pytest.fixture(scope="module")
def raw_lines(census_file) -> list[str]:
    return _raw_lines(census_file)


@pytest.fixture(scope="module")
def ingested(spark, census_file, raw_lines, tmp_path_factory):
    """Ingest a 100-line head first, then the whole file for the same ds: the second run must
    replace the first one's partitions (one Spark ingest of the full file per module)."""
    root = tmp_path_factory.mktemp("census")
    cfg = load_config(warehouse=root / "wh")
    head = root / "head.data"
    head.write_text("\n".join(raw_lines[:100]) + "\n")
    first = ingest_census(spark, cfg, head, DS).written
    # the whole file through the CLI, in process (the same session): its manifest as printed
    out = CliRunner().invoke(app, ["--warehouse", str(cfg.warehouse), "data", "census",
                                   "--input", str(census_file), "--ds", DS])
    assert out.exit_code == 0, out.output
    manifest = json.loads(out.stdout.strip().splitlines()[-1])
    result = {name: info["rows"] for name, info in manifest["details"]["datasets"].items()}
    return {"cfg": cfg, "wh": Warehouse(cfg.warehouse), "first": first, "result": result,
            "manifest": manifest}


def _oracle_positives(lines: list[str], spec) -> dict[str, int]:
    """Positives per task straight from the raw text: the field at the source column's position,
    stripped, with the income label's trailing '.' removed."""
    columns = spec.source["columns"]
    counts = {}
    for task in spec.tasks:
        idx = columns.index(task.source)
        wanted = set(task.positive)
        n = 0
        for line in lines:
            value = line.split(",")[idx].strip()
            if idx == len(columns) - 1:
                value = value.rstrip(".")
            n += value in wanted
        counts[task.name] = n
    return counts


def test_counts_and_positives(spark, ingested, raw_lines):
    assert len(raw_lines) == 66508
    assert ingested["first"] == {g: 100 for g in GROUPS}
    assert ingested["result"] == {g: 66508 for g in GROUPS}
    wh = ingested["wh"]
    for name in GROUPS:
        spec = load_spec(name)
        feats = spark.read.parquet(str(wh.partition(name, "features", DS)))
        labels = spark.read.parquet(str(wh.partition(name, "labels", DS)))
        stats = feats.selectExpr("count(*) AS n", "count(DISTINCT row_id) AS d",
                                 "min(row_id) AS lo", "max(row_id) AS hi").first()
        # the rerun replaced the 100-row head: no duplicates, ids are exactly the line numbers
        assert tuple(stats) == (66508, 66508, 0, 66507)
        sums = labels.selectExpr("count(*) AS n",
                                 *[f"sum({t}) AS {t}" for t in spec.task_names]).first()
        assert sums["n"] == 66508
        oracle = _oracle_positives(raw_lines, spec)
        assert {t: sums[t] for t in spec.task_names} == oracle
        assert ingested["manifest"]["details"]["datasets"][name]["positives"] == oracle
    # the published facts about this file (README / brief)
    g1 = _oracle_positives(raw_lines, load_spec("census-group1"))
    assert g1 == {"income": 4101, "never_married": 28722}
    m = ingested["manifest"]
    assert m["input_rows"] == 66508 and m["output_rows"] == 66508
    assert set(m["outputs"]) == {f"{g}/{t}" for g in GROUPS for t in ("features", "labels")}


def test_manifest_is_kept_beside_both_data_sets(ingested):
    """The ingest writes two data sets, and its manifest is in each one's _runs/ (there is no
    "census" data set to keep it in)."""
    wh, m = ingested["wh"], ingested["manifest"]
    copies = [wh.runs_dir(name) / Path(m["manifest_path"]).name for name in GROUPS]
    assert Path(m["manifest_path"]) == copies[0]
    for copy in copies:
        assert json.loads(copy.read_text()) == m
    assert not (Path(wh.root) / "census").exists()


def test_schemas_and_excluded_columns(spark, ingested):
    wh = ingested["wh"]
    for name in GROUPS:
        spec = load_spec(name)
        for table, struct, arrow in (("features", features_struct(spec), features_arrow_schema(spec)),
                                     ("labels", labels_struct(spec), labels_arrow_schema(spec))):
            part = wh.partition(name, table, DS)
            read = spark.read.parquet(str(part)).schema
            assert [(f.name, f.dataType) for f in read.fields] == \
                   [(f.name, f.dataType) for f in struct.fields]
            files = sorted(part.glob("*.parquet"))
            assert files
            assert pq.read_schema(files[0]).remove_metadata() == arrow
        cols = set(features_struct(spec).fieldNames())
        assert "instance_weight" not in spec.feature_names and "instance_weight" in cols
        for task in spec.tasks:
            assert task.source not in cols
        assert not {"det_hh_fam_stat", "det_hh_summ", "income_50k"} & cols
    assert "education" not in features_struct(load_spec("census-group2")).fieldNames()
    assert "education" in load_spec("census-group1").feature_names


def test_row_id_is_line_number(spark, ingested, raw_lines):
    """Spot-check whole rows against the raw lines they claim to come from."""
    picks = [0, 1, 2, 777, 33333, 66507]
    for name in GROUPS:
        spec = load_spec(name)
        columns = spec.source["columns"]
        null = spec.source["null_token"]
        struct = features_struct(spec)
        rows = {r["row_id"]: r for r in spark.read.parquet(
            str(ingested["wh"].partition(name, "features", DS))).where(
            f"row_id IN ({','.join(map(str, picks))})").collect()}
        assert sorted(rows) == picks
        for rid in picks:
            fields = raw_lines[rid].split(",")
            for field in struct.fields:
                if field.name == "row_id":
                    continue
                raw = fields[columns.index(field.name)].strip()
                if raw == null:
                    expected = None
                elif field.dataType.simpleString() == "double":
                    expected = float(raw)
                else:
                    expected = raw
                assert rows[rid][field.name] == expected, (name, rid, field.name)
    # row 0 has '?' in the migration columns: they must be nulls, not the token
    assert "?" in raw_lines[0].split(",")[columns.index("mig_chg_msa")]


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_line_is_refused(spark, raw_lines, tmp_path, job_config):
    cfg = job_config
    lines = list(raw_lines[:6])
    lines[3] = lines[3].rsplit(",", 2)[0] + "," + lines[3].rsplit(",", 1)[1]  # one field fewer
    bad = _write_lines(tmp_path / "bad.data", lines)
    with pytest.raises(InputError) as err:
        ingest_census(spark, cfg, bad, DS)
    msg = str(err.value)
    assert "line 4 (row_id 3)" in msg and "41" in msg and "expected 42" in msg and "1 of 6" in msg
    assert not Warehouse(cfg.warehouse).has_partition("census-group1", "features", DS)


def test_non_numeric_and_missing_input_are_refused(spark, raw_lines, tmp_path, job_config):
    cfg = job_config
    lines = list(raw_lines[:4])
    lines[2] = " abc" + lines[2][lines[2].index(","):]  # age is not a number
    bad = _write_lines(tmp_path / "bad_age.data", lines)
    with pytest.raises(InputError, match=r"line 3 \(row_id 2\): column age value 'abc'"):
        ingest_census(spark, cfg, bad, DS)
    with pytest.raises(InputError, match="does not exist"):
        ingest_census(spark, cfg, tmp_path / "nope.gz", DS)


def test_row_id_is_line_number_across_many_splits(spark, raw_lines, tmp_path, job_config):
    """An uncompressed file read in many small byte-range splits (no RDDs: also over Spark
    Connect): every row_id is still its 0-based line number (checked on whole lines)."""
    from jobs.core.spark import session_conf

    lines = raw_lines[:1500]
    path = _write_lines(tmp_path / "head.data", lines)
    with session_conf(spark, {"spark.sql.files.maxPartitionBytes": "65536",
                              "spark.sql.files.openCostInBytes": "0"}):
        ingest_census(spark, job_config, path, DS)
    spec = load_spec(GROUPS[0])
    columns = spec.source["columns"]
    got = {r["row_id"]: r["age"] for r in spark.read.parquet(str(
        Warehouse(job_config.warehouse).partition(GROUPS[0], "features", DS))).select(
        "row_id", "age").collect()}
    assert sorted(got) == list(range(len(lines)))
    assert path.stat().st_size > 8 * 65536  # really several splits
    for rid, age in got.items():
        assert age == float(lines[rid].split(",")[columns.index("age")]), rid
