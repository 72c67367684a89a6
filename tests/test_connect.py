"""Spark Connect (issue 19), against ONE real server for the session (``connect_server`` in
tests/conftest.py, tests/_connect.py): the server's Python has the dependencies but not the
project, so every step below also proves the client ships its code (pyfile artifact).

- the nightly flow (validate with quarantined rows → score with the direct reader → score a
  challenger with the Spark reader → evaluate → compare) and a 3-day backfill, run as one
  Connect client process (tests/_connect_client.py), leave tables equal to the same commands
  run in classic mode in this process (whole frames, minus ``scored_at``). The backfill's three
  days were validated beforehand (classic, once, then the warehouse copied for both runs): over
  Connect Great Expectations issues its metric queries one gRPC round trip at a time (~30-60 s a
  day here), the validate step already runs it over Connect, and the backfill reuses a
  validation whose features are unchanged — so it scores and evaluates the three days over
  Connect, and the last day's drift has three reference days;
- the public UDF over Connect, through select and SQL, equals the classic UDF to 1e-9;
- a bad URL / an unreachable server is a one-line error within seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pyspark.testing import assertDataFrameEqual
from typer.testing import CliRunner

from _reliability import (
    REPO, assert_clean_error, cli_env, job_config_file, kill_group, last_manifest, mmoe_command,
    start_cli, tiny_model, wait_for, write_day,
)
from jobs.cli import app
from jobs.core.config import load_config
from jobs.core.errors import ConfigError, SparkUnavailable
from jobs.core.spark import check_remote
from jobs.core.warehouse import Warehouse
from jobs.validate.stage import validate_partition
from schemas import load_spec

DAYS = ["2026-07-01", "2026-07-02", "2026-07-03", "2026-07-04"]
N = 200
KEY = "impression_id"


def _warehouse(spark, root: Path, spec) -> Path:
    """The four days (quarantined rows on the last), the first three validated."""
    wh = root / "wh"
    for i, ds in enumerate(DAYS):
        cols, _ = write_day(wh, spec, ds, n=N, seed=10 + i, first_key=i * N)
    bad = dict(cols)
    bad["x0"] = list(cols["x0"])
    for i in (3, 50):
        bad["x0"][i] = float("nan")  # quarantined rows on the last day
    write_day(wh, spec, DAYS[-1], features=bad)
    cfg = load_config(warehouse=wh)
    cfg.validation.keep_data_docs = False
    for ds in DAYS[:3]:
        assert validate_partition(spark, cfg, spec, ds).status == "passed"
    return wh


def _commands(config: Path, spark_reader: Path, a: Path, b: Path) -> list[list[str]]:
    d1, last = DAYS[0], DAYS[-1]
    return [
        ["--config", str(config), "validate", "--dataset", "synth", "--ds", last],
        ["--config", str(config), "score", "--dataset", "synth", "--ds", last, "--model", str(a)],
        ["--config", str(spark_reader), "score", "--dataset", "synth", "--ds", last, "--model", str(b)],
        ["--config", str(config), "evaluate", "--dataset", "synth", "--ds", last],
        ["--config", str(config), "compare", "--dataset", "synth", "--baseline", str(a),
         "--candidate", str(b), "--start", last, "--end", last],
        ["--config", str(config), "backfill", "--dataset", "synth", "--start", d1,
         "--end", DAYS[2], "--model", str(a)],
    ]


def _configs(root: Path, wh: Path) -> tuple[Path, Path]:
    common = dict(validation={"keep_data_docs": False}, evaluation={"segments": []},
                  compare={"replicates": 20})
    config = job_config_file(root / "direct.yaml", **common)
    spark_reader = job_config_file(root / "spark.yaml", scoring={"batch_size": 64, "reader": "spark"},
                                   **common)
    for path in (config, spark_reader):
        path.write_text(path.read_text() + f"\nwarehouse: {wh}\n")
    return config, spark_reader


def run_connect_client(plan: list[dict], root: Path, timeout: float = 600) -> list[dict]:
    """The plan run by one Connect client process (tests/_connect_client.py)."""
    plan_path = root / "plan.json"
    plan_path.write_text(json.dumps(plan))
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "_connect_client.py"), str(plan_path)],
                          env=cli_env(), cwd=root, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.strip().splitlines() if line.startswith("{")]


def _frame(spark, directory: Path):
    frame = spark.read.option("basePath", str(directory)).parquet(str(directory))
    return frame.drop(*[c for c in ("scored_at",) if c in frame.columns])


TABLES = [("predictions", DAYS[-1]), ("quarantine", DAYS[-1]), ("metrics", DAYS[-1]),
          *[("predictions", ds) for ds in DAYS[:3]]]


def test_nightly_flow_and_backfill_over_connect_equal_classic(spark, connect_server, tmp_path):
    spec = load_spec("synth")
    a, b = tiny_model(tmp_path / "a", spec, seed=1), tiny_model(tmp_path / "b", spec, seed=2)
    built = _warehouse(spark, tmp_path / "built", spec)
    runs = {}
    for mode in ("classic", "connect"):
        root = tmp_path / mode
        wh = root / "wh"
        shutil.copytree(built, wh)  # copy2: sizes, names and times kept (the features stamp)
        runs[mode] = (wh, _commands(*_configs(root, wh), a, b))

    # classic: this process's session
    runner = CliRunner()
    classic = []
    for args in runs["classic"][1]:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.stderr[-2000:])
        classic.append(last_manifest(result.stdout))

    # Connect: one client process, its server without the project
    started = time.monotonic()
    steps = run_connect_client([{"args": ["--remote", connect_server.url, *args]}
                                for args in runs["connect"][1]], tmp_path / "connect")
    seconds = time.monotonic() - started
    assert [s["exit_code"] for s in steps] == [0] * len(steps), (steps, connect_server.log())
    connect = [json.loads(s["stdout_last"]) for s in steps]
    for got, want in zip(connect, classic):
        for key in ("job", "status", "input_rows", "output_rows", "quarantined_rows",
                    "model_version", "model_sha256"):
            assert got[key] == want[key], (got["job"], key)
    assert connect[0]["quarantined_rows"] == 2
    assert connect[0]["details"]["spark_jobs"] is None  # no status tracker over Connect
    days = connect[-1]["details"]["days"]
    assert [d["status"] for d in days] == ["scored"] * 3
    assert [d["validation"] for d in days] == ["passed (reused)"] * 3, days

    wh_classic, wh_connect = Warehouse(runs["classic"][0]), Warehouse(runs["connect"][0])
    for table, ds in TABLES:
        got, want = (_frame(spark, w.partition("synth", table, ds)) for w in (wh_connect, wh_classic))
        assert want.count() > 0, (table, ds)
        assertDataFrameEqual(got, want, checkRowOrder=False, rtol=0, atol=1e-12)
    got, want = (_frame(spark, w.table("synth", "ab_reports")) for w in (wh_connect, wh_classic))
    assertDataFrameEqual(got, want, checkRowOrder=False, rtol=0, atol=1e-12)
    print(f"connect client: {seconds:.1f}s for {len(steps)} commands")


def test_public_udf_over_connect_equals_classic(spark, connect_server, tmp_path):
    from jobs.runtime.udf import mmoe_udf

    spec = load_spec("synth")
    model = tiny_model(tmp_path / "m", spec, seed=4)
    wh = tmp_path / "wh"
    write_day(wh, spec, DAYS[0], n=300, seed=3)
    features = Warehouse(wh).partition("synth", "features", DAYS[0])
    [step] = run_connect_client([{"udf": {"remote": connect_server.url, "model": str(model),
                                          "features": str(features), "key": KEY}}], tmp_path)
    score = mmoe_udf(model, spark=spark)
    want = {r[KEY]: r for r in spark.read.parquet(str(features)).select(
        KEY, score(*score.input_columns).alias("p")).select(KEY, "p.*").collect()}
    assert len(want) == 300
    for path in ("select", "sql"):
        got = {r[KEY]: r for r in step[path]}
        assert sorted(got) == sorted(want), path
        for column in step["columns"]:
            np.testing.assert_allclose([got[k][column] for k in sorted(want)],
                                       [want[k][column] for k in sorted(want)], rtol=0, atol=1e-9)


def test_unreachable_server_and_bad_url_fail_in_seconds(tmp_path):
    from _cluster import free_port

    closed = f"sc://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(SparkUnavailable, match=f"Spark Connect server {closed} unreachable"):
        check_remote(closed)
    for bad, why in (("http://127.0.0.1:1", "expected sc://HOST"), ("sc://127.0.0.1:port", "not a number")):
        with pytest.raises(ConfigError, match=why):
            check_remote(bad)
    assert time.monotonic() - started < 5
    # the real CLI: one error line, no hang (SPARK_REMOTE selects Connect, no --remote needed);
    # the day has data, so the pre-JVM checks pass and the session start is what fails
    write_day(tmp_path / "wh", load_spec("synth"), DAYS[0], n=20)
    env = cli_env(SPARK_REMOTE=closed)
    started = time.monotonic()
    proc = subprocess.run(mmoe_command("--warehouse", str(tmp_path / "wh"), "validate", "--dataset",
                                       "synth", "--ds", DAYS[0]), env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert_clean_error(proc.stderr, "unreachable", closed)
    assert last_manifest(proc.stdout)["status"] == "failed"
    assert time.monotonic() - started < 60  # interpreter + imports on a loaded 2-core machine


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has ended


def test_sigterm_over_connect_stops_the_client_and_interrupts_the_servers_job(
        spark, connect_server, tmp_path):
    """Airflow SIGTERMs a Connect client mid-job: the client ends like any stopped job (exit
    143, one error line, the failed manifest), and the job it started on the server is
    interrupted: the hung task's Python worker (it would sleep 10 minutes) is gone within
    seconds, and nothing is written. (The server drops an execution whose client went away:
    measured 3.5 s after the signal, the same with an explicit ``interruptAll`` from the
    handler, which is therefore not made.)"""
    spec = load_spec("synth")
    model = tiny_model(tmp_path / "model", spec, seed=3)
    wh, ds = tmp_path / "wh", DAYS[0]
    write_day(wh, spec, ds, n=N, seed=3, first_key=0)
    cfg = load_config(warehouse=wh)
    cfg.validation.keep_data_docs = False
    assert validate_partition(spark, cfg, spec, ds).status == "passed"  # classic, in process
    markers = tmp_path / "markers"
    # the embedded default config: its driver-only settings (spark.ui.enabled,
    # spark.driver.memory) must not print warnings over Connect (seen in a clean-clone run)
    proc = start_cli(["--remote", connect_server.url, "--warehouse", str(wh), "score",
                      "--dataset", "synth", "--ds", ds, "--model", str(model)],
                     cli_env(MMOE_FAULT="score_task_hang", MMOE_TEST_PAUSE_DIR=str(markers)),
                     tmp_path / "log")
    try:
        wait_for(markers / "in_task", proc, timeout=240)
        worker = int((markers / "in_task").read_text().split()[1])
        assert _alive(worker)
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        stopped_in = time.monotonic() - started
    finally:
        if proc.poll() is None:
            kill_group(proc)
    stdout, stderr = ((tmp_path / "log" / name).read_text() for name in ("stdout", "stderr"))
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert_clean_error(stderr, "stopped by SIGTERM")
    manifest = last_manifest(stdout)
    assert manifest["status"] == "failed" and manifest["job"] == "score"
    assert stopped_in < 30, stopped_in
    deadline = time.monotonic() + 30
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)  # a poll until the worker is gone (bounded above), not a wait
    assert not _alive(worker), "the server's task still runs after its client was stopped"
    print(f"client stopped in {stopped_in:.1f}s; the server's task ended "
          f"{time.monotonic() - started:.1f}s after the signal")
    predictions = Warehouse(wh).partition("synth", "predictions", ds)
    assert not predictions.exists() or not any(predictions.rglob("*.parquet"))
