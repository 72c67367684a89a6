"""Smoke test of scripts/issue13_experiments.py: tiny runs of each experiment's core function and
the report (tables, t-intervals, plots) on their records. No Spark, a few seconds."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exp():
    sys.path.insert(0, str(REPO / "scripts"))
    spec = importlib.util.spec_from_file_location("issue13_experiments",
                                                  REPO / "scripts" / "issue13_experiments.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["issue13_experiments"] = module
    spec.loader.exec_module(module)
    return module


def test_t_interval_matches_scipy_free_formula(exp):
    mean, half, n = exp.t_interval([1.0, 2.0, 3.0, 4.0])
    # t_{0.975, 3} = 3.182446; sd = 1.290994
    assert (mean, n) == (2.5, 4) and half == pytest.approx(3.182446 * 1.290994 / 2, rel=1e-5)
    assert math.isnan(exp.t_interval([1.0])[1])


def test_tiny_runs_and_report(exp, tmp_path):
    variants = exp.synth_variants()
    records = []
    for name in ("softmax", "max", "topk2"):
        for seed in (0, 1):
            rec = exp.train_synth(variants[name], 0.5, seed, 300, 100, 5, 32, 1e-3)
            rec["variant"] = name
            records.append(rec)
    assert all(len(r["gates"]["y1"]) == 8 for r in records)
    table = exp.report_synth(records)
    assert "| max |" in table and "±" in table
    train = []
    for run in range(2):
        for arch in exp.TRAIN_ARCHS:
            rec = exp.train_synth(exp.model_configs(4, 8)[arch], 0.9, 0, 300, 100, 5, 32, 1e-3,
                                  init_seed=run)
            rec.update(arch=arch, run=run, hparams={})
            train.append(rec)
    text = exp.report_trainability(train, tmp_path / "t.png")
    assert (tmp_path / "t.png").is_file() and "MMoE − OMoE" in text
    exp.heatmaps(records, [], tmp_path / "h.png")
    assert (tmp_path / "h.png").is_file()
