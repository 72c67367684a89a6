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

# Every JVM the tests start (the session's, the CLI subprocesses', spark-submit drivers, the
# Connect server, the cluster's daemons and executors) runs HotSpot's C1 compiler only. They are
# short-lived and small-data, so C2's compiler threads cost more CPU than their code saves:
# measured on the 2-core VM, two concurrent local sessions each running the same few small jobs
# took 10 s to start and 19 s to work, 5 s and 10 s with C1 only. Inherited through the
# environment (spark-submit reads SPARK_SUBMIT_OPTS); tests/_cluster.py passes it on to the
# daemons and executors.
# C1 alone gets a 48 MiB code cache by default: the session JVM of a pytest-xdist worker, which
# runs hundreds of tests' Spark jobs, filled it ("CodeCache is full. Compiler has been
# disabled"), ran interpreted from then on, and failed the next job that needed an adapter
# (a Py4JJavaError in codegen, seen in the demo test). The cache is reserved, not committed.
JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=512m"
if JVM_OPTIONS not in os.environ.get("SPARK_SUBMIT_OPTS", ""):
    os.environ["SPARK_SUBMIT_OPTS"] = f"{os.environ.get('SPARK_SUBMIT_OPTS', '')} {JVM_OPTIONS}".strip()
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
        # the Thrift server a test starts in this JVM (tests/test_tables.py): a free port on
        # loopback (only settings given at the session's start reach it)
        "spark.hadoop.hive.server2.thrift.port": "0",
        "spark.hadoop.hive.server2.thrift.bind.host": "127.0.0.1",
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


_CONNECT: dict = {}


def pytest_collection_modifyitems(session, config, items):
    """When a collected test needs the Spark Connect server, start it now, in the background:
    its ~40 s JVM start overlaps the tests that run before it."""
    if os.environ.get("MMOE_TEST_CONNECT_URL"):  # a developer's running server (tests/_connect.py)
        return
    # Under pytest-xdist every worker collects every test: the one that runs them launches the
    # server from the fixture instead (the other worker's tests overlap its start there).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if any("connect_server" in getattr(item, "fixturenames", ()) for item in items):
        _launch_connect_server()


def _launch_connect_server():
    import tempfile

    from _connect import ConnectServer

    server = ConnectServer(Path(tempfile.mkdtemp(prefix="mmoe-connect-")), sys.executable)
    server.launch()
    _CONNECT["server"] = server
    return server


@pytest.fixture(scope="session")
def connect_server():
    """ONE real Spark Connect server for the session (tests/_connect.py): loopback, free port,
    temp dirs, its Python without the project; stopped by pid at the end."""
    import shutil

    if os.environ.get("MMOE_TEST_CONNECT_URL"):
        from _connect import ExternalServer

        yield ExternalServer(os.environ["MMOE_TEST_CONNECT_URL"])
        return
    server = _CONNECT.get("server")
    if server is None and os.environ.get("PYTEST_XDIST_WORKER"):
        server = _launch_connect_server()
    if server is None:
        pytest.fail("the Connect server was not launched at collection")
    try:
        server.wait()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def standalone_cluster(tmp_path_factory):
    """ONE Spark standalone cluster (master + 2 one-core workers on 127.0.0.1) for the session
    (tests/_cluster.py); stopped by pid at the end, failing if a process survives."""
    from _cluster import Cluster

    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        alive = cluster.stop()
    assert not alive, f"cluster processes still alive: {alive}"


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


def pytest_unconfigure(config):
    """Never leave the Connect server behind (e.g. a run stopped by -x before its fixture)."""
    server = _CONNECT.pop("server", None)
    if server is not None:
        import shutil

        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
