"""The nightly DAG parses, wires validate → score → evaluate, and its task runner passes the
run manifest on (or fails with the job's one-line error)."""

from __future__ import annotations

import stat

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
    assert downstream == {"validate": ["score"], "score": ["evaluate"], "evaluate": []}
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
    from airflow.timetables.interval import CronDataIntervalTimetable  # the scheduler's twin

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
