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
