"""Backfill a ds range on demand: one `mmoe backfill` job (one Spark application for the whole
range; resumable, skips up-to-date days, see README "Backfills").

Trigger it with params, e.g. `airflow dags trigger mmoe_backfill -c '{"start": "2026-10-01",
"end": "2026-10-31", "model": "@champion"}'`; `"model": ["@champion", "@challenger"]` scores
both arms of an A/B in the same run (then `mmoe compare`). Settings (config, warehouse, console
script) are the nightly DAG's Variables. `start` and `end` have no defaults: a trigger without
them is refused by Airflow's param validation. This file only wires the task.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task


def _log_failure(context) -> None:
    from airflow_dags.runner import log_failure

    log_failure(context)


@task(retries=0, execution_timeout=pendulum.duration(hours=24), on_failure_callback=_log_failure)
def backfill(**context) -> dict:
    """Run `mmoe backfill` with the run's params and return its manifest (every day's status)."""
    from airflow_dags.runner import Settings, model_values, run_job

    params = context["params"]
    settings = Settings.from_airflow()
    return run_job(["backfill"], None, dataset=params["dataset"] or settings.dataset,
                   config=settings.config, launch=settings.launch(),
                   warehouse=settings.warehouse, start=params["start"], end=params["end"],
                   model=model_values(params["model"]), force=bool(params["force"]))


@dag(
    dag_id="mmoe_backfill",
    schedule=None,
    start_date=pendulum.datetime(2020, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["mmoe", "backfill"],
    doc_md=__doc__,
    params={
        "dataset": Param("", type="string", description="Dataset (empty: Variable mmoe_dataset)"),
        # no defaults: a trigger without a range is refused, not run over some month
        "start": Param(type="string", format="date", description="First ds (required)"),
        "end": Param(type="string", format="date", description="Last ds (required)"),
        "model": Param("@champion", type=["string", "array"],
                       description="Artifact directory, registered version, or @alias; or a "
                                   "list of them (an A/B's arms: each day validated once, "
                                   "every model scored)"),
        "force": Param(False, type="boolean", description="Redo up-to-date days"),
    },
)
def mmoe_backfill():
    backfill()


mmoe_backfill()
