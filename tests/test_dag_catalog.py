"""The nightly DAG end to end on catalog tables (issue 34, item 0): features, labels,
predictions and metrics all mapped to tables of an embedded Derby metastore, nothing of them
under the path layout. Before the fix the sensor looked for ``<wh>/synth/features/ds=D/`` and
waited until its timeout; now every DAG decision goes through the jobs' own table layer.

One JVM at a time opens the metastore (Derby's rule): the team's tables are loaded by one
plain-pyspark process, the DAG's jobs run one after another (``airflow dags test``), and the
tables are read back by another plain-pyspark process (``spark.table`` + a filter: not the
code under test)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from _reliability import cli_env
from conftest import hive_settings
from tiny_models import tiny_model

from jobs.core.config import load_config
from jobs.core.registry import register_model
from jobs.core.warehouse import Warehouse, parquet_files
from jobs.data.synth import generate_synth

REPO = Path(__file__).resolve().parents[1]
DB = "nightly34"
DS, RUN = "2026-06-03", "2026-06-05"  # `dags test` of 2026-06-05: ds 2026-06-03 (as in test_cluster)
MAPPED = ("features", "labels", "predictions", "metrics")

_LOAD = """
import sys
from pyspark.sql import SparkSession, functions as F
conf, src, db, ds = eval(sys.argv[1])
b = SparkSession.builder.master("local[1]")
for k, v in conf.items():
    b = b.config(k, v)
spark = b.enableHiveSupport().getOrCreate()
spark.sql(f"CREATE DATABASE IF NOT EXISTS {db}")
for table in ("features", "labels"):
    (spark.read.parquet(f"{src}/synth/{table}/ds={ds}").withColumn("ds", F.lit(ds))
     .write.mode("overwrite").partitionBy("ds").saveAsTable(f"{db}.{table}"))
spark.stop()
"""

_READ = """
import json, sys
from pyspark.sql import SparkSession
conf, db, ds = eval(sys.argv[1])
b = SparkSession.builder.master("local[1]")
for k, v in conf.items():
    b = b.config(k, v)
spark = b.enableHiveSupport().getOrCreate()
out = {}
for table in ("predictions", "metrics"):
    rows = spark.table(f"{db}.{table}").where(f"ds = '{ds}'")
    out[table] = {r["model_version"]: r["count"] for r in rows.groupBy("model_version").count().collect()}
out["auc_rows"] = spark.table(f"{db}.metrics").where(f"ds = '{ds}' AND metric = 'auc'").count()
print(json.dumps(out))
spark.stop()
"""


def _pyspark(script: str, args, env) -> str:
    run = subprocess.run([sys.executable, "-c", script, repr(args)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_nightly_dag_end_to_end_on_catalog_tables(tmp_path):
    root = tmp_path / "metastore"
    root.mkdir()
    conf = {**hive_settings(root), "spark.ui.enabled": "false", "spark.driver.memory": "1g",
            "spark.sql.shuffle.partitions": "2", "spark.sql.session.timeZone": "UTC",
            "spark.sql.sources.partitionOverwriteMode": "dynamic"}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "warehouse": str(tmp_path / "wh"),
        "spark": {"master": "local[1]", "conf": conf},
        "validation": {"keep_data_docs": False},
        "evaluation": {"label_wait_days": 0, "segments": []},   # the matured day is ds itself
        "tables": {"synth": {t: f"{DB}.{t}" for t in MAPPED}}}))
    cfg = load_config(config)
    # the team's data: written on a path layout elsewhere, loaded into their own tables
    source = load_config(warehouse=tmp_path / "source")
    generate_synth(source, DS, 1, 200, seed=3)
    env = cli_env(AIRFLOW_HOME=str(tmp_path / "airflow"),
                  AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "airflow_dags"),
                  AIRFLOW__CORE__LOAD_EXAMPLES="False",
                  AIRFLOW_VAR_MMOE_DATASET="synth", AIRFLOW_VAR_MMOE_CONFIG=str(config),
                  AIRFLOW_VAR_MMOE_BIN=f"{shlex.quote(sys.executable)} -m jobs.cli")
    _pyspark(_LOAD, (conf, str(tmp_path / "source"), DB, DS), env)
    # a champion only: the challenger's score and compare tasks are what
    # tests/test_cluster.py's DAG run covers; here each job is one more JVM on the metastore
    champion = register_model(cfg, tiny_model(tmp_path / "a", 1), alias="champion",
                              effective="2026-01-01").version

    airflow = str(Path(sys.executable).parent / "airflow")
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True,
                             timeout=600)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    # a sensor that never sees the day would wait (rescheduled) until this timeout
    run = subprocess.run([airflow, "dags", "test", "mmoe_nightly", RUN], env=env,
                         capture_output=True, text=True, timeout=900)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    # the two decisions went through the table layer's catalog path
    assert "tables --dataset synth --ds 2026-06-03 --table features" in log
    assert "tables --dataset synth --ds 2026-06-03 --table predictions" in log
    assert "evaluate --dataset synth --ds 2026-06-03" in log

    got = json.loads(_pyspark(_READ, (conf, DB, DS), env).strip().splitlines()[-1])
    assert got["predictions"] == {champion: 200}
    assert set(got["metrics"]) == {champion} and got["auc_rows"] > 0
    wh = Warehouse(cfg.warehouse)
    for table in MAPPED:  # nothing of the mapped tables' rows under the path layout
        assert not parquet_files(wh.table("synth", table)), table
