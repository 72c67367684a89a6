"""The DAGs parse (fast, without Spark/torch/GX), the nightly one is wired sensor → validate →
models in force → score (mapped) → evaluate (matured day) → compare, its task runner passes the
run manifest on (or fails with the job's one-line error). The end-to-end run (`airflow dags test
mmoe_nightly` through SparkSubmit on the loopback standalone cluster) is in tests/test_cluster.py,
beside the other test of that cluster, so that one pytest-xdist worker starts it once."""

from __future__ import annotations

import copy
import datetime as dt
import json
import stat
from types import SimpleNamespace

import pytest

from airflow_dags.runner import JobFailed, build_command, run_job


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    import os

    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow")))
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder="airflow_dags")


def test_nightly_dag_parses_and_is_wired(dagbag):
    assert dagbag.import_errors == {}
    dag = dagbag.dags["mmoe_nightly"]
    downstream = {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}
    assert downstream == {
        "wait_for_features": ["validate"], "validate": ["models_in_force"],
        "models_in_force": ["challenger_pairs", "score"], "score": ["evaluate"],
        "evaluate": ["compare"], "challenger_pairs": ["compare"], "compare": []}
    sensor = dag.get_task("wait_for_features")
    # rescheduled every 5 minutes (no worker slot held) for at most 12 hours
    assert (sensor.mode, sensor.poke_interval, sensor.timeout) == ("reschedule", 300, 12 * 3600)
    assert dag.get_task("score").is_mapped and dag.get_task("compare").is_mapped
    assert {a.name for a in dag.get_task("score").partial_kwargs["outlets"]} == {"mmoe_predictions"}
    assert {a.name for a in dag.get_task("evaluate").outlets} == {"mmoe_metrics"}
    for task_id in ("validate", "evaluate", "models_in_force"):
        task_ = dag.get_task(task_id)
        assert (task_.retries, task_.retry_delay, task_.execution_timeout) == (
            2, dt.timedelta(minutes=5), dt.timedelta(hours=3)), task_id
        assert task_.on_failure_callback, task_id
    # an early default start date: no date a user asks for is silently before it
    assert dag.start_date.year <= 2020
    assert not dag.catchup
    # a data-interval timetable, so the run's ds is the day before the run, not a zero-width interval
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"


def test_build_command_passes_ds_dataset_and_model():
    cmd = build_command(["score"], "2026-11-03", "synth", "/m", "/c.yaml", "mmoe")
    assert cmd == ["mmoe", "--config", "/c.yaml", "score", "--dataset", "synth", "--ds", "2026-11-03",
                   "--model", "/m"]
    assert "--model" not in build_command(["validate"], "2026-11-03", "synth", "/m", None)


def _fake_mmoe(tmp_path, exit_code: int):
    script = tmp_path / "mmoe"
    script.write_text(
        "#!/bin/sh\n"
        "echo progress line\n"
        'echo \'{"job": "validate", "status": "%s", "args": "\'"$*"\'"}\'\n'
        "%s\n"
        "exit %d\n" % ("succeeded" if exit_code == 0 else "failed",
                       "echo 'error: validation failed: column x' >&2" if exit_code else "",
                       exit_code))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_run_job_returns_the_manifest(tmp_path):
    manifest = run_job(["validate"], "2026-11-03", "synth", mmoe_bin=_fake_mmoe(tmp_path, 0))
    assert manifest["status"] == "succeeded"
    assert manifest["args"] == "validate --dataset synth --ds 2026-11-03"


def test_run_job_raises_with_the_one_line_error(tmp_path):
    with pytest.raises(JobFailed, match="exited 3: error: validation failed: column x"):
        run_job(["validate"], "2026-11-03", "synth", mmoe_bin=_fake_mmoe(tmp_path, 3))


@pytest.mark.parametrize("subcommand", [["validate"], ["score"], ["evaluate"]])
def test_runner_commands_parse_with_the_real_cli(subcommand):
    """The runner's command lines are built from, and parsed by, the CLI's own definitions: a
    renamed option fails here, not in Airflow."""
    import typer.main

    from jobs.cli import app

    cmd = build_command(subcommand, "2026-11-03", "synth", "/m", "/c.yaml", "mmoe")
    group = typer.main.get_command(app)
    ctx = group.make_context("mmoe", cmd[1:], resilient_parsing=True)
    assert ctx.params["config"] == "/c.yaml" or str(ctx.params["config"]) == "/c.yaml"
    sub_name, *sub_args = list(getattr(ctx, "_protected_args", [])) + ctx.args
    assert sub_name == subcommand[0]
    sub = group.commands[sub_name].make_context(sub_name, sub_args)
    assert sub.params["dataset"] == "synth" and sub.params["ds"] == "2026-11-03"
    if subcommand == ["score"]:
        assert str(sub.params["model"]) == "/m"


def test_command_line_refuses_an_option_the_cli_does_not_have():
    from jobs.cli import command_line

    with pytest.raises(KeyError):
        command_line(["validate"], dataset="synth", date="2026-11-03")
    assert command_line(["data", "synth"], start="2026-11-01", days=2, rows_per_day=10) == [
        "data", "synth", "--start", "2026-11-01", "--days", "2", "--rows-per-day", "10"]


def test_nightly_run_scores_the_previous_day(dagbag):
    """03:00 UTC daily; a run after 2026-11-04 03:00 covers ds 2026-11-03 (the interval's
    start), never the day it runs on."""
    import pendulum

    from airflow_dags.runner import run_ds

    dag = dagbag.dags["mmoe_nightly"]
    timetable = dag.timetable
    expression = getattr(timetable, "expression", None) or getattr(timetable, "_expression")
    timezone = getattr(timetable, "timezone", None) or getattr(timetable, "_timezone")
    assert expression == "0 3 * * *"
    assert "UTC" in str(timezone)
    from airflow.timetables.interval import (
        CronDataIntervalTimetable,  # the scheduler's twin
    )

    interval = CronDataIntervalTimetable(expression, timezone=timezone).infer_manual_data_interval(
        run_after=pendulum.datetime(2026, 11, 4, 3, 0, tz="UTC"))
    assert run_ds(interval.start) == "2026-11-03"
    assert run_ds(interval.end) == "2026-11-04"  # what taking the end would (wrongly) give


def test_nightly_task_passes_the_interval_start_as_ds(dagbag, monkeypatch):
    import pendulum

    import airflow_dags.mmoe_nightly as nightly
    import airflow_dags.runner as runner

    calls = []
    monkeypatch.setattr(runner, "run_job", lambda sub, ds, **kw: calls.append((sub, ds, kw)) or {})
    monkeypatch.setenv("AIRFLOW_VAR_MMOE_DATASET", "synth")
    nightly.run_mmoe.function(["validate"],
                              data_interval_start=pendulum.datetime(2026, 11, 3, 3, tz="UTC"),
                              data_interval_end=pendulum.datetime(2026, 11, 4, 3, tz="UTC"))
    assert calls and calls[0][:2] == (["validate"], "2026-11-03")


def test_backfill_dag_has_the_range_params(dagbag):
    dag = dagbag.dags["mmoe_backfill"]
    assert set(dag.params) >= {"dataset", "start", "end", "model", "force"}
    assert type(dag.timetable).__name__ == "NullTimetable"  # on demand only
    assert [t.task_id for t in dag.tasks] == ["backfill"]
    # triggered without a range it is refused (no default month to fail 31 days of)
    with pytest.raises(Exception, match="param start: No value passed"):
        copy.deepcopy(dag.params).validate()
    configured = copy.deepcopy(dag.params)
    configured.update({"start": "2026-10-01", "end": "2026-10-31"})
    assert configured.validate()["model"] == "@champion"


def test_dag_files_parse_fast_without_spark_torch_or_gx():
    """Import the DAG files in a fresh interpreter (Airflow itself already imported, as in the
    DAG processor): none of the heavy libraries loaded, and of the project only
    jobs.core.errors (and the mmoe_model.errors it reads), checked by the modules the import
    adds, not by a stopwatch. The CPU bound is a backstop: measured 0.03 s, bounded at 1 s."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import json, sys, time\n"
        "import airflow.sdk\n"
        "from airflow.sdk import task\n"
        "task.sensor  # the decorator's own lazy import, shared by every DAG file\n"
        "before = set(sys.modules)\n"
        "cpu = time.process_time()\n"
        "import airflow_dags.mmoe_nightly, airflow_dags.mmoe_backfill\n"
        "print(json.dumps({'cpu': time.process_time() - cpu,\n"
        "                  'new': sorted(set(sys.modules) - before)}))\n")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(repo)}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = {"pyspark", "py4j", "torch", "great_expectations", "pandas", "numpy", "pyarrow",
             "scipy", "sklearn", "matplotlib", "onnx", "onnxruntime", "lightgbm", "safetensors",
             "yaml", "typer"}
    assert [m for m in result["new"] if m.split(".")[0] in heavy] == []
    project = [m for m in result["new"] if m.split(".")[0] in ("jobs", "mmoe_model", "schemas")]
    assert set(project) <= {"jobs", "jobs.core", "jobs.core.errors", "mmoe_model",
                            "mmoe_model.errors"}, project
    assert result["cpu"] < 1.0, result


def test_decisions_use_the_registry_and_the_label_delay(tmp_path, monkeypatch):
    from tiny_models import tiny_model

    from airflow_dags.runner import (
        JobFailed,
        Settings,
        compare_pairs,
        matured_ds,
        models_to_score,
    )
    from jobs.core.registry import register_model

    config = tmp_path / "c.yaml"
    config.write_text(f"warehouse: {tmp_path / 'wh'}\nevaluation: {{label_wait_days: 3}}\n")
    settings = Settings(dataset="synth", config=str(config))
    assert matured_ds(settings, "2026-11-05") == "2026-11-02"
    assert models_to_score(Settings(dataset="synth", config=str(config), model_dir="/m"),
                           "2026-11-05") == ["/m"]  # no registry: the legacy Variable
    cfg = settings.job_config()
    champion = register_model(cfg, tiny_model(tmp_path / "a", 1), alias="champion",
                              effective="2026-11-01").version
    with pytest.raises(JobFailed, match="no @champion of synth in force on 2026-10-31"):
        models_to_score(settings, "2026-10-31")
    challenger = register_model(cfg, tiny_model(tmp_path / "b", 2), alias="challenger",
                                effective="2026-11-04").version
    assert models_to_score(settings, "2026-11-03") == [champion]
    assert models_to_score(settings, "2026-11-04") == [champion, challenger]
    assert compare_pairs([champion, challenger]) == [
        {"baseline": champion, "candidate": challenger}]


def test_failure_callback_logs_the_one_line_error(caplog):
    import logging

    import pendulum

    from airflow_dags.runner import JobFailed, log_failure

    class TI:
        task_id = "score"

    with caplog.at_level(logging.ERROR, logger="airflow_dags.runner"):
        log_failure({"exception": JobFailed("mmoe score exited 1: error: no rows\ntrace"),
                     "task_instance": TI(),
                     "data_interval_start": pendulum.datetime(2026, 11, 3, 3, tz="UTC")})
    assert caplog.messages == [
        "mmoe task score failed for ds=2026-11-03: mmoe score exited 1: error: no rows"]


def test_the_error_kind_mapping_and_the_manifest_that_carries_it(tmp_path):
    """THE mapping (jobs.core.errors.error_kind): locks, an unreachable server, a signal and the
    unexpected are transient; our typed refusals permanent; a failed job's manifest says which."""
    from jobs.core.errors import (
        InputError,
        JobStopped,
        MissingInputError,
        NotValidated,
        PartitionLocked,
        RegistryError,
        SparkUnavailable,
        ValidationFailed,
        error_kind,
    )
    from jobs.core.manifest import run_job as run_stage
    from mmoe_model.errors import SpecMismatch
    from schemas.spec import SpecError

    transient = [PartitionLocked("held by pid 1"), SparkUnavailable("refused"),
                 JobStopped(15, "SIGTERM"), RuntimeError("lost executor")]
    permanent = [InputError("bad --ds"), MissingInputError("no features"), NotValidated("x"),
                 ValidationFailed("x"), RegistryError("no @champion in force"),
                 SpecMismatch("spec differs"), SpecError("bad spec")]
    assert [error_kind(e) for e in transient] == ["transient"] * len(transient)
    assert [error_kind(e) for e in permanent] == ["permanent"] * len(permanent)

    def failing(exc):
        def body(cfg, run_id):
            raise exc
        return run_stage("score", "synth", "2026-11-03", lambda: SimpleNamespace(warehouse=tmp_path),
                         body).manifest

    assert failing(PartitionLocked("held")).error_kind == "transient"
    assert failing(RegistryError("no model")).error_kind == "permanent"
    assert json.loads(failing(InputError("bad")).to_json())["error_kind"] == "permanent"


def test_a_backfill_is_retried_only_when_a_failed_day_may_pass_next_time():
    """A backfill whose failed days all failed permanently is permanent (a retry repeats them);
    one transient day (a held lock) makes the whole run worth a retry."""
    from jobs.backfill.stage import BackfillResult, DayResult
    from jobs.core.errors import BackfillFailed, MissingInputError, PartitionLocked, error_kind

    def run_with(*failures):
        days = [DayResult(ds="2026-11-01", status="scored")]
        for i, exc in enumerate(failures):
            day = DayResult(ds=f"2026-11-0{i + 2}")
            day.fail(exc)
            days.append(day)
        result = BackfillResult("synth", "2026-11-01", days[-1].ds, "@champion", False, days,
                                ["@champion"])
        with pytest.raises(BackfillFailed) as err:
            result.raise_if_failed()
        return error_kind(err.value)

    missing, locked = MissingInputError("no features"), PartitionLocked("held by pid 1")
    assert run_with(missing) == "permanent"
    assert run_with(missing, missing) == "permanent"
    assert run_with(missing, locked) == "transient"
    assert run_with(locked) == "transient"


def _failing_mmoe(tmp_path, exit_code: int, kind: str | None) -> str:
    """A console script that fails like the CLI: its manifest (with ``error_kind``) last on
    stdout, one error line on stderr."""
    script = tmp_path / f"mmoe-{exit_code}-{kind}"
    manifest = {"job": "score", "status": "failed", "error": "x", **(
        {"error_kind": kind} if kind else {})}
    script.write_text("#!/bin/sh\necho '%s'\necho 'error: x' >&2\nexit %d\n"
                      % (json.dumps(manifest), exit_code))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


@pytest.mark.parametrize("exit_code, kind, permanent", [
    (1, "permanent", True),    # e.g. a refused input, no model in force, a spec mismatch
    (2, "permanent", True),    # a bad argument
    (1, "transient", False),   # e.g. a lock held by another run, a lost executor
    (143, "transient", False),  # stopped by SIGTERM
    (2, None, True),           # no manifest (a usage error before any): the exit status decides
    (1, None, False),
])
def test_task_callable_fails_fast_only_when_a_retry_cannot_help(dagbag, monkeypatch, tmp_path,
                                                               exit_code, kind, permanent):
    """The nightly DAG's job task, run as Airflow runs its callable: a permanent failure raises
    AirflowFailException (no retry), a transient one a retryable exception."""
    import pendulum
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.setenv("AIRFLOW_VAR_MMOE_BIN", _failing_mmoe(tmp_path, exit_code, kind))
    monkeypatch.setenv("AIRFLOW_VAR_MMOE_DATASET", "synth")
    callable_ = dagbag.dags["mmoe_nightly"].get_task("validate").python_callable
    with pytest.raises(Exception) as raised:
        callable_(["validate"], data_interval_start=pendulum.datetime(2026, 11, 3, 3, tz="UTC"))
    assert isinstance(raised.value, AirflowFailException) is permanent, raised.value
    if not permanent:
        assert isinstance(raised.value, JobFailed) and not raised.value.permanent
    assert "exited %d: error: x" % exit_code in str(raised.value)


def test_no_model_in_force_fails_the_task_at_once(dagbag, monkeypatch, tmp_path):
    """``models_in_force`` for a day before the champion's effective date: one clear line, and
    AirflowFailException (no retries five minutes apart); an unreadable registry, a typed error
    raised in the task itself, fails at once too."""
    import pendulum
    from airflow.sdk.exceptions import AirflowFailException
    from tiny_models import tiny_model

    from jobs.core.config import load_config
    from jobs.core.registry import register_model
    from jobs.core.warehouse import Warehouse

    config = tmp_path / "c.yaml"
    config.write_text(f"warehouse: {tmp_path / 'wh'}\n")
    monkeypatch.setenv("AIRFLOW_VAR_MMOE_CONFIG", str(config))
    monkeypatch.setenv("AIRFLOW_VAR_MMOE_DATASET", "synth")
    cfg = load_config(str(config), None)
    register_model(cfg, tiny_model(tmp_path / "a", 1), alias="champion", effective="2026-11-05")
    callable_ = dagbag.dags["mmoe_nightly"].get_task("models_in_force").python_callable
    day = pendulum.datetime(2026, 11, 3, 3, tz="UTC")
    with pytest.raises(AirflowFailException, match="no @champion of synth in force on 2026-11-03"):
        callable_(data_interval_start=day)
    Warehouse(cfg.warehouse).registry_history("synth").write_text("{not json\n")
    with pytest.raises(AirflowFailException, match="registry of synth is unreadable"):
        callable_(data_interval_start=day)


def test_backfill_dag_command_parses_with_the_real_cli():
    import typer.main

    from jobs.cli import app

    cmd = build_command(["backfill"], None, "synth", None, "/c.yaml", "python -m jobs.cli",
                        start="2026-10-01", end="2026-10-31", model="@champion", force=True)
    assert cmd == ["python", "-m", "jobs.cli", "--config", "/c.yaml", "backfill", "--dataset",
                   "synth", "--start", "2026-10-01", "--end", "2026-10-31", "--model",
                   "@champion", "--force"]
    group = typer.main.get_command(app)
    sub = group.commands["backfill"].make_context("backfill", cmd[6:])
    assert sub.params["force"] is True and list(sub.params["model"]) == ["@champion"]


def test_connect_launcher_adds_the_remote_and_bad_launchers_are_refused(tmp_path):
    from airflow_dags.runner import Launch

    manifest = run_job(["validate"], "2026-11-03", "synth",
                       launch=Launch("connect", _fake_mmoe(tmp_path, 0), remote="sc://spark:15002"))
    assert manifest["args"] == "--remote sc://spark:15002 validate --dataset synth --ds 2026-11-03"
    with pytest.raises(JobFailed, match="no mmoe_remote"):
        Launch("connect")
    with pytest.raises(JobFailed, match="mmoe_launcher must be one of"):
        Launch("ssh")


def test_the_sensor_and_the_evaluate_check_read_the_tables_the_jobs_read(tmp_path):
    """Path layout, decided in the task itself: features on one day only (labels on another),
    predictions of one version on one day (an empty version directory on another). The sensor
    sees only the features day, the evaluate check only the scored day. The catalog-mapped
    twin runs end to end in tests/test_dag_catalog.py."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from airflow_dags.runner import Settings, features_ready, has_predictions, table_facts
    from jobs.core.warehouse import Warehouse

    config = tmp_path / "c.yaml"
    config.write_text(f"warehouse: {tmp_path / 'wh'}\n")
    wh = Warehouse(tmp_path / "wh")
    rows = pa.table({"impression_id": [1, 2]})
    for table, ds, more in (("features", "2026-11-03", {}), ("labels", "2026-11-04", {}),
                            ("predictions", "2026-11-03", {"model_version": "v1"})):
        part = wh.partition("synth", table, ds, **more)
        part.mkdir(parents=True)
        pq.write_table(rows, part / "part-00000.parquet")
    wh.partition("synth", "predictions", "2026-11-04", model_version="v2").mkdir(parents=True)
    settings = Settings(dataset="synth", config=str(config))
    assert features_ready(settings, "2026-11-03")
    assert not features_ready(settings, "2026-11-04")  # labels only: not the features
    assert has_predictions(settings, "2026-11-03")
    assert not has_predictions(settings, "2026-11-04")  # a version directory without data
    assert table_facts(settings, "predictions", "2026-11-03")["sub_partitions"] == {
        "model_version": ["v1"]}
