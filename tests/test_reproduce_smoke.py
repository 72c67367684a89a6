"""Smoke tests of the reproduction scripts' core functions (tiny runs, no Spark, a few seconds)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
CENSUS_FILE = REPO.parent / "shared" / "data" / "census" / "census-income.dev.data.gz"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def synthetic():
    return _load("reproduce_synthetic")


@pytest.fixture(scope="module")
def census():
    return _load("reproduce_census")


def test_synthetic_data_follows_rho(synthetic):
    x, y = synthetic.make_data(0.5, 4000, seed=1)
    assert x.shape == (4000, 100) and y.shape == (4000, 2)
    corr = np.corrcoef(y.T)[0, 1]
    assert 0.35 < corr < 0.65
    _, y1 = synthetic.make_data(1.0, 4000, seed=1)
    assert np.corrcoef(y1.T)[0, 1] > 0.95
    # The seed fixes the data: the same seed gives the same draw.
    np.testing.assert_array_equal(synthetic.make_data(0.9, 10, seed=3)[1],
                                  synthetic.make_data(0.9, 10, seed=3)[1])


def test_synthetic_param_counts_comparable(synthetic):
    from mmoe_model.features import InputLayout
    from mmoe_model.models import build_model

    layout = InputLayout(dense_dim=100, embeddings=())
    counts = {a: synthetic.param_count(build_model(c, layout, 2))
              for a, c in synthetic.model_configs().items()}
    assert set(counts) == {"mmoe", "omoe", "shared-bottom"}
    assert max(counts.values()) / min(counts.values()) < 1.1


def test_synthetic_tiny_run_and_report(synthetic, tmp_path):
    cfg = synthetic.model_configs()["mmoe"]
    rec = synthetic.run_one(0.9, "mmoe", 0, cfg, n_train=512, n_test=128, steps=30,
                            batch_size=64, lr=1e-3, eval_every=10)
    assert rec["curve"][-1][0] == 30 and len(rec["curve"]) == 3
    assert np.isfinite(rec["test_loss"]) and np.isfinite(rec["train_loss"])
    # Resumability: the main loop skips runs already in the results file.
    results = tmp_path / "r.jsonl"
    argv = ["--seeds", "1", "--rhos", "1.0", "--archs", "shared-bottom", "--n-train", "256",
            "--n-test", "64", "--steps", "5", "--eval-every", "5", "--results", str(results),
            "--plot", str(tmp_path / "p.png"), "--curves", str(tmp_path / "c.png")]
    synthetic.main(argv)
    first = results.read_text()
    synthetic.main(argv)
    assert results.read_text() == first and len(first.splitlines()) == 1
    assert (tmp_path / "p.png").stat().st_size > 0


def test_census_test_split_is_deterministic_and_independent(census):
    from mmoe_model.trainer import validation_mask

    row_id = np.arange(20000, dtype=np.int64)
    test = census.test_mask(row_id, 0.2)
    assert 0.18 < test.mean() < 0.22
    np.testing.assert_array_equal(test, census.test_mask(row_id[::-1], 0.2)[::-1])
    val = validation_mask(pd.DataFrame({"row_id": row_id}), 0.2)
    # Independent hashes: about 20% of the test rows are also trainer-validation rows.
    assert 0.15 < (test & val).sum() / test.sum() < 0.25


@pytest.mark.skipif(not CENSUS_FILE.exists(), reason="census file not present")
def test_census_tiny_runs_on_raw_rows(census, tmp_path):
    from schemas.spec import load_spec

    spec = load_spec("census-group1")
    raw = census.read_raw(CENSUS_FILE, spec).iloc[:3000].copy()
    # The warehouse frame, rebuilt in pandas: dense features as float, labels from the sources.
    for f in spec.dense_features:
        raw[f.name] = raw[f.name].astype(float)
    for t in spec.tasks:
        raw[t.name] = raw[t.source].str.rstrip(".").isin(t.positive).astype(np.int32)
    assert raw["income"].sum() > 0 and raw["never_married"].sum() > 0
    is_test = census.test_mask(raw["row_id"].to_numpy(), 0.2)
    census.PRESETS["smoke"] = {"model": {"num_experts": 2, "expert_hidden": [8],
                                         "expert_dim": 4, "tower_hidden": [4]},
                               "train": {"epochs": 1, "batch_size": 512}}
    try:
        res = census.run_neural(spec, raw, is_test, "mmoe", "smoke", seed=0)
    finally:
        del census.PRESETS["smoke"]
    assert set(res["test_auc"]) == {"income", "never_married"}
    assert res["test_rows"] == int(is_test.sum())
    base = census.run_lgbm(spec, raw, is_test, leaky=True, seed=0)
    assert base["features"] == len(spec.feature_names) + 2
    assert all(0.5 < v <= 1.0 for v in base["test_auc"].values())
    line = json.dumps({"id": "x", "group": "group1", "model": "lgbm", "preset": "-", "seed": 0,
                       "test_fraction": 0.2, **base})
    table = census.report([json.loads(line)], ["group1"], ["default"])
    assert "LightGBM" in table
