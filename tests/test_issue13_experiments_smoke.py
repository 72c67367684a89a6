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


def test_factorial_cells_and_their_configs(exp):
    cells = exp.factorial_names()
    assert len(cells) == len(set(cells)) == 32 and cells[0] == "softmax"
    config = exp.synth_variants()["max+levels2+prior"]
    assert (config.gate, config.num_levels, config.gate_temperature) == ("max", 2, 1.0)
    assert config.gate_prior[0][:4] == (1.0,) * 4 and config.gate_prior[1][:4] == (-1.0,) * 4
    assert exp.synth_variants()["topk2+temp0.5"].gate_k == 2
    assert exp.synth_variants()["topk2+temp0.5"].gate_temperature == 0.5
    # old result files keep working under the new names
    assert exp.ALIASES["max-temp0.5-prior"] in cells


def test_factorial_effects_recover_planted_effects(exp):
    """A response with known additive effects (levels2 +1, max +0.5, prior -0.25 only under
    topk2) and a per-seed offset: the estimates must be exactly those effects."""
    per_seed = {}
    for seed in range(4):
        row = {}
        for cell in exp.factorial_names():
            gate, *factors = cell.split("+")
            row[cell] = (seed * 10.0 + 1.0 * ("levels2" in factors) + 0.5 * (gate == "max")
                         - 0.25 * (gate == "topk2" and "prior" in factors))
        per_seed[seed] = row
    text = exp.factorial_effects(per_seed)
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()}
    assert lines["levels2 on − off"].count("+1.00000 ± 0.00000 *") == 5  # all gates, each gate
    assert lines["max − softmax"].startswith("| max − softmax | +0.50000 ± 0.00000 * |")
    assert lines["topk2 − softmax"].startswith("| topk2 − softmax | -0.12500 ± 0.00000 * |")
    prior = lines["prior on − off"].split(" | ")
    assert prior[2] == "+0.00000 ± 0.00000" and prior[3] == "-0.25000 ± 0.00000 *"  # softmax, topk2
    # a seed missing one cell is left out (every seed must weigh the same cells)
    records = [{"seed": s, "variant": c, "v": v} for s, row in per_seed.items()
               for c, v in row.items() if not (s == 3 and c == "max+prior")]
    assert sorted(exp._cell_means(records, lambda r: r["v"])) == [0, 1, 2]


def test_ensemble_against_lightgbm_uses_delong_on_the_test_rows(exp, tmp_path):
    import numpy as np
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (400, 1))
    exp.save_predictions(tmp_path, "g", "labels", "", y)
    exp.save_predictions(tmp_path, "g", "lgbm", 0, np.clip(y + rng.normal(0, 0.9, y.shape), -3, 3))
    records = [{"group": "g", "variant": "lgbm", "seed": 0, "test_auc": {"t": 0.0}}]
    seeds = []
    for seed in range(3):
        p = y + rng.normal(0, 0.6, y.shape)
        seeds.append(p[:, 0])
        exp.save_predictions(tmp_path, "g", "mmoe", seed, p)
        records.append({"group": "g", "variant": "mmoe", "seed": seed, "test_auc": {"t": 0.0},
                        "val_auc": {"t": 0.9}})
    text = exp.report_ensembles(records, tmp_path, {"MMoE variants": ["mmoe"]})
    row = text.splitlines()[-1].split(" | ")
    assert row[3].startswith("mmoe (0.9000)") and row[4] == "3"
    assert float(row[6]) == pytest.approx(roc_auc_score(y[:, 0], np.mean(seeds, axis=0)), abs=1e-4)
