"""`mmoe train` from the command line: the model options (gate kind, top-k, expert groups) reach
the artifact, and a training run killed with `kill -9` resumes from its last checkpoint to the
very model an uninterrupted run writes. The oracle for "the same model" is the artifact's
content-addressed model_version (a hash of its weights, config, spec and normalisation)."""

from __future__ import annotations

import json
import subprocess

import pytest
from _reliability import (
    cli_env,
    job_config_file,
    kill_group,
    last_manifest,
    mmoe_command,
    start_cli,
    wait_for,
    write_day,
)
from typer.testing import CliRunner

from jobs.cli import app
from jobs.core.warehouse import Warehouse
from mmoe_model.artifact import ModelArtifact
from schemas import load_spec

DS = "2026-05-05"
SMALL = {"num_experts": 2, "expert_hidden": [8], "expert_dim": 4, "tower_hidden": [4],
         "batch_size": 128}
runner = CliRunner()


@pytest.fixture
def day(tmp_path):
    wh = tmp_path / "wh"
    write_day(wh, load_spec("synth"), DS, n=400, seed=5)
    return wh


def _train(config, wh, out, *extra):
    return runner.invoke(app, ["--config", str(config), "--warehouse", str(wh), "train",
                               "--dataset", "synth", "--arch", "mmoe", "--start", DS, "--end", DS,
                               "--out", str(out), *extra])


def test_model_options_reach_the_artifact(tmp_path, day):
    config = job_config_file(tmp_path / "config.yaml", training={**SMALL, "epochs": 1})
    out = tmp_path / "m"
    result = _train(config, day, out, "--gate", "topk", "--gate-k", "3",
                    "--expert-group", "2xmlp:6", "--expert-group", "1xcross:1")
    assert result.exit_code == 0, result.stderr
    model = ModelArtifact.load(out).model_config
    assert (model.gate, model.gate_k) == ("topk", 3)
    assert model.expert_layout == ("2xmlp:6", "1xcross:1") and model.num_experts == 3
    assert not Warehouse(day).train_checkpoint("synth", out).exists()  # removed when done


@pytest.mark.parametrize("extra, needle", [
    (["--gate-k", "2"], "--gate-k applies to topk gates only"),
    (["--gate", "topk", "--gate-k", "9"], "gate_k must be within [1, 2]"),
    (["--expert-group", "2xtree"], "type must be one of mlp, cross"),
])
def test_bad_model_options_are_one_line_errors(tmp_path, day, extra, needle):
    config = job_config_file(tmp_path / "config.yaml", training=SMALL)
    result = _train(config, day, tmp_path / "m", *extra)
    assert result.exit_code == 2, result.stderr
    assert needle in result.stderr.strip().splitlines()[-1]
    assert last_manifest(result.stdout)["status"] == "failed"
    assert not (tmp_path / "m").exists()


def test_killed_training_resumes_to_the_same_model(tmp_path, day):
    # Enough epochs that the run is still training when it is killed after its first checkpoint.
    config = job_config_file(tmp_path / "config.yaml",
                             training={**SMALL, "epochs": 150, "patience": 1000})
    env = cli_env()
    out = tmp_path / "resumed"
    args = ["--config", str(config), "--warehouse", str(day), "train", "--dataset", "synth",
            "--arch", "mmoe", "--start", DS, "--end", DS, "--seed", "4"]
    checkpoint = Warehouse(day).train_checkpoint("synth", out) / "last.pt"
    proc = start_cli([*args, "--out", str(out)], env, tmp_path / "killed")
    wait_for(checkpoint, proc, timeout=120)
    kill_group(proc)
    assert not out.exists()

    again = subprocess.run(mmoe_command(*args, "--out", str(out)), env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    manifest = last_manifest(again.stdout)
    assert 1 <= manifest["details"]["resumed_after_epoch"] < 150
    assert "resumed from" in again.stderr
    assert manifest["details"]["epochs_run"] == 150
    assert not checkpoint.parent.exists()

    fresh = tmp_path / "fresh"
    clean = subprocess.run(mmoe_command(*args, "--out", str(fresh), "--no-resume"), env=env,
                           capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr[-2000:]
    assert last_manifest(clean.stdout)["details"]["resumed_after_epoch"] == 0
    assert ModelArtifact.load(out).model_version == ModelArtifact.load(fresh).model_version


def test_a_checkpoint_of_other_settings_is_refused_not_mixed_in(tmp_path, day):
    config = job_config_file(tmp_path / "config.yaml", training={**SMALL, "epochs": 2})
    out = tmp_path / "m"
    checkpoint = Warehouse(day).train_checkpoint("synth", out)
    # A checkpoint left by an interrupted run with another learning rate (written by the
    # library directly, the way the CLI's run writes it).
    from jobs.core.config import load_config
    from jobs.core.tables import DatasetTables
    from jobs.train.stage import load_training_frame
    from mmoe_model.config import ModelConfig, TrainConfig
    from mmoe_model.trainer import train

    spec = load_spec("synth")
    frame, _ = load_training_frame(DatasetTables(load_config(warehouse=day), spec.name), spec, [DS])
    small = {k: v for k, v in SMALL.items() if k != "batch_size"}
    train(frame, spec, ModelConfig(**small),
          TrainConfig(epochs=1, batch_size=128, learning_rate=0.01, progress=False,
                      checkpoint_dir=str(checkpoint)))
    result = _train(config, day, out)
    assert result.exit_code == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "was written by a different run (learning_rate differ)" in line
    assert "--no-resume" in line and not out.exists()
    result = _train(config, day, out, "--no-resume")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["details"]["resumed_after_epoch"] == 0


def test_a_given_checkpoint_dir_keeps_what_else_it_holds(tmp_path, day):
    config = job_config_file(tmp_path / "config.yaml", training={**SMALL, "epochs": 1})
    mine = tmp_path / "scratch"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (mine / ".last.pt.999.tmp").write_bytes(b"half a checkpoint")  # a writer killed mid-save
    result = _train(config, day, tmp_path / "m", "--checkpoint-dir", str(mine))
    assert result.exit_code == 0, result.stderr
    assert (mine / "notes.txt").read_text() == "keep me"
    assert list(mine.iterdir()) == [mine / "notes.txt"]  # the checkpoint and its temp are gone
