"""Helpers of the reliability tests (test_bad_input, test_faults, test_cluster, test_security):
tiny partitions written with pyarrow, a tiny model artifact, a test job config, and running the
real `mmoe` CLI in a subprocess (stderr a pipe, not a terminal)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]

# The one line the JVM launcher itself prints at start (Spark 4 adds --add-modules
# jdk.incubator.vector to every JVM it starts; no logging setting silences it).
JVM_BANNER = re.compile(r"^WARNING: Using incubator modules: jdk\.incubator\.vector$")


def good_columns(spec, n: int, seed: int = 0, first_key: int = 0) -> dict[str, list]:
    """Feature-table columns of ``n`` rows that satisfy every rule of ``spec``."""
    from test_validate import good_rows

    return good_rows(spec, n, seed=seed, first_key=first_key)


def label_columns(spec, keys: list, seed: int = 0) -> dict[str, list]:
    rng = np.random.default_rng(seed + 1000)
    cols: dict[str, list] = {spec.key_names[0]: list(keys)}
    for t in spec.task_names:
        cols[t] = [int(v) for v in rng.integers(0, 2, len(keys))]
    return cols


def write_parquet(directory: Path, cols: dict[str, list], schema: pa.Schema,
                  name: str = "part-00000.parquet", fresh: bool = True) -> Path:
    """pyarrow write that keeps NaN as NaN; every field nullable; columns not in ``schema``
    (an extra or renamed column) get the type pyarrow infers from their values."""
    schema = pa.schema([f.with_nullable(True) for f in schema if f.name in cols] +
                       [pa.field(n, pa.array(cols[n]).type) for n in cols if n not in schema.names])
    if fresh:
        shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.table({f.name: pa.array(cols[f.name], f.type) for f in schema}, schema=schema)
    pq.write_table(table, directory / name)
    return directory / name


def write_day(wh_root: Path, spec, ds: str, n: int = 400, seed: int = 0, first_key: int = 0,
              features: dict | None = None, labels: dict | None = None) -> tuple[dict, dict]:
    """A features and a labels partition of ``n`` good rows (or the given columns)."""
    from jobs.core.warehouse import Warehouse
    from schemas.tables import features_arrow_schema, labels_arrow_schema

    wh = Warehouse(wh_root)
    features = features if features is not None else good_columns(spec, n, seed, first_key)
    labels = labels if labels is not None else label_columns(
        spec, [k for k in features[spec.key_names[0]] if k is not None], seed)
    write_parquet(wh.partition(spec.name, "features", ds), features, features_arrow_schema(spec))
    write_parquet(wh.partition(spec.name, "labels", ds), labels, labels_arrow_schema(spec))
    return features, labels


def tiny_model(out: Path, spec, seed: int = 0) -> Path:
    """A small untrained MMoE artifact for ``spec`` (seeded): enough to score with."""
    import torch

    from mmoe_model.artifact import save_artifact
    from mmoe_model.features import FeatureEncoder, InputLayout
    from mmoe_model.models import ModelConfig, build_model
    from mmoe_model.sample import sample_frame

    torch.manual_seed(seed)
    config = ModelConfig(arch="mmoe", num_experts=2, expert_hidden=(8,), expert_dim=4,
                         tower_hidden=(4,))
    model = build_model(config, InputLayout.from_spec(spec), len(spec.tasks)).eval()
    frame = sample_frame(spec, 300, seed=seed, null_fraction=0.0, oov_fraction=0.0)
    save_artifact(out, model, config, spec, FeatureEncoder.fit(spec, frame))
    return out


def job_config_file(path: Path, master: str = "local[2]", **sections) -> Path:
    """A job config for the CLI tests: the test session's Spark settings (tests/conftest.py),
    small memory, and the given sections merged over the embedded defaults."""
    cfg = {
        "spark": {"master": master, "app_name": "mmoe-reliability", "conf": {
            "spark.sql.shuffle.partitions": "4",
            "spark.sql.sources.partitionOverwriteMode": "dynamic",
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            "spark.sql.session.timeZone": "UTC",
            "spark.ui.enabled": "false",
            "spark.driver.memory": "1g",
        }},
        "scoring": {"batch_size": 64},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli_env(**extra: str) -> dict[str, str]:
    # (SPARK_SUBMIT_OPTS: the tests' JVM options, tests/conftest.py; nothing of a session's state)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MMOE_", "PYSPARK_", "SPARK_"))
           or k in ("SPARK_HOME", "SPARK_SUBMIT_OPTS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in
                                                       env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(extra)
    return env


def mmoe_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", *args]


def run_cli(args: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess; stdout and stderr are pipes (not terminals)."""
    return subprocess.run(mmoe_command(*args), cwd=REPO, env=env or cli_env(), timeout=timeout,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)


def last_manifest(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def assert_clean_error(stderr: str, *needles: str) -> str:
    """stderr is ``error: ...`` as its last line, with no progress-bar text anywhere; any other
    line is the JVM launcher's banner. Returns the error line."""
    assert "\r" not in stderr and "[Stage" not in stderr, f"progress-bar text on stderr: {stderr!r}"
    lines = stderr.strip("\n").split("\n")
    assert lines and lines[-1].startswith("error: "), f"stderr does not end with the error: {stderr!r}"
    others = [line for line in lines[:-1] if not JVM_BANNER.match(line)]
    assert not others, f"stderr has more than the one error line: {others!r}"
    for needle in needles:
        assert needle in lines[-1], f"{needle!r} not in {lines[-1]!r}"
    return lines[-1]


def start_cli(args: list[str], env: dict, log_dir: Path) -> subprocess.Popen:
    """The CLI in the background, in its own process group (so that the JVM it starts can be
    found and killed by the group id, which is this process's pid)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(mmoe_command(*args), cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=open(log_dir / "stdout", "w"), stderr=open(log_dir / "stderr", "w"),
                            start_new_session=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the job ended (rc {proc.returncode}) before reaching {path.name}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the job did not reach {path.name} within {timeout:.0f}s")
        time.sleep(0.2)


def kill_group(proc: subprocess.Popen) -> None:
    """``kill -9`` the CLI's Python driver, then its process group (the JVM it launched, which
    would also exit on its own once its stdin closes)."""
    import signal

    for kill in (os.kill, os.killpg):
        try:
            kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if kill is os.kill:
            proc.wait(timeout=60)


def run_concurrently(fn, threads: int) -> list[BaseException]:
    """Run ``fn`` in ``threads`` threads at once; the exceptions they raised (none: [])."""
    errors: list[BaseException] = []

    def guarded():
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)

    started = [threading.Thread(target=guarded) for _ in range(threads)]
    for t in started:
        t.start()
    for t in started:
        t.join()
    return errors
