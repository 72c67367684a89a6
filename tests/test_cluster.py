"""A real Spark standalone cluster (issue 11, item 1): a master and two workers on 127.0.0.1,
started from the installed pyspark (``spark-class``), small memory, free ports. The project is
shipped the way the README tells a user to: a zip of its packages through ``--py-files`` (the
executors' Python is the same interpreter as the driver's: on one machine the venv itself; on a
real cluster an identical environment on every node, or the venv as an archive). validate →
score (both readers) → evaluate run with ``spark-submit --master spark://127.0.0.1:PORT
jobs/submit.py ...`` and their tables must equal a local-mode run of the same commands.

The nightly DAG's SparkSubmit run (`airflow dags test mmoe_nightly`, last test) uses the same
cluster: both live in this file so that one pytest-xdist worker (``--dist loadfile``) starts it
once. The cluster is the session's ``standalone_cluster`` (tests/_cluster.py); every process it
starts is stopped by its pid (and its process group: the executors and Python workers the
workers launched) at the end of the session, and the fixture fails if any is left alive.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml
from _reliability import job_config_file, last_manifest, tiny_model, write_day
from typer.testing import CliRunner

from jobs.cli import app
from jobs.core.shipping import write_project_zip
from jobs.core.warehouse import Warehouse, read_table
from schemas import load_spec

DS_PREV, DS = "2026-06-01", "2026-06-02"
N = 500
KEY = "impression_id"


def _sorted(directory: Path, drop=("scored_at",)):
    table = read_table(directory)
    table = table.drop_columns([c for c in drop if c in table.column_names])
    keys = [c for c in (KEY, "model_version", "task", "segment", "metric") if c in table.column_names]
    return table.sort_by([(c, "ascending") for c in keys])


def _assert_close(got, want, atol=1e-6):
    assert got.column_names == want.column_names and got.num_rows == want.num_rows
    for name in got.column_names:
        a, b = got.column(name).to_pylist(), want.column(name).to_pylist()
        if pa.types.is_floating(got.schema.field(name).type):
            np.testing.assert_allclose(np.array(a, float), np.array(b, float), atol=atol, rtol=0)
        else:
            assert a == b, name


def test_standalone_cluster_matches_local_mode(spark, standalone_cluster, tmp_path):
    spec = load_spec("synth")
    model = tiny_model(tmp_path / "model", spec, seed=5)
    local_wh, cluster_wh = tmp_path / "local" / "wh", tmp_path / "cluster" / "wh"
    for wh in (local_wh, cluster_wh):
        write_day(wh, spec, DS_PREV, n=N, seed=1, first_key=0)
        cols, _ = write_day(wh, spec, DS, n=N, seed=2, first_key=N)
    # a few bad rows, so that the quarantine path (and the quarantined keys) run on executors
    for wh in (local_wh, cluster_wh):
        bad = dict(cols)
        bad["x0"] = list(cols["x0"])
        for i in (3, 30, 300):
            bad["x0"][i] = float("nan")
        write_day(wh, spec, DS, features=bad)
    commands = [["validate", "--dataset", "synth", "--ds", DS],
                ["score", "--dataset", "synth", "--ds", DS, "--model", str(model)],
                ["evaluate", "--dataset", "synth", "--ds", DS]]

    # local mode (the test session)
    config = job_config_file(tmp_path / "local.yaml")
    runner = CliRunner()
    for args in commands:
        result = runner.invoke(app, ["--config", str(config), "--warehouse", str(local_wh), *args])
        assert result.exit_code == 0, (args, result.stderr)
    version = last_manifest(result.stdout)["model_version"]

    cluster = standalone_cluster
    started = time.monotonic()
    # (the shared cluster is stopped, and checked for leftovers, by its fixture)
    zip_path = write_project_zip(tmp_path / "mmoe-project.zip")
    cfg = job_config_file(tmp_path / "cluster-direct.yaml",
                          scoring={"batch_size": 64, "reader": "direct"})
    manifest = cluster.submit(zip_path, cfg, cluster_wh, *commands[0], executors=1)
    assert manifest["quarantined_rows"] == 3
    readers = {}
    # Issue 18, one catalog-table day: the direct reader's run (both executors) scores into a
    # catalog table of the cluster driver's own embedded metastore (one JVM per Derby: not the
    # test session's); the driver registers the executors' staged files as the partition (no
    # copy). The Spark reader's run below writes the path layout, which evaluate then reads.
    # (One submission for both: each costs a driver JVM and two executors.)
    root = tmp_path / "cluster-metastore"
    conf = {**yaml.safe_load(cfg.read_text())["spark"]["conf"],
            "spark.sql.catalogImplementation": "hive",
            "spark.hadoop.javax.jdo.option.ConnectionURL":
                f"jdbc:derby:;databaseName={root / 'metastore_db'};create=true",
            "spark.sql.warehouse.dir": str(root / "spark-warehouse")}
    catalog_cfg = job_config_file(tmp_path / "cluster-catalog.yaml", spark={"conf": conf},
                                  scoring={"batch_size": 64, "reader": "direct"},
                                  tables={"synth": {"predictions": "day18.predictions"}})
    manifest = cluster.submit(zip_path, catalog_cfg, cluster_wh, *commands[1])
    assert manifest["details"]["reader"] == "direct"
    assert manifest["outputs"]["predictions"] == f"day18.predictions (ds={DS}/model_version={version})"
    registered = list((root / "spark-warehouse" / "day18.db" / "predictions" / "_mmoe_partitions")
                      .glob(f"ds={DS}__model_version={version}-*"))
    assert len(registered) == 1
    readers["direct"] = _sorted(registered[0])
    path_layout = Warehouse(cluster_wh).partition("synth", "predictions", DS, model_version=version)
    # the mapped table's rows are not under the path layout (its side files, the stamp, are)
    assert not list(path_layout.rglob("*.parquet"))
    cfg = job_config_file(tmp_path / "cluster-spark.yaml",
                          scoring={"batch_size": 64, "reader": "spark"})
    manifest = cluster.submit(zip_path, cfg, cluster_wh, *commands[1])
    assert manifest["details"]["reader"] == "spark"
    readers["spark"] = _sorted(path_layout)
    evaluated = cluster.submit(zip_path, cfg, cluster_wh, *commands[2], executors=1)
    assert evaluated["status"] == "succeeded"
    # A failure under spark-submit: Spark's PythonRunner merges the driver's stderr into
    # its stdout, so the error line comes just before the manifest, which stays last.
    failed = cluster.submit(zip_path, cfg, cluster_wh, "evaluate", "--dataset", "synth",
                            "--ds", "2026-02-30", ok=False, executors=1)
    assert failed.returncode == 2, failed.stdout[-2000:]
    lines = failed.stdout.strip().splitlines()
    assert last_manifest(failed.stdout)["status"] == "failed"
    assert lines[-2].startswith("error: ") and "is not a valid date" in lines[-2]
    seconds = time.monotonic() - started

    local, remote = Warehouse(local_wh), Warehouse(cluster_wh)
    want = _sorted(local.partition("synth", "predictions", DS, model_version=version))
    for reader, got in readers.items():
        _assert_close(got, want)
    _assert_close(_sorted(remote.partition("synth", "quarantine", DS)),
                  _sorted(local.partition("synth", "quarantine", DS)))
    _assert_close(_sorted(remote.partition("synth", "metrics", DS)),
                  _sorted(local.partition("synth", "metrics", DS)), atol=1e-9)
    for wh in (local, remote):
        status = json.loads(wh.status_path("synth", DS).read_text())
        assert (status["status"], status["passed_rows"], status["quarantined_rows"]) == \
            ("quarantined", N - 3, 3)
    print(f"cluster part of the test: {seconds:.1f}s")

# The team's tables of the DAG test: loaded by one plain-pyspark process, read back by another
# (``spark.table`` + a filter: not the code under test). One JVM at a time opens the metastore.
_LOAD = """
import sys
from pyspark.sql import SparkSession
conf, src, db, loads = eval(sys.argv[1])
b = SparkSession.builder.master("local[1]")
for k, v in conf.items():
    b = b.config(k, v)
spark = b.config("spark.sql.sources.partitionColumnTypeInference.enabled", "false") \\
    .enableHiveSupport().getOrCreate()
spark.sql(f"CREATE DATABASE IF NOT EXISTS {db}")
for table, days, partitions in loads:
    frame = spark.read.option("basePath", f"{src}/synth/{table}").parquet(
        *[f"{src}/synth/{table}/ds={d}" for d in days])
    frame.write.mode("overwrite").partitionBy(*partitions).saveAsTable(f"{db}.{table}")
spark.stop()
"""

_READ = """
import json, sys
from pyspark.sql import SparkSession
conf, db = eval(sys.argv[1])
b = SparkSession.builder.master("local[1]")
for k, v in conf.items():
    b = b.config(k, v)
spark = b.enableHiveSupport().getOrCreate()
out = {}
for table in ("predictions", "metrics"):
    rows = spark.table(f"{db}.{table}").groupBy("ds", "model_version").count().collect()
    out[table] = sorted([r["ds"], r["model_version"], r["count"]] for r in rows)
out["auc_rows"] = spark.table(f"{db}.metrics").where("metric = 'auc'").count()
print(json.dumps(out))
spark.stop()
"""


def _pyspark(script: str, args, env) -> str:
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", script, repr(args)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_nightly_dag_end_to_end_on_catalog_tables_with_a_champion_and_a_challenger(
        spark, standalone_cluster, tmp_path):
    """Fresh SQLite AIRFLOW_HOME, `airflow db migrate`, two registered models, then `airflow
    dags test mmoe_nightly 2026-06-05` (ds 2026-06-03; labels wait 1 day, so the matured day
    is 2026-06-02, which earlier nights scored): the real jobs leave both models' predictions
    for ds and both models' metrics for the matured day, and nothing else, and compare the
    mmoe_compare_days (2) days ending at the matured day.

    Features, labels, predictions and metrics are all tables of an embedded Derby metastore,
    nothing of them under the path layout (issue 34, item 0: the features sensor and the
    has-predictions check go through the jobs' table layer, ``mmoe tables``, or the sensor
    would wait until its timeout); ab_reports stays on the path layout.

    The jobs go through the Spark provider's SparkSubmitHook (``mmoe_launcher=spark-submit``,
    connection ``spark_default`` = the session's loopback standalone cluster, the project zip
    as --py-files, jobs/submit.py): what a YARN / Kubernetes deployment runs."""
    import os
    import shlex
    import subprocess
    import sys

    from _reliability import cli_env
    from conftest import hive_settings
    from tiny_models import tiny_model

    from jobs.core.config import load_config
    from jobs.core.registry import register_model
    from jobs.core.warehouse import parquet_files, report_id
    from jobs.data.synth import generate_synth
    from jobs.score.stage import score_partition
    from jobs.validate.stage import validate_partition
    from schemas import load_spec

    repo = Path(__file__).resolve().parents[1]
    db, mapped = "nightly34", ("features", "labels", "predictions", "metrics")
    root = tmp_path / "metastore"
    root.mkdir()
    conf = {**hive_settings(root), "spark.ui.enabled": "false", "spark.driver.memory": "1g",
            "spark.sql.shuffle.partitions": "2", "spark.sql.session.timeZone": "UTC",
            "spark.sql.sources.partitionOverwriteMode": "dynamic"}
    settings = {"spark": {"master": "local[1]", "conf": conf},
                "validation": {"keep_data_docs": False},
                "evaluation": {"label_wait_days": 1, "segments": []}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**settings, "warehouse": str(tmp_path / "wh"),
                                      "tables": {"synth": {t: f"{db}.{t}" for t in mapped}}}))
    cfg = load_config(config)
    # The team's data and its earlier nights (both models scored 06-01 and 06-02): written on a
    # path layout elsewhere, in-process, then loaded into the team's tables.
    source_file = tmp_path / "source.yaml"
    source_file.write_text(yaml.safe_dump({**settings, "warehouse": str(tmp_path / "source")}))
    source = load_config(source_file)
    generate_synth(source, "2026-06-01", 3, 150, seed=3)
    champion = register_model(cfg, tiny_model(tmp_path / "a", 1), alias="champion",
                              effective="2026-01-01").version
    challenger = register_model(cfg, tiny_model(tmp_path / "b", 2), alias="challenger",
                                effective="2026-01-01").version
    spec, earlier = load_spec("synth"), ["2026-06-01", "2026-06-02"]
    for day in earlier:
        validate_partition(spark, source, spec, day)
        for model in (tmp_path / "a", tmp_path / "b"):
            score_partition(spark, source, spec, day, model)
    days = earlier + ["2026-06-03"]
    env = cli_env(AIRFLOW_HOME=str(tmp_path / "airflow"),
                  AIRFLOW__CORE__DAGS_FOLDER=str(repo / "airflow_dags"),
                  AIRFLOW__CORE__LOAD_EXAMPLES="False",
                  AIRFLOW_VAR_MMOE_DATASET="synth", AIRFLOW_VAR_MMOE_CONFIG=str(config),
                  AIRFLOW_VAR_MMOE_COMPARE_DAYS="2",
                  AIRFLOW_VAR_MMOE_BIN=f"{shlex.quote(sys.executable)} -m jobs.cli",
                  AIRFLOW_VAR_MMOE_LAUNCHER="spark-submit",
                  AIRFLOW_CONN_SPARK_DEFAULT=standalone_cluster.url,
                  # one executor per job: this test is about the wiring, the one above about
                  # several executors; Derby's log beside its metastore, not in the cwd
                  AIRFLOW_VAR_MMOE_SUBMIT_CONF=json.dumps({
                      **standalone_cluster.submit_conf(), "spark.cores.max": "1",
                      "spark.driver.extraJavaOptions": conf["spark.driver.extraJavaOptions"]}),
                  PATH=f"{standalone_cluster.bin_dir}{os.pathsep}{os.environ['PATH']}",
                  SPARK_HOME=standalone_cluster.env["SPARK_HOME"], SPARK_LOCAL_IP="127.0.0.1")
    env.pop("MMOE_START_DATE", None)  # the default start date must not skip 2026-06-05
    _pyspark(_LOAD, (conf, str(tmp_path / "source"), db,
                     [("features", days, ["ds"]), ("labels", days, ["ds"]),
                      ("predictions", earlier, ["ds", "model_version"])]), env)

    airflow = str(Path(sys.executable).parent / "airflow")
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True,
                             text=True, timeout=600)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    # a sensor that never sees the day would wait (rescheduled) until this timeout
    run = subprocess.run([airflow, "dags", "test", "mmoe_nightly", "2026-06-05"], env=env,
                         capture_output=True, text=True, timeout=1800)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    assert f"spark-submit {repo / 'jobs' / 'submit.py'}" in log  # the SparkSubmit launcher ran
    # the two decisions went through the table layer's catalog path
    assert "tables --dataset synth --ds 2026-06-03 --table features" in log
    assert "tables --dataset synth --ds 2026-06-02 --table predictions" in log
    assert "evaluate --dataset synth --ds 2026-06-02" in log

    got = json.loads(_pyspark(_READ, (conf, db), env).strip().splitlines()[-1])
    both = sorted([champion, challenger])
    assert got["predictions"] == [[d, v, 150] for d in days for v in both]
    # metrics: the matured day only (06-03's labels have not matured), for both models
    assert [row[:2] for row in got["metrics"]] == [["2026-06-02", v] for v in both]
    assert got["auc_rows"] > 0
    wh = Warehouse(cfg.warehouse)
    for table in mapped:  # nothing of the mapped tables' rows under the path layout
        assert not parquet_files(wh.table("synth", table)), table
    # compare: the mmoe_compare_days (2) days ending at the matured day, champion vs challenger
    reports = sorted(p.name for p in wh.table("synth", "ab_reports").iterdir() if p.name != "_docs")
    assert reports == [f"report={report_id(champion, challenger, '2026-06-01', '2026-06-02')}"]
    report = read_table(wh.table("synth", "ab_reports") / reports[0]).to_pandas()
    assert {str(d) for d in report["start"]} == {"2026-06-01"}
    assert {str(d) for d in report["end"]} == {"2026-06-02"}
