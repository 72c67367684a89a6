"""Issue 22, "the first hour": the same training twice gives the same artifact checksum and
registering it again is a no-op that says so; arguments that can be checked without Spark are
refused before the JVM starts, in one plain line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from _reliability import REPO, cli_env, job_config_file, last_manifest, write_day
from jobs.cli import app
from jobs.core.warehouse import read_json_lines, Warehouse
from schemas import load_spec

DS = "2026-05-05"
SMALL = {"num_experts": 2, "expert_hidden": [8], "expert_dim": 4, "tower_hidden": [4],
         "batch_size": 128, "epochs": 2}
runner = CliRunner()


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    root = tmp_path_factory.mktemp("first_hour")
    write_day(root / "wh", load_spec("synth"), DS, n=300, seed=5)
    return root


def _cli(root, *args):
    config = job_config_file(root / "config.yaml", training=SMALL)
    return runner.invoke(app, ["--config", str(config), "--warehouse", str(root / "wh"), *args])


def test_the_same_training_twice_gives_the_same_checksum_and_registers_once(day):
    manifests = []
    for out in ("a", "b"):
        result = _cli(day, "train", "--dataset", "synth", "--arch", "mmoe", "--start", DS,
                      "--end", DS, "--out", str(day / out), "--seed", "3")
        assert result.exit_code == 0, result.output
        manifests.append(last_manifest(result.stdout))
    a, b = manifests
    assert a["model_version"] == b["model_version"]
    assert a["model_sha256"] == b["model_sha256"]          # no wall-clock seconds checksummed
    assert (day / "a" / "metrics.json").read_bytes() == (day / "b" / "metrics.json").read_bytes()
    assert len(a["details"]["epoch_seconds"]) == 2         # the seconds stay in the manifest

    first = _cli(day, "models", "register", str(day / "a"), "--alias", "champion",
                 "--effective", DS)
    assert first.exit_code == 0, first.output
    again = _cli(day, "models", "register", str(day / "b"), "--alias", "champion",
                 "--effective", DS)
    assert again.exit_code == 0, again.output
    manifest = last_manifest(again.stdout)
    assert manifest["status"] == "succeeded" and manifest["details"]["events"] == []
    from mmoe_model.artifact import ModelArtifact, build_artifact_files, write_artifact_files

    assert "already registered" in again.stderr and "nothing to do" in again.stderr
    history = read_json_lines(Warehouse(day / "wh").registry_history("synth"))
    assert [e["event"] for e in history] == ["register", "promote"]

    # An artifact of the same version whose metrics.json differs (an older artifact that kept
    # the seconds): the same model, so the registered copy is kept and nothing is recorded.
    artifact = ModelArtifact.load(day / "a")
    files = build_artifact_files(artifact.model, artifact.model_config, artifact.spec,
                                 artifact.encoder, {"note": "other metadata", "seconds": 1.5})
    other = day / "other"
    other.mkdir()
    write_artifact_files(other, files)
    result = _cli(day, "models", "register", str(other))
    assert result.exit_code == 0, result.output
    manifest = last_manifest(result.stdout)
    assert manifest["model_version"] == artifact.model_version
    assert manifest["model_sha256"] == artifact.sha256      # the registered copy's checksum
    assert "nothing to do" in result.stderr
    assert len(read_json_lines(Warehouse(day / "wh").registry_history("synth"))) == 2
