"""A real Spark standalone cluster on 127.0.0.1 for the test session (``standalone_cluster`` in
tests/conftest.py): a master and two workers started from the installed pyspark
(``spark-class``), small memory, free ports, stopped by pid (and process group). Used by
tests/test_cluster.py (spark-submit of the jobs) and tests/test_dags.py (the nightly DAG through
the Spark provider's SparkSubmitHook)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from _reliability import REPO, cli_env, last_manifest


def spark_bin() -> Path:
    """``bin/`` of the installed pyspark (the same package the interpreter imports)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.port, self.ui_port = free_port(), free_port()
        self.env = {k: v for k, v in cli_env().items() if k != "PYTHONPATH"}  # nothing shared
        self.env.update(SPARK_HOME=str(spark_bin().parent), SPARK_LOCAL_IP="127.0.0.1",
                        SPARK_DAEMON_MEMORY="256m", SPARK_LOG_DIR=str(root / "logs"),
                        SPARK_NO_DAEMONIZE="1",
                        SPARK_DAEMON_JAVA_OPTS=os.environ.get("SPARK_SUBMIT_OPTS", ""))

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

    bin_dir = spark_bin()

    @staticmethod
    def submit_conf() -> dict[str, str]:
        """The --conf settings a job submitted to this cluster needs (small memory, the venv's
        Python on both sides, the project's log4j file)."""
        return {"spark.driver.memory": "512m", "spark.executor.memory": "512m",
                "spark.executor.cores": "1", "spark.cores.max": "2",
                "spark.pyspark.python": sys.executable, "spark.pyspark.driver.python": sys.executable,
                "spark.driver.extraJavaOptions":
                    f"-Dlog4j2.configurationFile={(REPO / 'jobs' / 'core' / 'log4j2.properties').as_uri()}",
                # the tests' JVM options (tests/conftest.py) for the executors too
                "spark.executor.extraJavaOptions": os.environ.get("SPARK_SUBMIT_OPTS", "")}

    def submit(self, zip_path: Path, config: Path, wh: Path, *args: str, ok: bool = True,
               executors: int = 2):
        """``spark-submit`` one job; ``executors``: one per worker (2) or just one (each costs
        a JVM and its Python workers on this 2-core machine)."""
        command = [str(spark_bin() / "spark-submit"), "--master", self.url, "--py-files", str(zip_path)]
        for key, value in {**self.submit_conf(), "spark.cores.max": str(executors)}.items():
            command += ["--conf", f"{key}={value}"]
        command += [
            str(REPO / "jobs" / "submit.py"),
            "--config", str(config), "--warehouse", str(wh), *args]
        result = subprocess.run(command, env=self.env, cwd=self.root, capture_output=True,
                                text=True, timeout=300, stdin=subprocess.DEVNULL)
        if not ok:
            return result
        assert result.returncode == 0, (args, result.stdout[-4000:], result.stderr[-4000:],
                                        self.logs())
        return last_manifest(result.stdout)
