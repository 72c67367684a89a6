"""A real Spark standalone cluster (issue 11, item 1): a master and two workers on 127.0.0.1,
started from the installed pyspark (``spark-class``), small memory, free ports. The project is
shipped the way the README tells a user to: a zip of its packages through ``--py-files`` (the
executors' Python is the same interpreter as the driver's: on one machine the venv itself; on a
real cluster an identical environment on every node, or the venv as an archive). validate →
score (both readers) → evaluate run with ``spark-submit --master spark://127.0.0.1:PORT
jobs/submit.py ...`` and their tables must equal a local-mode run of the same commands.

Every process this test starts is stopped by its pid (and its process group: the executors and
Python workers the workers launched), also when the test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml
from _reliability import (
    REPO,
    cli_env,
    job_config_file,
    last_manifest,
    tiny_model,
    write_day,
)
from typer.testing import CliRunner

from jobs.cli import app
from jobs.core.warehouse import Warehouse, read_table
from schemas import load_spec

DS_PREV, DS = "2026-06-01", "2026-06-02"
N = 500
KEY = "impression_id"


def spark_bin() -> Path:
    """``bin/`` of the installed pyspark (the same package the interpreter imports)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def project_zip(out: Path) -> Path:
    """The project's packages (code, specs, the default config, the log4j file) as one zip for
    ``--py-files``: what a user ships to the executors."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for package in ("jobs", "mmoe_model", "schemas"):
            for path in sorted((REPO / package).rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts \
                        and path.suffix in (".py", ".yaml", ".properties"):
                    zf.write(path, path.relative_to(REPO).as_posix())
    return out


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.port, self.ui_port = free_port(), free_port()
        self.env = {k: v for k, v in cli_env().items() if k != "PYTHONPATH"}  # nothing shared
        self.env.update(SPARK_HOME=str(spark_bin().parent), SPARK_LOCAL_IP="127.0.0.1",
                        SPARK_DAEMON_MEMORY="256m", SPARK_LOG_DIR=str(root / "logs"),
                        SPARK_NO_DAEMONIZE="1")

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def _start(self, name: str, *args: str) -> None:
        log = self.root / f"{name}.log"
        self.procs.append(subprocess.Popen(
            [str(spark_bin() / "spark-class"), *args], env=self.env, cwd=self.root,
            stdin=subprocess.DEVNULL, stdout=open(log, "w"), stderr=subprocess.STDOUT,
            start_new_session=True))

    def start(self, workers: int = 2, timeout: float = 120) -> None:
        self._start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                    "--port", str(self.port), "--webui-port", str(self.ui_port))
        for i in range(workers):
            work = self.root / f"worker{i}"
            work.mkdir()
            self._start(f"worker{i}", "org.apache.spark.deploy.worker.Worker", self.url,
                        "--host", "127.0.0.1", "--port", "0", "--webui-port", "0",
                        "--cores", "1", "--memory", "1g", "--work-dir", str(work))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise AssertionError(f"a cluster daemon exited: {self.logs()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as r:
                    if json.load(r).get("aliveworkers") == workers:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise AssertionError(f"{workers} workers did not register within {timeout:.0f}s: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}"
                         for p in sorted(self.root.glob("*.log")))

    def stop(self) -> list[int]:
        """SIGTERM each daemon by pid, then SIGKILL its process group (executors, Python
        workers); returns the pids still alive afterwards (none, unless something is wrong)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        return [p.pid for p in self.procs if p.poll() is None]

    def submit(self, zip_path: Path, config: Path, wh: Path, *args: str, ok: bool = True):
        command = [
            str(spark_bin() / "spark-submit"), "--master", self.url,
            "--py-files", str(zip_path),
            "--driver-memory", "512m", "--executor-memory", "512m",
            "--conf", "spark.executor.cores=1", "--conf", "spark.cores.max=2",
            "--conf", f"spark.pyspark.python={sys.executable}",
            "--conf", f"spark.pyspark.driver.python={sys.executable}",
            "--driver-java-options",
            f"-Dlog4j2.configurationFile={(REPO / 'jobs' / 'log4j2.properties').as_uri()}",
            str(REPO / "jobs" / "submit.py"),
            "--config", str(config), "--warehouse", str(wh), *args]
        result = subprocess.run(command, env=self.env, cwd=self.root, capture_output=True,
                                text=True, timeout=300, stdin=subprocess.DEVNULL)
        if not ok:
            return result
        assert result.returncode == 0, (args, result.stdout[-4000:], result.stderr[-4000:],
                                        self.logs())
        return last_manifest(result.stdout)


def _sorted(directory: Path, drop=("scored_at",)):
    table = read_table(directory)
    table = table.drop_columns([c for c in drop if c in table.column_names])
    keys = [c for c in (KEY, "model_version", "task", "segment", "metric") if c in table.column_names]
    return table.sort_by([(c, "ascending") for c in keys])


def _assert_close(got, want, atol=1e-6):
    assert got.column_names == want.column_names and got.num_rows == want.num_rows
    for name in got.column_names:
        a, b = got.column(name).to_pylist(), want.column(name).to_pylist()
        if pa.types.is_floating(got.schema.field(name).type):
            np.testing.assert_allclose(np.array(a, float), np.array(b, float), atol=atol, rtol=0)
        else:
            assert a == b, name


def test_standalone_cluster_matches_local_mode(spark, tmp_path):
    spec = load_spec("synth")
    model = tiny_model(tmp_path / "model", spec, seed=5)
    local_wh, cluster_wh = tmp_path / "local" / "wh", tmp_path / "cluster" / "wh"
    catalog_wh = tmp_path / "cluster" / "wh-catalog"  # issue 18: one catalog-table day
    for wh in (local_wh, cluster_wh, catalog_wh):
        write_day(wh, spec, DS_PREV, n=N, seed=1, first_key=0)
        cols, _ = write_day(wh, spec, DS, n=N, seed=2, first_key=N)
    # a few bad rows, so that the quarantine path (and the quarantined keys) run on executors
    for wh in (local_wh, cluster_wh, catalog_wh):
        bad = dict(cols)
        bad["x0"] = list(cols["x0"])
        for i in (3, 30, 300):
            bad["x0"][i] = float("nan")
        write_day(wh, spec, DS, features=bad)
    commands = [["validate", "--dataset", "synth", "--ds", DS],
                ["score", "--dataset", "synth", "--ds", DS, "--model", str(model)],
                ["evaluate", "--dataset", "synth", "--ds", DS]]

    # local mode (the test session)
    config = job_config_file(tmp_path / "local.yaml")
    runner = CliRunner()
    for args in commands:
        result = runner.invoke(app, ["--config", str(config), "--warehouse", str(local_wh), *args])
        assert result.exit_code == 0, (args, result.stderr)
    version = last_manifest(result.stdout)["model_version"]

    cluster = Cluster(tmp_path / "cluster")
    started = time.monotonic()
    try:
        cluster.start()
        zip_path = project_zip(tmp_path / "mmoe-project.zip")
        readers = {}
        for reader in ("direct", "spark"):
            cfg = job_config_file(tmp_path / f"cluster-{reader}.yaml",
                                  scoring={"batch_size": 64, "reader": reader})
            if reader == "direct":
                manifest = cluster.submit(zip_path, cfg, cluster_wh, *commands[0])
                assert manifest["quarantined_rows"] == 3
            manifest = cluster.submit(zip_path, cfg, cluster_wh, *commands[1])
            assert manifest["details"]["reader"] == reader
            readers[reader] = _sorted(Warehouse(cluster_wh).partition(
                "synth", "predictions", DS, model_version=version))
        evaluated = cluster.submit(zip_path, cfg, cluster_wh, *commands[2])
        assert evaluated["status"] == "succeeded"
        # A failure under spark-submit: Spark's PythonRunner merges the driver's stderr into
        # its stdout, so the error line comes just before the manifest, which stays last.
        failed = cluster.submit(zip_path, cfg, cluster_wh, "evaluate", "--dataset", "synth",
                                "--ds", "2026-02-30", ok=False)
        assert failed.returncode == 2, failed.stdout[-2000:]
        lines = failed.stdout.strip().splitlines()
        assert last_manifest(failed.stdout)["status"] == "failed"
        assert lines[-2].startswith("error: ") and "is not a valid date" in lines[-2]
        # One catalog-table day: quarantine, predictions and metrics mapped to tables of the
        # driver's own embedded metastore (one JVM per Derby: not the test session's), in one
        # backfill (validate -> score with the direct reader -> evaluate).
        manifest = cluster.submit(zip_path, catalog_config(tmp_path), catalog_wh, "backfill",
                                  "--dataset", "synth", "--start", DS, "--end", DS,
                                  "--model", str(model))
        assert [d["status"] for d in manifest["details"]["days"]] == ["scored"], manifest
    finally:
        alive = cluster.stop()
    assert not alive, f"cluster processes still alive: {alive}"
    seconds = time.monotonic() - started

    local, remote = Warehouse(local_wh), Warehouse(cluster_wh)
    want = _sorted(local.partition("synth", "predictions", DS, model_version=version))
    for reader, got in readers.items():
        _assert_close(got, want)
    _assert_close(_sorted(remote.partition("synth", "quarantine", DS)),
                  _sorted(local.partition("synth", "quarantine", DS)))
    _assert_close(_sorted(remote.partition("synth", "metrics", DS)),
                  _sorted(local.partition("synth", "metrics", DS)), atol=1e-9)
    for wh in (local, remote):
        status = json.loads(wh.status_path("synth", DS).read_text())
        assert (status["status"], status["passed_rows"], status["quarantined_rows"]) == \
            ("quarantined", N - 3, 3)
    tables = tmp_path / "cluster-metastore" / "spark-warehouse" / "day18.db"
    _assert_close(_sorted(tables / "predictions" / f"ds={DS}" / f"model_version={version}"), want)
    _assert_close(_sorted(tables / "quarantine" / f"ds={DS}"),
                  _sorted(local.partition("synth", "quarantine", DS)))
    _assert_close(_sorted(tables / "metrics" / f"ds={DS}"),
                  _sorted(local.partition("synth", "metrics", DS)), atol=1e-9)
    assert not Warehouse(catalog_wh).has_partition("synth", "predictions", DS,
                                                   model_version=version)
    print(f"cluster part of the test: {seconds:.1f}s")


def catalog_config(tmp_path: Path) -> Path:
    """The cluster job config of the catalog-table day: Hive catalog, Derby under tmp_path."""
    root = tmp_path / "cluster-metastore"
    base = job_config_file(tmp_path / "unused.yaml")
    conf = yaml.safe_load(base.read_text())["spark"]["conf"]
    conf.update({"spark.sql.catalogImplementation": "hive",
                 "spark.hadoop.javax.jdo.option.ConnectionURL":
                     f"jdbc:derby:;databaseName={root / 'metastore_db'};create=true",
                 "spark.sql.warehouse.dir": str(root / "spark-warehouse")})
    return job_config_file(
        tmp_path / "cluster-catalog.yaml", spark={"conf": conf},
        tables={"synth": {t: f"day18.{t}" for t in ("quarantine", "predictions", "metrics")}},
        validation={"keep_data_docs": False})
