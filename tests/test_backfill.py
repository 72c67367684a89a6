"""Range backfills: one Spark session, resumable (skips up-to-date days), --force rewrites the
same content, a killed run completes on rerun, concurrent backfills never tear a partition.

"Identical content" compares the predictions without ``scored_at`` (the documented run
timestamp, see CONTRACT.md) and the metrics as they are."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _reliability import run_concurrently
from tiny_models import tiny_model
from typer.testing import CliRunner

from jobs.backfill.stage import backfill_range
from jobs.core.registry import register_model
from jobs.core.warehouse import Warehouse, parquet_files
from schemas import load_spec

START, END = "2025-03-01", "2025-03-03"
DAYS = ["2025-03-01", "2025-03-02", "2025-03-03"]
ROWS = 150
AS_OF = dt.date(2025, 3, 10)  # every day's labels have matured (label_wait_days = 0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("bf-models")
    return tiny_model(base / "a", seed=11), tiny_model(base / "b", seed=12)


@pytest.fixture
def cfg(job_config, models):
    from jobs.data.synth import generate_synth

    generate_synth(job_config, START, 3, ROWS, seed=5)
    register_model(job_config, models[0], alias="champion", effective="2025-01-01")
    job_config.locks.wait_seconds = 120
    job_config.locks.poll_seconds = 0.05
    job_config.validation.keep_data_docs = False  # rendering Data Docs is most of a validation
    job_config.evaluation.segments = []
    job_config.drift.enabled = False  # drift has its own tests (test_drift.py): ~15 % of a day here
    return job_config


def _predictions(spark, cfg, ds):
    wh = Warehouse(cfg.warehouse)
    base = wh.partition("synth", "predictions", ds)
    [version] = wh.sub_partitions("synth", "predictions", ds, "model_version")
    frame = spark.read.parquet(str(base / f"model_version={version}"))
    return sorted(tuple(r) for r in frame.drop("scored_at").collect())


def _metrics(spark, cfg, ds):
    path = Warehouse(cfg.warehouse).partition("synth", "metrics", ds)
    return sorted((r["model_version"], r["task"], r["segment"], r["metric"], r["value"], r["n"])
                  for r in spark.read.parquet(str(path)).collect())


def _snapshot(spark, cfg, days=DAYS):
    return {ds: (_predictions(spark, cfg, ds), _metrics(spark, cfg, ds)) for ds in days}


def _run(spark, cfg, end=END, **kw):
    return backfill_range(spark, cfg, load_spec("synth"), START, end, "@champion",
                          as_of=AS_OF, **kw)


# enough for the concurrency and kill tests (a day each side of the kill), and for the
# skip / force test (each of its three runs validates, scores and evaluates every day: a third
# day added ~20 s and nothing that two days do not show)
TWO_DAYS = DAYS[:2]


def test_backfill_twice_skips_and_force_rewrites_identical_content(spark, cfg):
    end, days = TWO_DAYS[-1], TWO_DAYS
    first = _run(spark, cfg, end=end)
    assert [d.status for d in first.days] == ["scored"] * 2, first.days
    assert [d.evaluation for d in first.days] == ["evaluated"] * 2
    snapshot = _snapshot(spark, cfg, days)
    for ds in days:  # every passed row scored exactly once
        day = next(d for d in first.days if d.ds == ds)
        assert len(snapshot[ds][0]) == day.output_rows == day.input_rows > 0
        assert len({row[0] for row in snapshot[ds][0]}) == day.output_rows
    files = {ds: [p.stat().st_mtime_ns for p in parquet_files(
        Warehouse(cfg.warehouse).partition("synth", "predictions", ds))] for ds in days}

    second = _run(spark, cfg, end=end)
    assert [d.status for d in second.days] == ["skipped"] * 2
    assert [d.evaluation for d in second.days] == ["up to date"] * 2
    assert [d.validation for d in second.days] == ["passed (reused)"] * 2
    assert _snapshot(spark, cfg, days) == snapshot
    assert files == {ds: [p.stat().st_mtime_ns for p in parquet_files(
        Warehouse(cfg.warehouse).partition("synth", "predictions", ds))] for ds in days}
    assert second.record().details["counts"] == {"scored": 0, "skipped": 2, "failed": 0,
                                                 "not_run": 0}

    forced = _run(spark, cfg, end=end, force=True)
    assert [d.status for d in forced.days] == ["scored"] * 2
    assert _snapshot(spark, cfg, days) == snapshot  # same content, new files
    assert files != {ds: [p.stat().st_mtime_ns for p in parquet_files(
        Warehouse(cfg.warehouse).partition("synth", "predictions", ds))] for ds in days}


def test_changed_features_or_model_are_not_skipped(spark, cfg, models):
    from jobs.core.registry import promote_model
    from jobs.data.synth import generate_synth

    cfg.evaluation.label_wait_days = 8  # 2025-03-02 + 8 = 2025-03-10 = as_of: just matured
    first = _run(spark, cfg)
    assert [d.evaluation for d in first.days] == ["evaluated", "evaluated", "labels not matured"]
    assert not parquet_files(Warehouse(cfg.warehouse).partition("synth", "metrics", DAYS[2]))
    cfg.evaluation.label_wait_days = 0
    generate_synth(cfg, "2025-03-02", 1, ROWS, seed=6)  # new features for one day
    again = _run(spark, cfg)
    assert [d.status for d in again.days] == ["skipped", "scored", "skipped"]
    assert again.days[1].validation == "passed"  # validated again: the features changed
    # the last day is skipped (its predictions are up to date) but has no metrics yet (its
    # labels had not matured): it must be evaluated now, the first day is up to date
    assert [d.evaluation for d in again.days] == ["up to date", "evaluated", "evaluated"]
    assert {r[0] for r in _metrics(spark, cfg, DAYS[2])} == {again.days[2].model_version}
    # a promotion effective mid-range: the later days are scored with the new champion
    version_b = register_model(cfg, models[1]).version
    promote_model(cfg, version_b, "champion", effective="2025-03-03")
    third = _run(spark, cfg)
    assert [d.status for d in third.days] == ["skipped", "skipped", "scored"]
    assert third.days[2].model_version == version_b != third.days[0].model_version
    assert [d.evaluation for d in third.days] == ["up to date", "up to date", "evaluated"]


def test_failed_day_does_not_stop_the_others_and_fails_the_run(spark, cfg):
    from jobs.cli import app

    features_dir = Warehouse(cfg.warehouse).partition("synth", "features", DAYS[1])
    for f in parquet_files(features_dir):
        f.unlink()
    out = CliRunner().invoke(app, ["--warehouse", str(cfg.warehouse), "backfill", "--dataset",
                                   "synth", "--start", START, "--end", END, "--model",
                                   "@champion"])
    assert out.exit_code == 1, out.output
    manifest = json.loads(out.stdout.strip().splitlines()[-1])
    assert manifest["status"] == "failed" and manifest["job"] == "backfill"
    # a range job's ds is its last day, as compare's (README)
    assert (manifest["ds"], manifest["details"]["start"]) == (END, START)
    statuses = [d["status"] for d in manifest["details"]["days"]]
    assert statuses == ["scored", "failed", "scored"]
    # a missing partition is not fixed by a retry: the DAG must not retry this run
    assert [d["error_kind"] for d in manifest["details"]["days"]] == [None, "permanent", None]
    assert manifest["error_kind"] == "permanent"
    assert manifest["details"]["counts"]["failed"] == 1
    stderr = out.stderr.strip().splitlines()
    assert stderr[-1].startswith("error: backfill synth 2025-03-01..2025-03-03: 1 of 3 day(s) "
                                 "failed; first 2025-03-02: features partition")
    assert any(line.startswith("backfill synth 2025-03-02: failed") for line in stderr)
    assert any(line.split()[:2] == ["ds", "status"] for line in stderr)  # the summary table

    # (not forced: the first day, scored above, is skipped rather than done again; what
    # fail_fast changes is that the day after the failure is not run)
    fail_fast = backfill_range(spark, cfg, load_spec("synth"), START, END, "@champion",
                               as_of=AS_OF, fail_fast=True)
    assert [d.status for d in fail_fast.days] == ["skipped", "failed", "not_run"]


def test_concurrent_backfills_never_tear_or_duplicate(spark, cfg):
    results = []
    end = TWO_DAYS[-1]
    assert run_concurrently(lambda: results.append(_run(spark, cfg, end=end)), 2) == []
    assert all(d.status in ("scored", "skipped") for r in results for d in r.days), \
        [(d.ds, d.status, d.error) for r in results for d in r.days]
    assert [len(r.days) for r in results] == [2, 2]
    concurrent = _snapshot(spark, cfg, TWO_DAYS)
    for ds in TWO_DAYS:
        rows = concurrent[ds][0]
        assert len(rows) == len({row[0] for row in rows})  # no duplicated key
    forced = _run(spark, cfg, end=end, force=True)  # one writer alone: the reference content
    assert all(d.status == "scored" for d in forced.days)
    assert _snapshot(spark, cfg, TWO_DAYS) == concurrent
    assert not list(Warehouse(cfg.warehouse).table("synth", "_locks").glob("*.lock"))


def test_a_killed_backfill_completes_on_rerun(spark, cfg, tmp_path):
    """Kill -9 a real `mmoe backfill` after its first day: its locks are left behind by a dead
    process; the rerun breaks them, skips the finished day and does the rest."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]),
               MMOE_WAREHOUSE=str(cfg.warehouse))
    config = tmp_path / "config.yaml"
    # the fixture's settings (no Data Docs, no segments, no drift): the test is about the kill
    config.write_text("spark: {master: 'local[1]', conf: {spark.ui.enabled: 'false', "
                      "spark.sql.shuffle.partitions: '2'}}\nlocks: {wait_seconds: 60}\n"
                      "validation: {keep_data_docs: false}\nevaluation: {segments: []}\n"
                      "drift: {enabled: false}\n")
    end = TWO_DAYS[-1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "--config", str(config), "backfill", "--dataset",
         "synth", "--start", START, "--end", end, "--model", "@champion"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        for line in proc.stderr:
            if line.startswith(f"backfill synth {DAYS[0]}: scored"):
                break
            assert time.monotonic() < deadline, "the backfill did not finish its first day"
        else:
            pytest.fail(f"backfill ended early: {proc.wait()}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its JVM and Python workers
        proc.wait()
    wh = Warehouse(cfg.warehouse)
    done = [ds for ds in DAYS if wh.sub_partitions("synth", "predictions", ds, "model_version")]
    assert done == [DAYS[0]]  # killed while the second (last) day was under way
    rerun = _run(spark, cfg, end=end)
    assert [d.status for d in rerun.days] == ["skipped", "scored"]
    assert all(wh.sub_partitions("synth", "predictions", ds, "model_version") for ds in TWO_DAYS)


@pytest.mark.parametrize("args, message", [
    (["--start", "2025-03-01", "--end", "2025-02-30"], "--end '2025-02-30' is not a valid date"),
    (["--start", "2025/03/01", "--end", "2025-03-02"], "--start must be YYYY-MM-DD"),
    (["--start", "2025-03-03", "--end", "2025-03-01"], "--end 2025-03-01 is before --start"),
])
def test_bad_ranges_are_refused_before_any_spark_work(tmp_path, args, message):
    from jobs.cli import app

    out = CliRunner().invoke(app, ["--warehouse", str(tmp_path / "wh"), "backfill",
                                   "--dataset", "synth", *args])
    assert out.exit_code == 2
    assert out.stderr.strip().count("\n") == 0 and message in out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["status"] == "failed"


def test_every_stage_writes_under_its_partition_lock(spark, cfg):
    """A live holder (here: this process, as a nightly job would be) of a partition's lock makes
    validate, score, evaluate and the data generator of that partition wait, then refuse with one line naming the
    holder, leaving the partition as it was."""
    import socket

    from jobs.core.errors import PartitionLocked
    from jobs.data.synth import generate_synth
    from jobs.evaluate.stage import evaluate_partition
    from jobs.score.stage import score_partition
    from jobs.validate.stage import validate_partition

    spec, ds = load_spec("synth"), DAYS[0]
    validate_partition(spark, cfg, spec, ds)
    version = score_partition(spark, cfg, spec, ds, "@champion").model_version
    evaluate_partition(spark, cfg, spec, ds)
    wh = Warehouse(cfg.warehouse)
    cfg.locks.wait_seconds = 0.3
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "token": "nightly",
              "started_at": "2025-03-02T03:00:00+00:00", "command": "mmoe score (nightly)"}
    attempts = [
        ("validation", {}, lambda: validate_partition(spark, cfg, spec, ds),
         wh.partition("synth", "validation", ds)),
        ("predictions", {"model_version": version},
         lambda: score_partition(spark, cfg, spec, ds, "@champion"),
         wh.partition("synth", "predictions", ds, model_version=version)),
        ("metrics", {}, lambda: evaluate_partition(spark, cfg, spec, ds),
         wh.partition("synth", "metrics", ds)),
        ("features", {}, lambda: generate_synth(cfg, ds, 1, 50, seed=3),
         wh.partition("synth", "features", ds)),
    ]
    for table, more, attempt, partition in attempts:
        before = sorted((str(p), p.stat().st_mtime_ns) for p in partition.rglob("*"))
        lock = wh.lock_path("synth", table, ds, more.get("model_version"))
        lock.write_text(json.dumps(holder))
        with pytest.raises(PartitionLocked) as err:
            attempt()
        lock.unlink()
        message = str(err.value)
        assert "\n" not in message and f"synth {table} ds={ds}" in message
        assert f"pid {os.getpid()}" in message and "mmoe score (nightly)" in message
        assert sorted((str(p), p.stat().st_mtime_ns) for p in partition.rglob("*")) == before
