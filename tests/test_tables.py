"""Catalog tables (issue 18): the nightly flow on Spark catalog tables in the bundled Hive
metastore (embedded Derby under a temporary directory, tests/conftest.py) gives the same tables
as the same flow on the path layout; reruns replace partitions; bad tables are refused with one
line naming them, nothing written; analysts query metrics and ab_reports with SQL through the
Spark Thrift Server and beeline; ``--warehouse`` URIs.

The oracle of the catalog flow is the path flow, run on the same data with the same models
(its own tests hold it to numpy/sklearn oracles); the catalog tables are read back with plain
``spark.table`` + a filter, never through the code under test."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pyspark
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual
from tiny_models import tiny_model
from typer.testing import CliRunner

from jobs.backfill.stage import backfill_range
from jobs.compare.stage import compare_models
from jobs.core.config import TableMapping, load_config
from jobs.core.drift_table import replace_drift_rows
from jobs.core.errors import ConfigError, MissingInputError, TableError
from jobs.core.warehouse import Warehouse, report_id
from jobs.evaluate.stage import evaluate_partition
from jobs.score.stage import score_partition
from jobs.validate.drift import DriftRow
from jobs.validate.stage import validate_partition
from schemas import load_spec

START, DAYS = "2025-04-01", ["2025-04-01"]
DB = "team18"
# labels: a team's table partitioned by a DATE column named ``day``
MAPPING = {"features": TableMapping(f"{DB}.features"),
           "labels": TableMapping(f"{DB}.labels", "day", "date"),
           "quarantine": TableMapping(f"{DB}.quarantine"),
           "predictions": TableMapping(f"{DB}.predictions"),
           "metrics": TableMapping(f"{DB}.metrics"),
           "ab_reports": TableMapping(f"{DB}.ab_reports")}


def _config(base: Path, tables: dict | None = None):
    cfg = load_config(warehouse=base)
    cfg.spark.master = "local[2]"
    cfg.locks.wait_seconds, cfg.locks.poll_seconds = 60, 0.05
    cfg.validation.keep_data_docs = False
    cfg.evaluation.segments = []
    cfg.compare.replicates = 20
    cfg.tables = {"synth": dict(tables or {})}
    return cfg


def _nightly(spark, cfg, models, backfill: bool) -> dict:
    """validate -> score (direct reader: model a, Spark reader: model b) -> evaluate ->
    compare [-> backfill (everything up to date: skipped)]."""
    spec = load_spec("synth")
    out = {"versions": []}
    for ds in DAYS:
        validate_partition(spark, cfg, spec, ds)
        a = score_partition(spark, cfg, spec, ds, models[0])
        b = score_partition(spark, replace(cfg, scoring=replace(cfg.scoring, reader="spark")),
                            spec, ds, models[1])
        out["readers"] = (a.details["reader"], b.details["reader"])
        out["versions"] = [a.model_version, b.model_version]
        evaluate_partition(spark, cfg, spec, ds)
    out["compare"] = compare_models(spark, cfg, spec, *out["versions"], DAYS[0], DAYS[-1])
    if backfill:
        out["backfill"] = backfill_range(spark, cfg, spec, DAYS[0], DAYS[-1], models[0],
                                         as_of=dt.date(2025, 5, 1))
    return out


def _duplicate_keys(cfg, ds: str) -> None:
    """Rows 1-3 take row 0's key: validation quarantines those 4 rows (the quarantine table,
    the quarantined keys of both readers run on catalog tables too)."""
    part = Warehouse(cfg.warehouse).partition("synth", "features", ds)
    table = pq.read_table(part)
    key = load_spec("synth").key_names[0]
    keys = table.column(key).to_pylist()
    keys[1:4] = [keys[0]] * 3
    table = table.set_column(table.schema.get_field_index(key), table.schema.field(key),
                             pa.array(keys, table.schema.field(key).type))
    for old in part.glob("*.parquet"):
        old.unlink()
    pq.write_table(table, part / "part-00000.parquet")


def _load_team_tables(spark, path_cfg) -> None:
    """A team's existing tables, written with plain Spark (not our code)."""
    wh = Warehouse(path_cfg.warehouse)
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {DB}")
    for ds in DAYS:
        (spark.read.parquet(str(wh.partition("synth", "features", ds))).withColumn("ds", F.lit(ds))
         .write.mode("append").partitionBy("ds").saveAsTable(f"{DB}.features"))
        (spark.read.parquet(str(wh.partition("synth", "labels", ds)))
         .withColumn("day", F.to_date(F.lit(ds)))
         .write.mode("append").partitionBy("day").saveAsTable(f"{DB}.labels"))


@pytest.fixture(scope="module")
def team(spark, tmp_path_factory):
    """The data (path layout) and the team's own tables holding the same rows."""
    from jobs.data.synth import generate_synth

    base = tmp_path_factory.mktemp("tables")
    models = (tiny_model(base / "a", seed=21), tiny_model(base / "b", seed=22))
    path_cfg = _config(base / "path-wh")
    generate_synth(path_cfg, START, len(DAYS), 300, seed=3)
    _duplicate_keys(path_cfg, DAYS[0])
    _load_team_tables(spark, path_cfg)
    return base, path_cfg, models


@pytest.fixture(scope="module")
def flows(spark, team):
    base, path_cfg, models = team
    cat_cfg = _config(base / "cat-wh", MAPPING)
    # the path flow is the oracle (its backfill is tests/test_backfill.py's)
    path = _nightly(spark, path_cfg, models, backfill=False)
    cat = _nightly(spark, cat_cfg, models, backfill=True)
    return path_cfg, cat_cfg, path, cat, models


def _catalog(spark, name, **where):
    frame = spark.table(name)
    for k, v in where.items():
        frame = frame.where(F.col(k) == F.lit(v))
    return frame.drop(*where)


def test_nightly_flow_on_catalog_tables_equals_the_path_layout(spark, flows):
    path_cfg, cat_cfg, path, cat, _ = flows
    wh = Warehouse(path_cfg.warehouse)
    assert path["readers"] == cat["readers"] == ("direct", "spark")
    assert path["versions"] == cat["versions"]
    for ds in DAYS:
        for v in path["versions"]:
            want = spark.read.parquet(str(wh.partition("synth", "predictions", ds, model_version=v)))
            got = _catalog(spark, f"{DB}.predictions", ds=ds, model_version=v)
            assertDataFrameEqual(got.drop("scored_at"), want.drop("scored_at"))
        assertDataFrameEqual(_catalog(spark, f"{DB}.metrics", ds=ds),
                             spark.read.parquet(str(wh.partition("synth", "metrics", ds))))
    rid = report_id(*path["versions"], DAYS[0], DAYS[-1])
    assertDataFrameEqual(_catalog(spark, f"{DB}.ab_reports", report=rid),
                         spark.read.parquet(str(wh.table("synth", "ab_reports") / f"report={rid}")))
    # backfill: the stamps and fingerprints of catalog inputs make every day up to date
    assert [d.status for d in cat["backfill"].days] == ["skipped"] * len(DAYS)
    assert cat["compare"].outputs["ab_reports"] == f"{DB}.ab_reports (report={rid})"
    # nothing of the mapped tables' rows under the catalog flow's warehouse (only side files)
    cat_wh = Warehouse(cat_cfg.warehouse)
    assert [p for t in ("predictions", "metrics", "quarantine", "ab_reports")
            for p in cat_wh.table("synth", t).rglob("*.parquet")] == []


def test_quarantine_partition_on_the_catalog(spark, flows):
    path_cfg, *_ = flows
    wh = Warehouse(path_cfg.warehouse)
    days = [d for d in DAYS if wh.has_partition("synth", "quarantine", d)]
    assert days == [DAYS[0]]
    assert spark.table(f"{DB}.quarantine").count() == 4
    for ds in days:
        assertDataFrameEqual(_catalog(spark, f"{DB}.quarantine", ds=ds),
                             spark.read.parquet(str(wh.partition("synth", "quarantine", ds))))


def _location(spark, name, **part) -> Path:
    """A partition's directory, as the metastore has it (plain SQL, not the code under test)."""
    spec = ", ".join(f"{k}='{v}'" for k, v in part.items())
    rows = spark.sql(f"DESCRIBE TABLE EXTENDED {name} PARTITION ({spec})").collect()
    location = next(r[1] for r in rows if r[0] == "Location")
    return Path(location.removeprefix("file:"))


def test_rerun_replaces_the_catalog_partition(spark, flows):
    """A parquet output's partition is the staged files themselves, registered in the table's
    directory (no copy); a rerun points the partition at its new files and deletes the old."""
    _, cat_cfg, _, cat, models = flows
    spec = load_spec("synth")
    v = cat["versions"][0]
    def rows():
        return _catalog(spark, f"{DB}.predictions", ds=DAYS[0], model_version=v).drop("scored_at")

    before = rows().collect()
    old = _location(spark, f"{DB}.predictions", ds=DAYS[0], model_version=v)
    assert old.parent.name == "_mmoe_partitions" and list(old.glob("*.parquet"))
    score_partition(spark, cat_cfg, spec, DAYS[0], models[0])
    new = _location(spark, f"{DB}.predictions", ds=DAYS[0], model_version=v)
    assert new != old and new.parent == old.parent and not old.exists()
    assertDataFrameEqual(rows(), before)
    # the other version's partition of the day is untouched
    assert _catalog(spark, f"{DB}.predictions", ds=DAYS[0],
                    model_version=cat["versions"][1]).count() == len(before)
    # metrics of one version re-evaluated: the other version's rows are kept, none doubled
    n = _catalog(spark, f"{DB}.metrics", ds=DAYS[0]).count()
    evaluate_partition(spark, cat_cfg, spec, DAYS[0], [v])
    assert _catalog(spark, f"{DB}.metrics", ds=DAYS[0]).count() == n


def test_drift_on_the_catalog_keeps_each_writers_rows(spark, tmp_path):
    """The drift table's two writers (validate: feature rows, score: one version's rows) on a
    catalog table: each rerun replaces only its own rows, as on the path layout."""
    cfg = _config(tmp_path / "wh", {"drift": TableMapping(f"{DB}.drift")})
    ds = "2025-04-20"

    def rows(feature, value):
        return [DriftRow(feature, "psi", value, 0.2, value > 0.2, "trailing", 7)]

    replace_drift_rows(cfg, "synth", ds, rows("x0", 0.1))
    replace_drift_rows(cfg, "synth", ds, rows("p_click", 0.3), model_version="v1")
    where = replace_drift_rows(cfg, "synth", ds, rows("x1", 0.05))  # validate's rerun
    assert where == f"{DB}.drift (ds={ds})"
    got = sorted((r["feature"], r["model_version"], r["value"], r["drifted"])
                 for r in _catalog(spark, f"{DB}.drift", ds=ds).collect())
    assert got == [("p_click", "v1", 0.3, True), ("x1", None, 0.05, False)]
    assert list(Warehouse(cfg.warehouse).table("synth", "drift").rglob("*.parquet")) == []


def test_removing_a_catalog_partition_drops_it_and_keeps_the_others(spark, tmp_path):
    """What validate does on a clean rerun of a day it once quarantined rows of: the catalog
    partition goes (plain SHOW PARTITIONS and spark.table no longer see it, so no stale
    quarantine is read back), the other days stay; removing a missing one is a no-op."""
    from jobs.core.tables import table

    name = f"{DB}.quarantine_removed"
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {DB}")
    (spark.createDataFrame([(1, "dup", "2025-04-01"), (2, "dup", "2025-04-01"),
                            (3, "oov", "2025-04-02")], "impression_id long, reason string, ds string")
     .write.mode("overwrite").partitionBy("ds").saveAsTable(name))
    quarantine = table(_config(tmp_path / "wh", {"quarantine": TableMapping(name)}), "synth",
                       "quarantine", spark)
    quarantine.remove("2025-04-01")
    quarantine.remove("2025-04-09")
    partitions = [r[0] for r in spark.sql(f"SHOW PARTITIONS {name}").collect()]
    assert partitions == ["ds=2025-04-02"]
    spark.catalog.refreshTable(name)
    assert [(r["impression_id"], r["ds"]) for r in spark.table(name).collect()] == [(3, "2025-04-02")]


def test_users_and_items_tables_are_read_as_of_the_day(spark, tmp_path):
    """A catalog users table partitioned by ds is read at the latest snapshot on or before the
    day (a date-typed partition column too); one without partitions is read whole, flagged as
    not point-in-time; a day before the first snapshot is refused naming the table."""
    from jobs.core.tables import table

    spark.sql(f"CREATE DATABASE IF NOT EXISTS {DB}")
    rows = [(1, 10, "2025-04-01"), (2, 10, "2025-04-01"), (1, 30, "2025-04-05")]
    (spark.createDataFrame(rows, "user_id long, user_activity long, ds string")
     .withColumn("ds", F.to_date("ds")).write.mode("overwrite").partitionBy("ds")
     .saveAsTable(f"{DB}.users_snapshots"))
    spark.createDataFrame([(7, 3)], "item_id long, item_popularity long") \
        .write.mode("overwrite").saveAsTable(f"{DB}.items_whole")
    cfg = _config(tmp_path / "wh", {"users": TableMapping(f"{DB}.users_snapshots", "ds", "date"),
                                    "items": TableMapping(f"{DB}.items_whole")})
    users, items = table(cfg, "synth", "users", spark), table(cfg, "synth", "items", spark)
    seen = {}
    for day in ("2025-04-01", "2025-04-04", "2025-04-05", "2025-05-01"):
        snapshot = users.as_of(day)
        seen[day] = (snapshot.ds, sorted(tuple(r) for r in users.read(spark, snapshot.ds)
                                         .collect()))
    assert seen == {"2025-04-01": ("2025-04-01", [(1, 10), (2, 10)]),
                    "2025-04-04": ("2025-04-01", [(1, 10), (2, 10)]),
                    "2025-04-05": ("2025-04-05", [(1, 30)]),
                    "2025-05-01": ("2025-04-05", [(1, 30)])}
    with pytest.raises(MissingInputError, match="^synth users: no snapshot on or before "
                                                "2025-03-31 in .*the first is 2025-04-01"):
        users.as_of("2025-03-31")
    whole = items.as_of("2025-04-04")
    assert whole.ds is None and "not point-in-time" in whole.warning
    assert [tuple(r) for r in items.read(spark, whole.ds).collect()] == [(7, 3)]


@pytest.mark.parametrize("case, registered", [("hive-parquet", True), ("date-partition", True),
                                              ("float-column", False), ("orc-table", False)])
def test_an_output_table_gets_the_staged_files_registered_or_inserted(spark, flows, case,
                                                                      registered):
    """A Hive parquet table, or one partitioned by a DATE column of its own name, takes the
    staged files as they are (registered in its directory). Where Spark would not read them as
    the table's own (a column of another type, a table in another format), Spark inserts the
    rows: cast to the table's types, in its format, in the partition's usual directory."""
    _, cat_cfg, _, cat, models = flows
    name, v = f"{DB}.predictions_{case.replace('-', '_')}", cat["versions"][0]
    day, mapping = ("day", TableMapping(name, "day", "date")) if case == "date-partition" \
        else ("ds", TableMapping(name))
    schema = spark.table(f"{DB}.predictions").schema
    data = [f for f in schema.fields if f.name not in ("ds", "model_version")]
    cols = ", ".join(f"`{f.name}` " + ("FLOAT" if f.name == "p_click" and case == "float-column"
                                      else f.dataType.simpleString()) for f in data)
    if case == "hive-parquet":
        spark.sql(f"CREATE TABLE {name} ({cols}) STORED AS PARQUET "
                  f"PARTITIONED BY (ds STRING, model_version STRING)")
    else:
        fmt = "orc" if case == "orc-table" else "parquet"
        dtype = "DATE" if day == "day" else "STRING"
        spark.sql(f"CREATE TABLE {name} ({cols}, {day} {dtype}, model_version STRING) "
                  f"USING {fmt} PARTITIONED BY ({day}, model_version)")
    cfg = replace(cat_cfg, tables={"synth": {**MAPPING, "predictions": mapping}})
    for _ in range(2):  # the second run replaces the first's partition
        score_partition(spark, cfg, load_spec("synth"), DAYS[0], models[0])
    want = _catalog(spark, f"{DB}.predictions", ds=DAYS[0], model_version=v)
    got = _catalog(spark, name, **{day: DAYS[0]}, model_version=v)
    assert dict(got.dtypes)["p_click"] == ("float" if case == "float-column" else "double")
    assertDataFrameEqual(got.drop("scored_at"),
                         want.drop("scored_at").withColumn("p_click", F.col("p_click")
                                                           .cast(dict(got.dtypes)["p_click"])))
    where = _location(spark, name, **{day: DAYS[0]}, model_version=v)
    assert ("_mmoe_partitions" in where.parts) == registered
    if registered:  # the first run's directory is gone
        assert [p.name for p in where.parent.iterdir()] == [where.name]
    else:
        assert where.name == f"model_version={v}"


def test_a_stray_file_among_the_staged_ones_gets_the_rows_inserted(spark, tmp_path):
    """A non-parquet file staged beside the rows (a README) would be read as data of a
    registered partition: those rows are inserted instead, and the file is not data."""
    from jobs.core.tables import table

    cfg = _config(tmp_path / "wh", {"metrics": TableMapping(f"{DB}.stray_metrics")})
    rows = pa.table({"metric": ["auc", "logloss"], "value": [0.71, 0.52]})
    for ds, stray in (("2025-04-02", False), ("2025-04-03", True)):
        with table(cfg, "synth", "metrics", spark).writing(spark, ds) as staged:
            staged.dir.mkdir(parents=True)
            pq.write_table(rows, staged.dir / "part-00000.parquet")
            if stray:
                (staged.dir / "README.txt").write_text("not data")
        got = _catalog(spark, f"{DB}.stray_metrics", ds=ds)
        assertDataFrameEqual(got, spark.createDataFrame(rows.to_pandas()))
        where = _location(spark, f"{DB}.stray_metrics", ds=ds)
        assert ("_mmoe_partitions" in where.parts) == (not stray)
        assert not list(where.glob("*.txt"))


# --------------------------------------------------------------------------------------------
# Bad tables: one line naming the table, nothing written


def _bad(tmp_path, tables):
    return _config(tmp_path / "wh", {**MAPPING, **tables})


def _nothing_written(cfg, ds):
    wh = Warehouse(cfg.warehouse)
    return not (wh.status_path("synth", ds).exists()
                or any(wh.table("synth", t).exists() for t in ("predictions", "metrics")))


@pytest.mark.parametrize("case", ["missing-table", "wrong-partition-name", "wrong-partition-type"])
def test_a_bad_input_table_is_refused_naming_it(spark, team, tmp_path, case):
    spec = load_spec("synth")
    if case == "missing-table":
        tables, message = {"features": TableMapping(f"{DB}.nosuch")}, \
            f"catalog table {DB}.nosuch does not exist"
    elif case == "wrong-partition-name":  # the labels table is partitioned by ``day``
        tables, message = {"features": TableMapping(f"{DB}.labels")}, \
            f"{DB}.labels is partitioned by (day), expected (ds)"
    else:
        tables, message = {"labels": TableMapping(f"{DB}.labels", "day", "string")}, \
            f"{DB}.labels's partition column day is date, expected string"
    cfg = _bad(tmp_path, tables)
    with pytest.raises(TableError) as err:
        validate_partition(spark, cfg, spec, DAYS[0])
    assert message in str(err.value) and "\n" not in str(err.value)
    assert _nothing_written(cfg, DAYS[0])


def test_a_missing_partition_is_refused_naming_the_table(spark, team, tmp_path):
    cfg = _bad(tmp_path, {})
    with pytest.raises(MissingInputError, match=rf"{DB}\.features \(ds=2025-05-09\) is missing"):
        validate_partition(spark, cfg, load_spec("synth"), "2025-05-09")
    assert _nothing_written(cfg, "2025-05-09")


def test_an_output_table_disagreeing_with_the_spec_is_refused_nothing_written(spark, flows, tmp_path):
    _, cat_cfg, _, _, models = flows
    spark.sql(f"CREATE TABLE IF NOT EXISTS {DB}.bad_predictions (user_id BIGINT, p_click DOUBLE, "
              f"ds STRING, model_version STRING) USING parquet PARTITIONED BY (ds, model_version)")
    cfg = replace(cat_cfg, tables={"synth": {**MAPPING, "predictions": TableMapping(
        f"{DB}.bad_predictions")}})
    with pytest.raises(TableError, match=rf"{DB}\.bad_predictions's columns disagree with the spec"):
        score_partition(spark, cfg, load_spec("synth"), DAYS[0], models[0])
    assert spark.table(f"{DB}.bad_predictions").count() == 0


# --------------------------------------------------------------------------------------------
# SQL for analysts: the Thrift server over the same metastore, queried with beeline


def test_analysts_query_metrics_and_ab_reports_through_jdbc(spark, flows, tmp_path):
    """Embedded Derby admits one JVM: the server runs inside this session's JVM
    (``HiveThriftServer2.startWithContext``, over the same metastore), beeline is a separate
    client JVM. Port 0 and the loopback bind host are session settings given at the session's
    start (``spark.hadoop.hive.server2.thrift.*``, tests/conftest.py: set later, through
    ``spark.conf.set`` or JVM system properties, they never reach the server, which then
    listens on ``*:10000``); the bound port is read back from the binary Thrift service."""

    _, _, _, cat, _ = flows
    server = spark._jvm.org.apache.spark.sql.hive.thriftserver.HiveThriftServer2 \
        .startWithContext(spark._jsparkSession.sqlContext())
    try:
        port = max([svc.getPortNumber() for svc in server.getServices()
                    if svc.getClass().getSimpleName() == "ThriftBinaryCLIService"] or [0])
        assert port and port != 10000, f"the Thrift server bound port {port}"
        if shutil.which("ss"):  # iproute2: the listening socket is on loopback only
            listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"],
                                       capture_output=True, text=True).stdout
            local = listening.split()[3]  # State Recv-Q Send-Q Local Peer
            assert local.rsplit(":", 1)[0].strip("[]").endswith("127.0.0.1"), listening
        spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
        query = (f"SELECT COUNT(*) AS n FROM {DB}.metrics WHERE ds = '{DAYS[0]}' "
                 f"AND metric = 'auc';"
                 f"SELECT COUNT(*) AS n FROM {DB}.ab_reports;")
        env = {**os.environ, "SPARK_HOME": str(Path(pyspark.__file__).parent)}
        done = subprocess.run([str(spark_class), "org.apache.hive.beeline.BeeLine", "-u",
                               f"jdbc:hive2://127.0.0.1:{port}", "--outputformat=csv2",
                               "--showHeader=false", "--silent=true", "-e", query],
                              capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        lines = [line for line in done.stdout.splitlines() if line.strip().isdigit()]
        want_auc = _catalog(spark, f"{DB}.metrics", ds=DAYS[0]).where("metric = 'auc'").count()
        want_ab = spark.table(f"{DB}.ab_reports").count()
        assert [int(x) for x in lines] == [want_auc, want_ab], done.stdout
        assert want_auc > 0 and want_ab == len(cat["compare"].report)
    finally:
        server.stop()
    assert not (Path.cwd() / "metastore_db").exists() and not (Path.cwd() / "derby.log").exists()


# --------------------------------------------------------------------------------------------
# Filesystem URIs


def test_warehouse_uris(tmp_path, monkeypatch):
    from jobs.cli import app

    monkeypatch.chdir(tmp_path)
    assert load_config(warehouse=f"file://{tmp_path}/wh").warehouse == tmp_path / "wh"
    runner = CliRunner()
    for uri, message in (("nosuchfs://x/wh", "unknown filesystem scheme 'nosuchfs'"),
                         ("hdfs://nn:8020/wh", "scheme 'hdfs' cannot hold the warehouse"),
                         ("file://host/x/wh", "names a local path (file:///dir), not host")):
        result = runner.invoke(app, ["--warehouse", uri, "validate", "--dataset", "synth",
                                     "--ds", DAYS[0]])
        assert result.exit_code == 2 and message in result.stderr.strip().splitlines()[-1]
    result = runner.invoke(app, ["--warehouse", f"file://{tmp_path}/wh2", "validate",
                                 "--dataset", "synth", "--ds", DAYS[0]])
    assert result.exit_code != 0 and f"{tmp_path}/wh2/synth/features" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wh2"]  # never a "file:" directory
    with pytest.raises(ConfigError, match="unknown table"):
        from jobs.core.config import parse_tables
        parse_tables({"synth": {"nosuch": "db.t"}})
