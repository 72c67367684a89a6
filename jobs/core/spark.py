"""One place that builds the SparkSession from the job config, classic or Spark Connect.

Spark Connect (``spark.remote`` in the config, ``SPARK_REMOTE``, or ``mmoe --remote URL``): the
session is a client of that server (no master is set; no ``SparkContext``). The few things the
jobs took from the ``SparkContext`` have one Connect-safe helper each here: :func:`ship` (a value
every task reads: a broadcast in classic mode, carried in the task's closure over Connect),
:func:`default_parallelism`, :func:`job_group` / :func:`jobs_in_group` (None, "unknown", over
Connect: it has no status tracker). The client ships the project's code to the server as a
pyfile artifact (:func:`jobs.core.shipping.project_zip`), so the server's Python needs only the
dependencies.
"""

from __future__ import annotations

import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, Iterator, TypeVar
from urllib.parse import urlparse

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs.core import signals
from jobs.core.config import SparkConfig
from jobs.core.errors import ConfigError, SparkUnavailable
from jobs.core.shipping import project_zip
from jobs.core.warehouse import require_columns, spark_paths

LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")


def driver_settings(cfg: SparkConfig, stderr_is_tty: bool, submitted: bool) -> dict[str, str]:
    """The settings a new session gets: the config's, plus

    - ``spark.ui.showConsoleProgress`` true only when stderr is a terminal (unless the config
      sets it): in a log file or a pipe the progress bar is ``\r``-separated junk on the line
      of the job's one-line error;
    - outside spark-submit (which starts the driver JVM before we run), the driver JVM's log4j
      configuration ``jobs/core/log4j2.properties`` (errors only), unless the config names its own.
    """
    settings = dict(cfg.conf)
    settings.setdefault("spark.ui.showConsoleProgress", "true" if stderr_is_tty else "false")
    if not submitted:
        options = settings.get("spark.driver.extraJavaOptions", "")
        if "log4j2.configurationFile" not in options:
            settings["spark.driver.extraJavaOptions"] = (
                f"{options} -Dlog4j2.configurationFile={LOG4J_CONFIG.as_uri()}").strip()
    return settings


def get_spark(cfg: SparkConfig) -> SparkSession:
    """Get or create the session: a Spark Connect client when ``cfg.remote`` is set (the CLI
    fills it from ``--remote`` / ``SPARK_REMOTE``), else classic. Under spark-submit the master is
    already set and wins."""
    remote = cfg.remote or os.environ.get("SPARK_REMOTE")
    if remote:
        return connect_session(cfg, remote)
    # Executors must run the same interpreter as the driver (the project's venv).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(cfg.app_name)
    submitted = launched_by_spark_submit()
    if not submitted:
        builder = builder.master(cfg.master)
    for key, value in driver_settings(cfg, _stderr_is_tty(), submitted).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    signals.reinstall()  # SparkContext installs its own SIGINT handler; a job's stop is ours
    spark.sparkContext.setLogLevel("ERROR")
    return spark


# How long the client waits for a Connect server to accept its connection before giving up.
CONNECT_TIMEOUT_S = 5.0


def check_remote(url: str, timeout: float = CONNECT_TIMEOUT_S) -> tuple[str, int]:
    """``sc://host[:port][/;params]`` parsed, and its server accepting TCP connections within
    ``timeout``; else a one-line error (the client itself would retry for minutes)."""
    parsed = urlparse(url)
    try:
        port = parsed.port or 15002
    except ValueError:
        raise ConfigError(f"Spark Connect URL {url!r}: the port is not a number") from None
    if parsed.scheme != "sc" or not parsed.hostname:
        raise ConfigError(f"Spark Connect URL {url!r}: expected sc://HOST[:PORT]")
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise SparkUnavailable(f"Spark Connect server {url} unreachable: {reason}") from None
    return parsed.hostname, port


def connect_session(cfg: SparkConfig, url: str) -> SparkSession:
    """A Spark Connect session for ``url`` with the config's settings that a session can set
    (the SQL ones, and any other the server says is modifiable; the ones only a driver's start
    can set, such as memory or the UI, belong to the server: the client would print a warning
    for each) and the project's code added to it."""
    check_remote(url)
    builder = SparkSession.builder.remote(url).appName(cfg.app_name)
    for key, value in cfg.conf.items():
        if key.startswith("spark.sql."):
            builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
        for key, value in cfg.conf.items():
            if not key.startswith("spark.sql.") and spark.conf.isModifiable(key):
                spark.conf.set(key, value)
        ship_code(spark)
    except Exception as exc:  # grpc/pyspark errors: keep the first line only
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SparkUnavailable(f"Spark Connect server {url}: {first}") from None
    return spark


def ship_code(spark: SparkSession) -> None:
    """Add the project's code zip to this Connect session (once per session and code version):
    the server's Python workers import ``jobs`` / ``mmoe_model`` / ``schemas`` from it."""
    path = project_zip()
    shipped = getattr(spark, "_mmoe_code", None)
    if shipped == path.name:
        return
    spark.addArtifacts(str(path), pyfile=True)
    spark._mmoe_code = path.name


def is_connect(spark: SparkSession) -> bool:
    """A Spark Connect session (its classes live in ``pyspark.sql.connect``)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


T = TypeVar("T")


class Carried(Generic[T]):
    """A broadcast's stand-in over Spark Connect: the value travels in the task's closure."""

    def __init__(self, value: T) -> None:
        self.value = value


def ship(spark: SparkSession, value: T) -> Any:
    """A handle whose ``.value`` every task reads: a broadcast (classic: sent once per
    executor), or the value itself in the closure (Connect: no SparkContext, no broadcast; the
    closure is sent with the plan, so keep it to what a broadcast would hold: MBs, not GBs)."""
    if is_connect(spark):
        return Carried(value)
    return spark.sparkContext.broadcast(value)


def default_parallelism(spark: SparkSession) -> int:
    """The cores Spark schedules on: ``sc.defaultParallelism``; over Connect the partition count
    of a ``range`` left to its default (which is that same number on the server), measured once
    per session."""
    if not is_connect(spark):
        return spark.sparkContext.defaultParallelism
    cached = getattr(spark, "_mmoe_parallelism", None)
    if cached is None:
        row = spark.range(0, 1 << 12).select(F.spark_partition_id().alias("p")).agg(
            F.max("p").alias("p")).first()
        cached = spark._mmoe_parallelism = int(row["p"]) + 1
    return cached


def _stderr_is_tty() -> bool:
    try:
        return os.isatty(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # replaced or closed stderr: not a terminal
        return False


def launched_by_spark_submit() -> bool:
    """spark-submit starts the JVM first and hands the Python driver its gateway port."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


@contextmanager
def session_conf(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """Apply ``settings`` to the session for the duration of a stage and restore the caller's
    values (or unset them) afterwards, also when the stage fails: a stage never leaves its
    tuning behind for the next one sharing the session."""
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, str(value))
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


@contextmanager
def job_group(spark: SparkSession, group: str, description: str) -> Iterator[None]:
    """Tag the Spark jobs run inside (to count them), then restore the caller's group. Over
    Connect the operations get ``group`` as a tag (so they can be found and interrupted)."""
    if is_connect(spark):
        spark.addTag(group)
        try:
            yield
        finally:
            spark.removeTag(group)
        return
    sc = spark.sparkContext
    keys = ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")
    previous = {k: sc.getLocalProperty(k) for k in keys}
    sc.setJobGroup(group, description)
    try:
        yield
    finally:
        for key, value in previous.items():
            sc.setLocalProperty(key, value)


def jobs_in_group(spark: SparkSession, group: str) -> int | None:
    """Spark jobs run in ``group`` so far; None (unknown) over Connect: no status tracker."""
    if is_connect(spark):
        return None
    return len(spark.sparkContext.statusTracker().getJobIdsForGroup(group))


def read_partition(spark: SparkSession, directory: Path, columns: list[str] | None = None,
                   what: str = "partition", schema: Any = None):
    """The one Spark read of a partition directory (a path table's, :mod:`jobs.core.tables`:
    stages read through their tables): exactly the files :func:`parquet_files` lists (never the
    bare directory), with ``schema`` when given (no inference), the requested ``columns``
    checked (one line naming what lacks which) and selected."""
    reader = spark.read if schema is None else spark.read.schema(schema)
    frame = reader.parquet(*spark_paths(directory))
    if columns is None:
        return frame
    require_columns(frame.columns, columns, what, directory)
    return frame.select(*columns)
