"""What an Airflow task does: run an `mmoe` sub-command, return its manifest or fail loudly; and
the small decisions the nightly DAG needs (is the day's features partition there, which models
are in force, which day's labels have matured, does the CLI have `compare`).

Kept out of the DAG files so they parse fast and this logic is testable without Airflow. It
imports neither Spark, torch nor Great Expectations: the jobs run in their own `mmoe` process
(a Spark driver); the decisions read tables through the jobs' own table layer
(:func:`table_facts`: path tables here, catalog tables through ``mmoe tables``) and the registry
through ``jobs.core.registry``.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import shlex
import subprocess
from dataclasses import dataclass

from jobs.core.errors import PERMANENT, error_kind, is_permanent

log = logging.getLogger(__name__)


class JobFailed(RuntimeError):
    """The job exited non-zero; the message is its one-line error. ``permanent``: a retry
    cannot fix it (the job's manifest says ``error_kind: permanent``, or its exit status does:
    :func:`jobs.core.errors.is_permanent`)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def fail_fast(callable_):
    """Wrap an Airflow task callable: a failure a retry cannot fix (a permanent
    :class:`JobFailed`, or a typed error raised in the task itself, e.g. the registry's) fails
    the task at once with ``AirflowFailException``, skipping its retries; a transient one (a
    lock held by another run, a lost executor) is raised as it is, and Airflow retries it."""

    @functools.wraps(callable_)
    def task_callable(*args, **kwargs):
        try:
            return callable_(*args, **kwargs)
        except Exception as exc:
            permanent = exc.permanent if isinstance(exc, JobFailed) else \
                error_kind(exc) == PERMANENT and not _is_airflow(exc)
            if not permanent:
                raise
            # deferred: the DAG files import this module while they parse
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"{exc} (not retried: a retry cannot fix this)") from exc

    return task_callable


def _is_airflow(exc: BaseException) -> bool:
    """Airflow's own control-flow exceptions (skip, fail, reschedule) pass through."""
    return type(exc).__module__.split(".")[0] == "airflow"


def run_ds(data_interval_start) -> str:
    """The ds a scheduled run works on: the data interval's START date (the day whose data the
    interval covers), never the run's wall-clock time."""
    return data_interval_start.date().isoformat()


@dataclass(frozen=True)
class Settings:
    """The DAGs' settings: Airflow Variables (or ``AIRFLOW_VAR_*``), then ``MMOE_*`` env vars."""

    dataset: str = "synth"
    config: str | None = None
    warehouse: str | None = None
    mmoe_bin: str = "mmoe"
    model_dir: str | None = None     # legacy: score this directory when no registry exists
    compare_days: int = 7
    launcher: str = "console"         # console | spark-submit | connect (see Launch)
    remote: str | None = None         # connect: the Spark Connect URL (sc://HOST:PORT)
    spark_conn_id: str = "spark_default"  # spark-submit: the Airflow Spark connection
    code_zip: str | None = None       # spark-submit: the project zip (--py-files); None: built here
    submit_conf: str | None = None    # spark-submit: extra --conf as JSON {"key": "value"}

    @classmethod
    def from_airflow(cls) -> "Settings":
        from airflow.sdk import Variable

        def var(name: str, env: str | None = None, default=None):
            value = Variable.get(name, default=None)
            return value if value not in (None, "") else os.environ.get(env or "", default)

        return cls(dataset=var("mmoe_dataset", default="synth"),
                   config=var("mmoe_config", "MMOE_CONFIG"),
                   warehouse=var("mmoe_warehouse", "MMOE_WAREHOUSE"),
                   mmoe_bin=var("mmoe_bin", default="mmoe"),
                   model_dir=var("mmoe_model_dir"),
                   compare_days=int(var("mmoe_compare_days", default=7)),
                   launcher=var("mmoe_launcher", default="console"),
                   remote=var("mmoe_remote", "SPARK_REMOTE"),
                   spark_conn_id=var("mmoe_spark_conn_id", default="spark_default"),
                   code_zip=var("mmoe_code_zip"),
                   submit_conf=var("mmoe_submit_conf"))

    def launch(self) -> "Launch":
        return Launch(self.launcher, self.mmoe_bin, self.remote, self.spark_conn_id,
                      self.code_zip, json.loads(self.submit_conf) if self.submit_conf else {})

    def job_config(self):
        from jobs.core.config import load_config

        return load_config(self.config, self.warehouse)


LAUNCHERS = ("console", "spark-submit", "connect")


@dataclass(frozen=True)
class Launch:
    """How a job task starts its job (Airflow Variable ``mmoe_launcher``):

    - ``console`` (default): the ``mmoe_bin`` command line, a Spark driver on the Airflow worker;
    - ``connect``: the same command line with ``--remote URL`` (Variable ``mmoe_remote``, else
      ``SPARK_REMOTE``): the job is a thin Spark Connect client of that server;
    - ``spark-submit``: the provider's SparkSubmitHook (what ``SparkSubmitOperator`` runs) with the
      Airflow connection ``spark_conn_id`` (master, deploy mode, queue, spark binary), the
      project zip as ``--py-files`` and ``jobs/submit.py`` as the application, arguments built
      from the CLI's own definitions; ``conf`` adds ``--conf`` settings.
    """

    mode: str = "console"
    mmoe_bin: str = "mmoe"
    remote: str | None = None
    spark_conn_id: str = "spark_default"
    code_zip: str | None = None
    conf: dict | None = None

    def __post_init__(self) -> None:
        if self.mode not in LAUNCHERS:
            raise JobFailed(f"mmoe_launcher must be one of {', '.join(LAUNCHERS)}; got {self.mode!r}",
                            permanent=True)
        if self.mode == "connect" and not self.remote:
            raise JobFailed("mmoe_launcher is connect but no mmoe_remote (or SPARK_REMOTE) is set",
                            permanent=True)


def model_values(value: str | list[str]) -> list[str]:
    """The backfill DAG's ``model`` param: one reference or a list of them."""
    return [value] if isinstance(value, str) else [str(v) for v in value]


def build_command(subcommand: list[str], ds: str | None, dataset: str, model_dir: str | None,
                  config: str | None, mmoe_bin: str = "mmoe", warehouse: str | None = None,
                  **options: object) -> list[str]:
    """The ``mmoe`` command line, its flags taken from the CLI's own definitions. ``mmoe_bin``
    is split like a shell would: ``spark-submit --master yarn /opt/mmoe/jobs/submit.py`` runs
    the same job through spark-submit."""
    from jobs.cli import command_line

    given: dict[str, object] = {"config": config or None, "warehouse": warehouse or None,
                                "dataset": dataset, "ds": ds, **options}
    if subcommand[0] == "score":
        given["model"] = model_dir or None
    return [*shlex.split(mmoe_bin), *command_line(subcommand, **given)]


def run_job(subcommand: list[str], ds: str | None, dataset: str, model_dir: str | None = None,
            config: str | None = None, mmoe_bin: str = "mmoe", warehouse: str | None = None,
            launch: Launch | None = None, **options: object) -> dict:
    """Run one job; its manifest (the last stdout line) is the return value. Non-zero exit:
    :class:`JobFailed` with the command and the job's one-line error (stderr's last line).
    ``launch`` says how (:class:`Launch`; default: the ``mmoe_bin`` console script)."""
    launch = launch or Launch(mmoe_bin=mmoe_bin)
    if launch.mode == "connect":
        options = {**options, "remote": launch.remote}
    if launch.mode == "spark-submit":
        return submit_job(launch, build_command(subcommand, ds, dataset, model_dir, config, "",
                                                warehouse, **options))
    cmd = build_command(subcommand, ds, dataset, model_dir, config, launch.mmoe_bin, warehouse,
                        **options)
    log.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.stderr.strip():  # progress lines and summaries: the task log shows them
        log.info("%s", proc.stderr.strip()[-4000:])
    lines = proc.stdout.strip().splitlines()
    try:
        manifest = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        manifest = {}
    if proc.returncode != 0:
        error = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no error output"
        raise JobFailed(f"{' '.join(cmd)} exited {proc.returncode}: {error}",
                        permanent=is_permanent(manifest.get("error_kind"), proc.returncode))
    return manifest


def submit_job(launch: Launch, args: list[str]) -> dict:
    """``spark-submit [connection's settings] --py-files ZIP jobs/submit.py ARGS`` through the
    Spark provider's hook; the manifest is the last JSON line of the driver's output (client
    deploy mode: spark-submit relays it; in cluster mode read it from ``manifest_path``)."""
    # Deferred: the provider (and jobs.core.shipping) are needed only when a task runs.
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    from jobs.core.shipping import PROJECT_ROOT, project_zip

    lines: list[str] = []

    class ManifestHook(SparkSubmitHook):
        def _process_spark_submit_log(self, itr):
            def kept():
                for line in itr:
                    lines.append(line.rstrip("\n"))
                    del lines[:-200]
                    yield line
            return super()._process_spark_submit_log(kept())

    zip_path = launch.code_zip or str(project_zip())
    hook = ManifestHook(conn_id=launch.spark_conn_id, py_files=zip_path, conf=dict(launch.conf or {}),
                        application_args=args, name="mmoe", verbose=False)
    application = str(PROJECT_ROOT / "jobs" / "submit.py")
    log.info("spark-submit %s %s", application, " ".join(args))
    try:
        hook.submit(application)
    except Exception as exc:  # AirflowException: non-zero exit; name the job's own error line
        error = next((line for line in reversed(lines) if line.startswith("error: ")), None)
        raise JobFailed(f"spark-submit {' '.join(args)} failed: "
                        f"{error or str(exc).strip().splitlines()[0]}",
                        permanent=is_permanent(_last_manifest(lines).get("error_kind"))) from None
    return _last_manifest(lines)


def _last_manifest(lines: list[str]) -> dict:
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return {}


def log_failure(context) -> None:
    """``on_failure_callback``: one line naming the task, the ds and the job's error."""
    exc = context.get("exception")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0] if exc else "unknown"
    ti = context.get("task_instance") or context.get("ti")
    interval = context.get("data_interval_start")
    log.error("mmoe task %s failed for ds=%s: %s", getattr(ti, "task_id", "?"),
              run_ds(interval) if interval is not None else "?", first)


# --------------------------------------------------------------------------------------------
# The nightly DAG's decisions


def table_facts(settings: Settings, table: str, ds: str) -> dict:
    """What the dataset's logical ``table`` holds on ``ds``, through the jobs' own table layer
    (``jobs.core.table_facts``): a path table is read here; a table the config maps to the
    Spark catalog is asked through ``mmoe tables``, launched like every job (its own driver,
    the Connect server or spark-submit), so the DAG sees exactly what the jobs read."""
    from jobs.core.table_facts import is_catalog
    from jobs.core.table_facts import table_facts as local_facts

    cfg = settings.job_config()
    if not is_catalog(cfg, settings.dataset, table):
        return local_facts(cfg, settings.dataset, table, ds).as_dict()
    manifest = run_job(["tables"], ds, settings.dataset, config=settings.config,
                       launch=settings.launch(), warehouse=settings.warehouse, table=table)
    return manifest["details"]


def features_ready(settings: Settings, ds: str) -> bool:
    """The sensor's check: the day's features partition holds data."""
    return bool(table_facts(settings, "features", ds)["exists"])


def models_to_score(settings: Settings, ds: str) -> list[str]:
    """The registered versions to score on ``ds``: the champion in force, then every challenger
    in force. Without any registry for the dataset, the legacy ``mmoe_model_dir`` Variable."""
    from jobs.core.registry import Registry, models_in_force
    from jobs.core.warehouse import Warehouse

    cfg = settings.job_config()
    registry = Registry.read(Warehouse(cfg.warehouse), settings.dataset)
    if not registry.models and settings.model_dir:
        return [settings.model_dir]
    chosen = models_in_force(cfg, settings.dataset, ds)
    if not chosen or chosen[0]["alias"] != "champion":
        raise JobFailed(f"no @champion of {settings.dataset} in force on {ds}: register and "
                        f"promote one (mmoe models promote V --alias champion --effective D)",
                        permanent=True)
    return [c["version"] for c in chosen]


def matured_ds(settings: Settings, ds: str) -> str:
    """The day whose labels are final on ``ds``: ds - evaluation.label_wait_days."""
    wait = settings.job_config().evaluation.label_wait_days
    return (dt.date.fromisoformat(ds) - dt.timedelta(days=wait)).isoformat()


def has_predictions(settings: Settings, ds: str) -> bool:
    """Whether any model version's predictions of ``ds`` hold data."""
    return bool(table_facts(settings, "predictions", ds)["sub_partitions"].get("model_version"))


def compare_pairs(versions: list[str]) -> list[dict[str, str]]:
    """Champion (the first) against each challenger."""
    return [{"baseline": versions[0], "candidate": v} for v in versions[1:]]
