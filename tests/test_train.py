"""jobs/train.py on a tiny synth-like warehouse written with pyarrow (no Spark, no jobs/synth)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.core.errors import InputError, MissingInputError
from jobs.core.manifest import RunManifest
from jobs.core.warehouse import Warehouse
from jobs.train.stage import train_model as train_stage
from mmoe_model.artifact import ModelArtifact
from mmoe_model.sample import sample_frame
from schemas.spec import load_spec
from schemas.tables import features_arrow_schema, labels_arrow_schema

DAYS = ["2026-11-01", "2026-11-02"]
ROWS = 300


@pytest.fixture
def cfg(job_config, monkeypatch):
    # Reruns are bit-identical on CPU only (CUDA embedding backward uses atomics).
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    from jobs.core.config import TrainingConfig

    job_config.training = TrainingConfig.from_flat({
        "num_experts": 2, "expert_hidden": [8], "expert_dim": 4, "tower_hidden": [4],
        "batch_size": 128, "epochs": 2})
    return job_config


def write_day(wh: Warehouse, ds: str, seed: int, drop_labels: int = 0) -> None:
    spec = load_spec("synth")
    frame = sample_frame(spec, ROWS, seed=seed)
    features = pa.Table.from_pandas(frame[spec.features_table_columns],
                                    schema=features_arrow_schema(spec), preserve_index=False)
    labels = pa.Table.from_pandas(frame[spec.labels_table_columns].iloc[drop_labels:],
                                  schema=labels_arrow_schema(spec), preserve_index=False)
    for table, data in (("features", features), ("labels", labels)):
        part = wh.partition("synth", table, ds)
        part.mkdir(parents=True)
        pq.write_table(data, part / "part-00000.parquet")
        (part / "_SUCCESS").write_text("")  # what Spark leaves behind; must be ignored


@pytest.fixture
def warehouse(cfg):
    wh = Warehouse(cfg.warehouse)
    write_day(wh, DAYS[0], seed=1)
    write_day(wh, DAYS[1], seed=2, drop_labels=20)
    return wh


def manifest() -> RunManifest:
    return RunManifest(job="train", dataset="synth", ds=DAYS[-1])


def train_model(cfg, dataset, arch, start, end, out, epochs, seed, m: RunManifest):
    """The stage, with its result recorded into ``m`` the way the CLI records it."""
    m.apply(train_stage(cfg, dataset, arch, start, end, out, epochs, seed).record())
    return out


def test_train_model_writes_an_artifact_and_fills_the_manifest(cfg, warehouse, tmp_path):
    out = tmp_path / "models" / "m1"
    m = manifest()
    assert train_model(cfg, "synth", "mmoe", DAYS[0], DAYS[1], out, None, 3, m) == out
    artifact = ModelArtifact.load(out)
    assert m.model_version == artifact.model_version and m.model_version.startswith("mmoe-")
    assert m.model_sha256 == artifact.sha256
    assert m.input_rows == 2 * ROWS
    assert m.output_rows == 2 * ROWS - 20
    assert m.details["rows_without_labels"] == 20
    assert m.details["train_rows"] + m.details["val_rows"] == m.output_rows
    assert m.details["epochs_run"] == 2
    assert set(m.details["val_auc"]) == {"click", "like", "conversion"}
    assert m.outputs["artifact"] == str(out.resolve())
    json.loads(m.to_json())  # the manifest stays JSON-serialisable
    artifact.check_spec(load_spec("synth"))
    assert artifact.predict(sample_frame(load_spec("synth"), 5, seed=9)).shape == (5, 3)

    # A rerun with the same seed reproduces the model and replaces the artifact in place.
    again = manifest()
    train_model(cfg, "synth", "mmoe", DAYS[0], DAYS[1], out, None, 3, again)
    assert again.model_version == m.model_version
    assert again.details["replaced_model_version"] == m.model_version


def test_epochs_override_and_other_archs(cfg, warehouse, tmp_path):
    m = manifest()
    train_model(cfg, "synth", "ple", DAYS[0], DAYS[0], tmp_path / "ple", 1, 0, m)
    assert m.details["epochs_run"] == 1 and m.input_rows == ROWS
    assert m.model_version.startswith("ple-")


def test_missing_partition_names_the_ds_and_table(cfg, warehouse, tmp_path):
    with pytest.raises(MissingInputError, match=r"features.*ds=2026-11-03"):
        train_model(cfg, "synth", "mmoe", DAYS[0], "2026-11-03", tmp_path / "m", 1, 0,
                    manifest())
    (warehouse.partition("synth", "labels", DAYS[1]) / "part-00000.parquet").unlink()
    with pytest.raises(MissingInputError, match=r"labels.*ds=2026-11-02"):
        train_model(cfg, "synth", "mmoe", DAYS[0], DAYS[1], tmp_path / "m", 1, 0, manifest())
    assert not (tmp_path / "m").exists()


def test_bad_arguments_are_refused_before_any_work(cfg, warehouse, tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "readme.txt").write_text("mine")
    with pytest.raises(InputError, match="not a model artifact"):
        train_model(cfg, "synth", "mmoe", DAYS[0], DAYS[0], foreign, 1, 0, manifest())
    with pytest.raises(InputError, match="--arch"):
        train_model(cfg, "synth", "moe", DAYS[0], DAYS[0], tmp_path / "x", 1, 0, manifest())
    with pytest.raises(InputError, match="before"):
        train_model(cfg, "synth", "mmoe", DAYS[1], DAYS[0], tmp_path / "x", 1, 0, manifest())
    assert np.all([p.name in ("notes",) for p in tmp_path.iterdir() if p.name != "wh"])
