"""One place that builds the SparkSession from the job config."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pyspark.sql import SparkSession

from jobs.core.config import SparkConfig

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
    """Get or create the session. Under spark-submit the master is already set and wins."""
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
    spark.sparkContext.setLogLevel("ERROR")
    return spark


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
    """Tag the Spark jobs run inside (to count them), then restore the caller's group."""
    sc = spark.sparkContext
    keys = ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")
    previous = {k: sc.getLocalProperty(k) for k in keys}
    sc.setJobGroup(group, description)
    try:
        yield
    finally:
        for key, value in previous.items():
            sc.setLocalProperty(key, value)


def jobs_in_group(spark: SparkSession, group: str) -> int:
    return len(spark.sparkContext.statusTracker().getJobIdsForGroup(group))
