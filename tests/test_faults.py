"""Faults (issue 11, item 2): injected task failures and Python worker crashes are retried to the
same output as a clean run; `kill -9` of a scoring or evaluation driver at the points of
`jobs.core.warehouse.replacing`'s crash window leaves exactly what its docstring promises, and a rerun
completes with no partial or duplicate rows.

The oracle is a clean run's output (read with pyarrow, sorted by key) and the filesystem itself
(which directories and files exist), not the code under test. The subprocess runs use
``local[2,4]`` (plain ``local[N]`` never retries a task).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from _reliability import (
    cli_env,
    job_config_file,
    kill_group,
    last_manifest,
    start_cli,
    tiny_model,
    wait_for,
    write_day,
    write_parquet,
)
from typer.testing import CliRunner

from jobs.cli import app
from jobs.core.warehouse import Warehouse, fingerprint
from schemas import load_spec
from schemas.tables import features_arrow_schema

DS = "2026-05-05"
N = 600
KEY = "impression_id"
runner = CliRunner()


def _mmoe(config: Path, wh: Path, *args: str):
    return runner.invoke(app, ["--config", str(config), "--warehouse", str(wh), *args])


def _table(directory: Path, drop=("scored_at",)):
    """A partition as a sorted pyarrow table (via the warehouse's listing: hidden names out)."""
    from jobs.core.warehouse import read_table

    table = read_table(directory)
    table = table.drop_columns([c for c in drop if c in table.column_names])
    return table.sort_by([(c, "ascending") for c in table.column_names
                          if c in (KEY, "model_version", "task", "segment", "metric")])


def _same_predictions(got, want, atol=1e-6):
    assert got.column_names == want.column_names
    assert got.column(KEY).to_pylist() == want.column(KEY).to_pylist()
    for name in got.column_names:
        if name.startswith("p_"):
            np.testing.assert_allclose(got.column(name).to_numpy(), want.column(name).to_numpy(),
                                       atol=atol, rtol=0)


@pytest.fixture(scope="module")
def base(spark, tmp_path_factory):
    """A validated day in two files (two direct-reader tasks, several batches each), scored and
    evaluated once cleanly: the reference every faulty run must reproduce."""
    spec = load_spec("synth")
    root = tmp_path_factory.mktemp("faults")
    wh = root / "wh"
    cols, _ = write_day(wh, spec, DS, n=N, seed=11)
    features = Warehouse(wh).partition("synth", "features", DS)
    half = N // 2
    write_parquet(features, {c: v[:half] for c, v in cols.items()}, features_arrow_schema(spec))
    write_parquet(features, {c: v[half:] for c, v in cols.items()}, features_arrow_schema(spec),
                  "part-00001.parquet", fresh=False)
    model = tiny_model(root / "model", spec, seed=3)
    config = job_config_file(root / "config.yaml")
    for args in (["validate", "--dataset", "synth", "--ds", DS],
                 ["score", "--dataset", "synth", "--ds", DS, "--model", str(model)],
                 ["evaluate", "--dataset", "synth", "--ds", DS]):
        result = _mmoe(config, wh, *args)
        assert result.exit_code == 0, (args, result.stderr, result.stdout[-2000:])
    version = last_manifest(result.stdout)["model_version"]
    target = Warehouse(wh).partition("synth", "predictions", DS, model_version=version)
    return dict(spec=spec, root=root, wh=wh, model=model, config=config, version=version,
                target=target, metrics=Warehouse(wh).partition("synth", "metrics", DS),
                clean=_table(target))


def _copy(base, tmp_path) -> Path:
    wh = tmp_path / "wh"
    shutil.copytree(base["wh"], wh)
    return wh


def _target(base, wh: Path) -> Path:
    return Warehouse(wh).partition("synth", "predictions", DS, model_version=base["version"])


# --------------------------------------------------------------------------------------------
# Injected task failures and worker crashes: retried, same output


# (A task failure in the Spark reader is left out: that reader's retry and output commit are
# Spark's own, and the worker kill below already drives them.)
@pytest.mark.parametrize("fault,reader", [
    ("score_task_first_attempt", "direct"),
    ("score_worker_kill_first_attempt", "spark"),
])
def test_faulty_first_attempts_are_retried_to_the_clean_output(base, tmp_path, fault, reader):
    wh = _copy(base, tmp_path)
    target = _target(base, wh)
    shutil.rmtree(target)
    config = job_config_file(tmp_path / "config.yaml", master="local[2,4]",
                             scoring={"batch_size": 64, "reader": reader})
    proc = start_cli(["--config", str(config), "--warehouse", str(wh), "score", "--dataset",
                      "synth", "--ds", DS, "--model", str(base["model"])],
                     cli_env(MMOE_FAULT=fault), tmp_path / "log")
    assert proc.wait(timeout=400) == 0, (tmp_path / "log" / "stderr").read_text()[-3000:]
    manifest = last_manifest((tmp_path / "log" / "stdout").read_text())
    assert manifest["details"]["reader"] == reader
    assert manifest["output_rows"] == base["clean"].num_rows
    _same_predictions(_table(target), base["clean"])
    names = sorted(p.name for p in target.iterdir())
    assert not [n for n in names if n.startswith(".") and not n.endswith(".crc")], names


@pytest.mark.parametrize("fault", ["score_task_first_attempt", "score_worker_kill_first_attempt"])
def test_fault_without_retries_fails_and_keeps_the_previous_partition(base, tmp_path,
                                                                      monkeypatch, fault):
    """Control: in plain local[2] (no task retries) the same fault fails the job — so the
    faults do fire — and the partition keeps its previous content."""
    wh = _copy(base, tmp_path)
    target = _target(base, wh)
    before = fingerprint(target)
    monkeypatch.setenv("MMOE_FAULT", fault)
    result = _mmoe(base["config"], wh, "score", "--dataset", "synth", "--ds", DS,
                   "--model", str(base["model"]))
    assert result.exit_code != 0
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    cause = {"score_task_first_attempt": "a Spark task failed: InjectedFault: MMOE_FAULT="
                                         "score_task_first_attempt",
             "score_worker_kill_first_attempt": "Python worker exited unexpectedly"}[fault]
    assert cause in result.stderr, result.stderr
    assert fingerprint(target) == before
    _same_predictions(_table(target), base["clean"], atol=0)
    assert not list(target.parent.glob(".staging-*"))


def test_unknown_fault_name_is_refused(base, tmp_path, monkeypatch):
    monkeypatch.setenv("MMOE_FAULT", "everything")
    result = _mmoe(base["config"], _copy(base, tmp_path), "score", "--dataset", "synth",
                   "--ds", DS, "--model", str(base["model"]))
    assert result.exit_code == 2 and "MMOE_FAULT names unknown fault(s) ['everything']" in result.stderr


# --------------------------------------------------------------------------------------------
# kill -9 of the driver at the points of the crash window


def _visible_rows(spark, table_root: Path, version: str | None = None) -> int:
    """Rows a reader of the whole table sees (Spark's partition discovery over the root)."""
    from pyspark.errors import AnalysisException

    try:
        frame = spark.read.parquet(str(table_root))
    except AnalysisException as exc:  # no visible data file anywhere under the root
        assert "UNABLE_TO_INFER_SCHEMA" in str(exc) or "infer schema" in str(exc), exc
        return 0
    if version is not None:
        frame = frame.where(frame.model_version == version)
    return frame.count()


# Both points of the crash window, each once: score and evaluate write through the same
# ``warehouse.replacing``, so each job is killed at one of them.
@pytest.mark.parametrize("job,point", [("score", "staged"), ("evaluate", "swapping")])
def test_kill_9_mid_write_keeps_previous_content_and_a_rerun_completes(spark, base, tmp_path,
                                                                        job, point):
    wh = _copy(base, tmp_path)
    table = "predictions" if job == "score" else "metrics"
    target = _target(base, wh) if job == "score" else Warehouse(wh).partition("synth", "metrics", DS)
    previous = _table(target, drop=())
    before = fingerprint(target)
    args = ["score", "--dataset", "synth", "--ds", DS, "--model", str(base["model"])] \
        if job == "score" else ["evaluate", "--dataset", "synth", "--ds", DS]
    markers = tmp_path / "markers"
    proc = start_cli(["--config", str(base["config"]), "--warehouse", str(wh), *args],
                     cli_env(MMOE_TEST_PAUSE_AT=f"{point}@{table}",
                             MMOE_TEST_PAUSE_DIR=str(markers)), tmp_path / "log")
    try:
        wait_for(markers / point, proc, timeout=300)
    finally:
        kill_group(proc)
    assert proc.returncode == -9
    debris = sorted(p.name for p in target.parent.iterdir() if p.name.startswith("."))
    if point == "staged":
        # the previous content untouched; the new one only in hidden staging debris
        assert fingerprint(target) == before
        assert _table(target, drop=()).to_pandas().equals(previous.to_pandas())
        assert any(n.startswith(f".staging-{target.name}-") for n in debris), debris
    else:
        # between the renames: no partition (a reader sees none of it, never half), and a
        # complete hidden copy of the previous content that the next run puts back first
        assert not target.exists()
        olds = [target.parent / n for n in debris if n.startswith(f".old-{target.name}-")]
        assert len(olds) == 1 and fingerprint(olds[0]) == before
    root = Warehouse(wh).table("synth", table)
    visible = _visible_rows(spark, root, base["version"] if job == "score" else None)
    assert visible == (previous.num_rows if point == "staged" else 0)

    result = _mmoe(base["config"], wh, *args)  # the rerun
    assert result.exit_code == 0, result.stderr
    rerun = _table(target)
    if job == "score":
        _same_predictions(rerun, base["clean"])
    else:
        assert rerun.to_pandas().equals(_table(base["metrics"]).to_pandas())
    assert _visible_rows(spark, root, base["version"] if job == "score" else None) == rerun.num_rows
    leftovers = [p.name for p in target.parent.iterdir()
                 if p.name.startswith((".staging-", ".old-", ".removed-"))]
    assert not leftovers, leftovers
