"""Nightly scoring: validate → score → evaluate the previous day's partition.

This file only wires tasks. Each task runs one `mmoe` sub-command for the run's ds (the data
interval's start date, never now()), so every task is idempotent: a retry or a rerun replaces its
own partition. The run manifest each command prints is the task's return value (XCom), so later
tasks and alerting can read row counts and model versions.

Airflow Variables (all optional): `mmoe_dataset` (default `synth`), `mmoe_model_dir` (the
artifact to score with; default `artifacts/mmoe`), `mmoe_config` (a job config YAML),
`mmoe_bin` (the console script; default `mmoe` on PATH). Evaluation runs on the same ds; when
its labels are not there yet it fails with a one-line error naming the deadline
(`evaluation.label_wait_days`) and Airflow retries it.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Variable, dag, task


@task(retries=2, retry_delay=pendulum.duration(minutes=5))
def run_mmoe(subcommand: list[str], **context) -> dict:
    """Run one `mmoe` job for this run's ds and return its manifest."""
    from airflow_dags.runner import run_ds, run_job

    ds = run_ds(context["data_interval_start"])
    return run_job(subcommand, ds, dataset=Variable.get("mmoe_dataset", default="synth"),
                   model_dir=Variable.get("mmoe_model_dir", default="artifacts/mmoe"),
                   config=Variable.get("mmoe_config", default=None),
                   mmoe_bin=Variable.get("mmoe_bin", default="mmoe"))


@dag(
    dag_id="mmoe_nightly",
    schedule=CronDataIntervalTimetable("0 3 * * *", timezone="UTC"),  # ds = yesterday
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["mmoe", "scoring"],
    doc_md=__doc__,
)
def mmoe_nightly():
    validated = run_mmoe.override(task_id="validate")(["validate"])
    scored = run_mmoe.override(task_id="score")(["score"])
    evaluated = run_mmoe.override(task_id="evaluate")(["evaluate"])
    validated >> scored >> evaluated


mmoe_nightly()
