"""One real Spark Connect server for the pytest session (issue 19), started from the Connect jar
that pyspark ships: ``spark-submit --class ...SparkConnectServer`` on 127.0.0.1, a free port,
local[2], every directory under a temp root, stopped by its pid (and its process group: the
Python workers it forked).

The server's Python workers run the venv's interpreter WITHOUT the project: cwd in the temp
root, and PYTHONPATH holds only a ``sitecustomize`` that removes the venv's editable-install
finder of the project (so ``import jobs`` fails there unless the client shipped its code). The
jobs ship it (``jobs.core.spark`` adds the project zip as a pyfile artifact), exactly as on a
real Connect cluster whose Python has only the dependencies.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from _cluster import free_port

REPO = Path(__file__).resolve().parents[1]

HIDE_PROJECT = """import sys
sys.meta_path[:] = [f for f in sys.meta_path  # the finder is installed as a class
                    if getattr(f, "__name__", type(f).__name__) != "_EditableFinder"]
"""


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


class ConnectServer:
    def __init__(self, root: Path, python: str):
        self.root = root
        self.port = free_port()
        self.python = python
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"sc://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        hide = self.root / "no-project"
        hide.mkdir(parents=True, exist_ok=True)
        (hide / "sitecustomize.py").write_text(HIDE_PROJECT)
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "SPARK_REMOTE", "PYSPARK_GATEWAY_PORT", "MMOE_CONFIG",
                            "MMOE_WAREHOUSE")}
        env.update(SPARK_HOME=str(spark_home()), SPARK_LOCAL_IP="127.0.0.1",
                   PYSPARK_PYTHON=self.python, PYSPARK_DRIVER_PYTHON=self.python,
                   SPARK_LOG_DIR=str(self.root / "logs"), SPARK_NO_DAEMONIZE="1", PYTHONPATH=str(hide))
        return env

    def start(self, timeout: float = 180) -> None:
        self.launch()
        self.wait(timeout)

    def launch(self) -> None:
        """Start the server process (returns at once: the JVM takes ~40 s to listen)."""
        self.root.mkdir(parents=True, exist_ok=True)
        conf = {
            "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.connect.grpc.binding.port": str(self.port),
            "spark.ui.enabled": "false",
            "spark.sql.warehouse.dir": str(self.root / "spark-warehouse"),
            "spark.local.dir": str(self.root / "local"),
            "spark.driver.extraJavaOptions":
                f"-Dderby.system.home={self.root} "
                f"-Dlog4j2.configurationFile={(REPO / 'jobs' / 'core' / 'log4j2.properties').as_uri()}",
            "spark.pyspark.python": self.python,
        }
        command = [str(spark_home() / "bin" / "spark-submit"), "--master", "local[2]",
                   "--driver-memory", "1500m",
                   "--class", "org.apache.spark.sql.connect.service.SparkConnectServer"]
        for key, value in conf.items():
            command += ["--conf", f"{key}={value}"]
        command.append("spark-internal")
        log = open(self.root / "server.log", "w")
        self.proc = subprocess.Popen(command, env=self.env(), cwd=self.root, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.launched = time.monotonic()

    def wait(self, timeout: float = 180) -> None:
        """Until the server accepts connections (or fail with its log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Spark Connect server exited: {self.log()}")
            with socket.socket() as s:
                s.settimeout(1)
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"the Spark Connect server did not listen within {timeout:.0f}s: {self.log()}")

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=20)


class ExternalServer:
    """A server started by hand (``MMOE_TEST_CONNECT_URL``, for quick iterations)."""

    def __init__(self, url: str):
        self.url = url

    def log(self) -> str:
        return ""


if __name__ == "__main__":  # a dev server: python tests/_connect.py ROOT
    server = ConnectServer(Path(sys.argv[1]), sys.executable)
    server.start()
    print(server.url, server.proc.pid, flush=True)
    try:
        server.proc.wait()
    finally:
        server.stop()
