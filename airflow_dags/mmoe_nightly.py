"""Nightly scoring: features sensor → validate → score (champion + challengers) → evaluate the
matured day → compare.

This file only wires tasks; what they do is in `airflow_dags/runner.py` and the `mmoe` CLI. Every
task works on the run's ds (the data interval's start date, never now()), so a retry or a rerun
replaces its own partitions:

1. `wait_for_features` — sensor (reschedule mode, so it holds no worker slot while waiting;
   times out after 12 h) until `<wh>/<dataset>/features/ds=D` has data;
2. `validate` — `mmoe validate` for ds (with `drift.on_drift: fail` a drifted feature fails it,
   so nothing downstream scores that day);
3. `models_in_force` → `score` — the champion and every challenger (aliases `challenger*`) in
   force on ds, read from the model registry; one mapped `mmoe score --model V` each;
4. `evaluate` — `mmoe evaluate` for ds − `evaluation.label_wait_days` (the day whose labels
   have matured), all model versions scored that day; skipped when that day has no predictions
   (the first days of a new pipeline);
5. `compare` — `mmoe compare` champion vs each challenger over the trailing
   `mmoe_compare_days` days ending at the matured day; skipped while the CLI has no `compare`.

Each job task runs one job and returns its manifest (XCom); how is the Variable `mmoe_launcher`
(README "Deploying the DAGs"): `console` (default: the `mmoe_bin` command, a Spark driver
itself), `spark-submit` (the Spark provider's SparkSubmitHook with connection
`mmoe_spark_conn_id`, default `spark_default`, the project zip and `jobs/submit.py`) or
`connect` (the `mmoe_bin` command with `--remote` `mmoe_remote`). Retries, an execution timeout and a failure callback that logs the
job's one-line error are set on every task. `score` and `evaluate` update the Assets
`mmoe_predictions` / `mmoe_metrics` (extra: dataset, ds, model version, path), so downstream
DAGs can be scheduled on them.

Settings: Airflow Variables `mmoe_dataset` (default `synth`), `mmoe_config`, `mmoe_warehouse`,
`mmoe_bin` (default `mmoe`; may be a `spark-submit ... jobs/submit.py` command line),
`mmoe_compare_days` (7), `mmoe_model_dir` (legacy, used only when the dataset has no registry);
`MMOE_CONFIG` / `MMOE_WAREHOUSE` env vars as fall-backs. The start date is `MMOE_START_DATE`
(env, read when the file is parsed; default 2020-01-01) with catchup off: `airflow dags test
mmoe_nightly <any date after it>` really runs.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import Asset, CronDataIntervalTimetable, dag, task

PREDICTIONS = Asset(name="mmoe_predictions", uri="mmoe://warehouse/predictions")
METRICS = Asset(name="mmoe_metrics", uri="mmoe://warehouse/metrics")
START_DATE = pendulum.parse(os.environ.get("MMOE_START_DATE", "2020-01-01"), tz="UTC")


def _log_failure(context) -> None:
    from airflow_dags.runner import log_failure

    log_failure(context)


JOB_TASK = dict(retries=2, retry_delay=pendulum.duration(minutes=5),
                execution_timeout=pendulum.duration(hours=3), on_failure_callback=_log_failure)


def _settings():
    from airflow_dags.runner import Settings

    return Settings.from_airflow()


def _record_assets(context, manifest: dict, ds: str) -> None:
    """Tell downstream DAGs what changed (dataset, ds, model version, path)."""
    events = context.get("outlet_events")
    task_ = context.get("task")
    if events is None or task_ is None:
        return
    for asset in task_.outlets:
        events[asset].extra = {"dataset": manifest.get("dataset"), "ds": ds,
                               "model_version": manifest.get("model_version"),
                               "path": next(iter((manifest.get("outputs") or {}).values()), None)}


@task(**JOB_TASK)
def run_mmoe(subcommand: list[str], model: str | None = None, **context) -> dict:
    """Run one `mmoe` job for this run's ds and return its manifest."""
    from airflow_dags.runner import run_ds, run_job

    settings = _settings()
    ds = run_ds(context["data_interval_start"])
    manifest = run_job(subcommand, ds, dataset=settings.dataset,
                       model_dir=model or settings.model_dir, config=settings.config,
                       launch=settings.launch(), warehouse=settings.warehouse)
    _record_assets(context, manifest, ds)
    return manifest


@task.sensor(task_id="wait_for_features", mode="reschedule", poke_interval=300,
             timeout=12 * 3600, on_failure_callback=_log_failure)
def wait_for_features(**context) -> bool:
    from airflow_dags.runner import features_ready, run_ds

    return features_ready(_settings(), run_ds(context["data_interval_start"]))


@task(**JOB_TASK)
def models_in_force(**context) -> list[str]:
    from airflow_dags.runner import models_to_score, run_ds

    return models_to_score(_settings(), run_ds(context["data_interval_start"]))


@task(outlets=[METRICS], **JOB_TASK)
def evaluate_matured(**context) -> dict:
    from airflow.sdk.exceptions import AirflowSkipException

    from airflow_dags.runner import has_predictions, matured_ds, run_ds, run_job

    settings = _settings()
    day = matured_ds(settings, run_ds(context["data_interval_start"]))
    if not has_predictions(settings, day):
        raise AirflowSkipException(f"no predictions for the matured day {day}: nothing to evaluate")
    manifest = run_job(["evaluate"], day, dataset=settings.dataset, config=settings.config,
                       launch=settings.launch(), warehouse=settings.warehouse)
    _record_assets(context, manifest, day)
    return manifest


@task
def challenger_pairs(versions: list[str]) -> list[dict[str, str]]:
    from airflow_dags.runner import compare_pairs

    return compare_pairs(versions)


@task(**JOB_TASK)
def compare(pair: dict[str, str], **context) -> dict:
    import datetime as dt

    from airflow_dags.runner import matured_ds, run_ds, run_job

    settings = _settings()
    end = matured_ds(settings, run_ds(context["data_interval_start"]))
    start = (dt.date.fromisoformat(end) - dt.timedelta(days=settings.compare_days - 1)).isoformat()
    return run_job(["compare"], None, dataset=settings.dataset, config=settings.config,
                   launch=settings.launch(), warehouse=settings.warehouse,
                   baseline=pair["baseline"], candidate=pair["candidate"], start=start, end=end)


@dag(
    dag_id="mmoe_nightly",
    schedule=CronDataIntervalTimetable("0 3 * * *", timezone="UTC"),  # ds = yesterday
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["mmoe", "scoring"],
    doc_md=__doc__,
)
def mmoe_nightly():
    validated = run_mmoe.override(task_id="validate")(["validate"])
    versions = models_in_force()
    scored = (run_mmoe.override(task_id="score", outlets=[PREDICTIONS],
                                map_index_template="{{ task.op_kwargs['model'] }}")
              .partial(subcommand=["score"]).expand(model=versions))
    evaluated = evaluate_matured.override(task_id="evaluate")()
    compared = compare.expand(pair=challenger_pairs(versions))
    wait_for_features() >> validated >> versions
    scored >> evaluated >> compared


mmoe_nightly()
