"""Shared fixtures: one local SparkSession for the whole test run, a fresh warehouse per test."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

# py4j logs at INFO while the interpreter shuts down, after pytest closed its streams.
logging.getLogger("py4j").setLevel(logging.WARNING)

REPO = Path(__file__).resolve().parents[1]
CENSUS_FILE = REPO.parent / "shared" / "data" / "census" / "census-income.dev.data.gz"


def hive_settings(root: Path) -> dict[str, str]:
    """A Hive-enabled session's settings with its embedded Derby metastore, the catalog's
    warehouse and derby.log all under ``root`` (never in the working directory). Embedded Derby
    admits one JVM at a time: a second process needs its own ``root``."""
    return {
        "spark.sql.catalogImplementation": "hive",
        "spark.hadoop.javax.jdo.option.ConnectionURL":
            f"jdbc:derby:;databaseName={root / 'metastore_db'};create=true",
        "spark.sql.warehouse.dir": str(root / "spark-warehouse"),
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={root}",
    }


@pytest.fixture(scope="session")
def metastore_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("metastore")


@pytest.fixture(scope="session")
def spark(metastore_dir):
    """The one local session of the run. Hive-enabled (catalog tables, tests/test_tables.py):
    the Derby metastore starts on the first catalog call only, path-layout tests never pay it."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder
    for key, value in hive_settings(metastore_dir).items():
        builder = builder.config(key, value)
    session = (
        builder.master("local[2]")
        .appName("mmoe-tests")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def job_config(tmp_path):
    """The embedded config with a per-test warehouse and the test Spark settings."""
    from jobs.core.config import load_config

    cfg = load_config(warehouse=tmp_path / "wh")
    cfg.spark.master = "local[2]"
    cfg.spark.conf["spark.sql.shuffle.partitions"] = "4"
    return cfg


@pytest.fixture(scope="session")
def census_file() -> Path:
    if not CENSUS_FILE.exists():
        pytest.fail(f"the shared census file is missing: {CENSUS_FILE}")
    return CENSUS_FILE


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless chromium, installed by apt-get when missing (tests/browser.py)."""
    from browser import ensure_chromium

    binary, why = ensure_chromium()
    if binary is None:
        pytest.skip(f"headless browser unavailable: {why}")
    return binary


@pytest.fixture
def refused_config(tmp_path):
    """``refused_config(body, message)``: a config file holding ``body`` (YAML) is refused by
    ``load_config`` with a ConfigError matching ``message``."""
    from jobs.core.config import load_config
    from jobs.core.errors import ConfigError

    def check(body: str, message: str) -> None:
        path = tmp_path / "refused.yaml"
        path.write_text(body + "\n")
        with pytest.raises(ConfigError, match=message):
            load_config(path)

    return check
