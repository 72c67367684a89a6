"""Training wrapper: loss goes down, runs are reproducible, the split is a function of the key."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mmoe_model.errors import ModelConfigError, TrainingError
from mmoe_model.models import ModelConfig
from mmoe_model.sample import sample_frame
from mmoe_model.trainer import TrainConfig, train, validation_mask
from schemas.spec import load_spec

MODEL = ModelConfig(arch="mmoe", num_experts=2, expert_hidden=(8,), expert_dim=4,
                    tower_hidden=(4,))


@pytest.fixture(scope="module")
def spec():
    return load_spec("synth")


@pytest.fixture(scope="module")
def frame(spec):
    return sample_frame(spec, 1200, seed=3)


def cfg(**kw) -> TrainConfig:
    # CPU: bit-identical reruns are promised there (CUDA embedding backward uses atomics).
    base = dict(epochs=3, batch_size=128, learning_rate=0.01, progress=False, seed=5,
                device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_training_lowers_the_loss_and_logs_metrics(spec, frame):
    result = train(frame, spec, MODEL, cfg())
    losses = [m["train_loss"] for m in result.metrics]
    assert len(losses) == 3 and losses[-1] < losses[0]
    last = result.metrics[-1]
    assert set(last["val_auc"]) == {"click", "like", "conversion"}
    assert last["val_loss"] < result.metrics[0]["val_loss"] or last["mean_val_auc"] > 0.6
    assert result.train_rows + result.val_rows == len(frame)
    assert 0.1 < result.val_rows / len(frame) < 0.3
    assert not result.model.training
    assert all(p.device.type == "cpu" for p in result.model.parameters())
    # the artifact's metrics keep everything but the wall-clock seconds (checksummed: the same
    # training twice gives the same model_sha256)
    assert result.summary()["epochs"] == [{k: v for k, v in m.items() if k != "seconds"}
                                          for m in result.metrics]
    assert all(m["seconds"] >= 0 for m in result.metrics)


def test_fixed_seed_gives_identical_weights(spec, frame):
    a = train(frame, spec, MODEL, cfg(epochs=2)).model.state_dict()
    b = train(frame, spec, MODEL, cfg(epochs=2)).model.state_dict()
    c = train(frame, spec, MODEL, cfg(epochs=2, seed=6)).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_validation_split_is_a_function_of_the_key():
    keys = pd.DataFrame({"id": np.arange(20_000, dtype=np.int64)})
    mask = validation_mask(keys, 0.2)
    assert 0.18 < mask.mean() < 0.22
    shuffled = keys.sample(frac=1.0, random_state=1)
    np.testing.assert_array_equal(validation_mask(shuffled, 0.2), mask[shuffled["id"].to_numpy()])
    # A larger fraction only adds rows: the split is monotone in the fraction.
    assert not (mask & ~validation_mask(keys, 0.3)).any()
    strings = pd.DataFrame({"id": [f"k{i}" for i in range(1000)]})
    assert 0.1 < validation_mask(strings, 0.2).mean() < 0.3


def test_zero_task_weight_means_no_update_of_that_tower(spec, frame):
    torch.manual_seed(5)
    result = train(frame, spec, MODEL, cfg(epochs=1, task_weights={"like": 0.0}, seed=5))
    from mmoe_model.models import build_model

    torch.manual_seed(5)  # the trainer seeds torch the same way before building
    fresh = build_model(MODEL, result.encoder.layout, 3)
    like = 1  # tower index of "like"
    for name, p in result.model.towers[like].state_dict().items():
        assert torch.equal(p, fresh.towers[like].state_dict()[name]), name
    assert not torch.equal(result.model.towers[0].out.weight, fresh.towers[0].out.weight)


def test_early_stopping_when_validation_auc_stalls(spec, frame):
    # A learning rate this small leaves float32 weights unchanged: the AUC never improves.
    result = train(frame, spec, MODEL, cfg(epochs=6, learning_rate=1e-12, patience=1))
    assert result.stopped_early and result.epochs_run == 2 and result.best_epoch == 1


def test_no_validation_split_trains_every_epoch(spec, frame):
    result = train(frame, spec, MODEL, cfg(epochs=2, validation_fraction=0.0))
    assert result.val_rows == 0 and result.epochs_run == 2 and result.best_epoch == 2
    assert result.val_auc == {"click": None, "like": None, "conversion": None}


def test_bad_inputs_are_refused(spec, frame):
    with pytest.raises(TrainingError, match="like"):
        train(frame.drop(columns=["like"]), spec, MODEL, cfg())
    with pytest.raises(TrainingError, match="click"):
        train(frame.assign(click=2), spec, MODEL, cfg())
    with pytest.raises(ModelConfigError, match="clicks"):
        train(frame, spec, MODEL, cfg(task_weights={"clicks": 1.0}))
    with pytest.raises(TrainingError, match="no rows"):
        train(frame.iloc[:0], spec, MODEL, cfg())
    labels = frame[["click", "like", "conversion"]].to_numpy()
    result = train(frame.drop(columns=["click", "like", "conversion"]), spec, MODEL,
                   cfg(epochs=1), labels=labels)
    assert result.epochs_run == 1
