"""Artifacts: round trip, checksums on every load, spec checks, version naming."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import numpy as np
import pyarrow as pa
import pytest
import torch

from mmoe_model.artifact import (
    MANIFEST,
    WEIGHTS,
    ModelArtifact,
    build_artifact_files,
    read_artifact_files,
    save_artifact,
    spec_to_dict,
)
from mmoe_model.errors import ArtifactError, ArtifactTampered, SpecMismatch
from mmoe_model.models import ModelConfig
from mmoe_model.sample import sample_frame
from mmoe_model.trainer import TrainConfig, train
from schemas.spec import load_spec, parse_spec


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny batches: OpenMP barriers on a busy 2-core machine cost more than the maths.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def spec():
    return load_spec("synth")


@pytest.fixture(scope="module")
def trained(spec):
    frame = sample_frame(spec, 600, seed=11)
    config = ModelConfig(arch="mmoe", num_experts=3, expert_hidden=(8,), expert_dim=4,
                         tower_hidden=(4,))
    result = train(frame, spec, config, TrainConfig(epochs=1, batch_size=128, progress=False,
                                                           device="cpu"))
    return frame, result


@pytest.fixture(scope="module")
def saved(tmp_path_factory, spec, trained):
    _, result = trained
    path = tmp_path_factory.mktemp("art") / "model"
    save_artifact(path, result.model, result.model_config, spec, result.encoder, result.summary())
    return path


def test_save_load_round_trip_gives_identical_outputs(spec, trained, saved):
    frame, result = trained
    loaded = ModelArtifact.load(saved)
    assert not loaded.model.training
    assert loaded.task_names == ["click", "like", "conversion"]
    assert loaded.spec == spec
    probs, gates = loaded.predict(frame, with_gates=True)
    with torch.inference_mode():
        dense, cats = result.encoder.encode(frame)
        logits, g = result.model(dense, cats, return_gates=True)
    np.testing.assert_array_equal(probs, torch.sigmoid(logits.double()).numpy())
    np.testing.assert_array_equal(gates, g.permute(1, 0, 2).numpy())
    assert probs.dtype == np.float64 and probs.shape == (len(frame), 3)
    assert gates.shape == (len(frame), 3, 3)
    assert ((probs > 0) & (probs < 1)).all()
    # GEMM blocking depends on the batch size: equal up to float32 rounding.
    np.testing.assert_allclose(loaded.predict(frame, batch_size=7), probs, rtol=1e-5)
    arrow = pa.Table.from_pandas(frame[spec.feature_names], preserve_index=False)
    np.testing.assert_array_equal(loaded.predict(arrow), probs)
    assert loaded.predict(frame.iloc[:0]).shape == (0, 3)


def test_version_and_sha256(saved, spec, trained):
    _, result = trained
    files = read_artifact_files(saved)
    artifact = ModelArtifact.from_files(files)
    assert re.fullmatch(r"mmoe-[0-9a-f]{12}", artifact.model_version)
    assert artifact.sha256 == hashlib.sha256(files[MANIFEST]).hexdigest()
    assert files["model_version"].decode().strip() == artifact.model_version
    manifest = json.loads(files[MANIFEST])
    assert set(manifest["files"]) == set(files) - {MANIFEST}
    # Same model, same data: the same version (weights serialise byte-identically).
    again = build_artifact_files(result.model, result.model_config, spec, result.encoder, {})
    assert again["model_version"] == files["model_version"]
    # metrics.json keeps every epoch's figures but its wall-clock seconds (issue 22)
    stored = json.loads(files["metrics.json"])["epochs"]
    assert stored == [{k: v for k, v in m.items() if k != "seconds"} for m in result.metrics]
    assert all("seconds" in m for m in result.metrics)


def test_a_flipped_byte_is_refused(saved):
    files = read_artifact_files(saved)
    for name in (WEIGHTS, "normalization.json", "spec.json"):
        bad = dict(files)
        data = bytearray(bad[name])
        data[len(data) // 2] ^= 0x01
        bad[name] = bytes(data)
        with pytest.raises(ArtifactTampered, match=re.escape(name)):
            ModelArtifact.from_files(bad)


def test_a_flipped_byte_on_disk_is_refused(tmp_path, saved):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, data in read_artifact_files(saved).items():
        (copy / name).write_bytes(data)
    ModelArtifact.load(copy)
    weights = bytearray((copy / WEIGHTS).read_bytes())
    weights[-3] ^= 0x80
    (copy / WEIGHTS).write_bytes(bytes(weights))
    with pytest.raises(ArtifactTampered, match="model.safetensors"):
        ModelArtifact.load(copy)


def test_rewritten_manifest_still_fails_the_version_check(saved):
    files = dict(read_artifact_files(saved))
    state = json.loads(files["normalization.json"])
    state["x0"]["mean"] += 1.0
    files["normalization.json"] = json.dumps(state).encode()
    manifest = json.loads(files[MANIFEST])
    manifest["files"]["normalization.json"] = hashlib.sha256(
        files["normalization.json"]).hexdigest()
    files[MANIFEST] = json.dumps(manifest).encode()
    with pytest.raises(ArtifactTampered, match="model_version"):
        ModelArtifact.from_files(files)


def test_missing_files_and_directories(tmp_path, saved):
    with pytest.raises(ArtifactError, match="does not exist"):
        read_artifact_files(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="MANIFEST"):
        read_artifact_files(tmp_path / "empty")
    files = dict(read_artifact_files(saved))
    del files[WEIGHTS]
    with pytest.raises(ArtifactError, match="model.safetensors"):
        ModelArtifact.from_files(files)


def test_spec_mismatch_is_refused_with_the_column(saved, spec):
    artifact = ModelArtifact.load(saved)
    artifact.check_spec(spec)
    raw = spec_to_dict(spec)
    assert parse_spec(raw) == spec

    def variant(**changes):
        d = json.loads(json.dumps(raw))
        for name, field_changes in changes.items():
            for f in d["features"]:
                if f["name"] == name:
                    f.update(field_changes)
        return parse_spec(d)

    with pytest.raises(SpecMismatch, match="'item_category'"):
        artifact.check_spec(variant(item_category={"vocabulary": ["apparel", "books"]}))
    with pytest.raises(SpecMismatch, match="'user_age'.*fill"):
        artifact.check_spec(variant(user_age={"fill": 40}))
    with pytest.raises(SpecMismatch, match="'user_id'.*hash_buckets"):
        artifact.check_spec(variant(user_id={"hash_buckets": 1024}))
    with pytest.raises(SpecMismatch, match="tasks"):
        artifact.check_spec(dataclasses.replace(spec, tasks=spec.tasks[:2]))
    with pytest.raises(SpecMismatch, match="income|tasks|key"):
        artifact.check_spec(load_spec("census-group1"))
    # Validation-only settings do not change what the model computes.
    artifact.check_spec(variant(item_price={"max_null_fraction": 0.5}))


def test_save_refuses_a_foreign_directory_and_replaces_an_artifact(tmp_path, spec, trained, saved):
    _, result = trained
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not a model artifact"):
        save_artifact(foreign, result.model, result.model_config, spec, result.encoder)
    assert (foreign / "notes.txt").read_text() == "keep me"
    target = tmp_path / "target"
    first = save_artifact(target, result.model, result.model_config, spec, result.encoder, {})
    second = save_artifact(target, result.model, result.model_config, spec, result.encoder, {})
    assert first.model_version == second.model_version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "target"]
