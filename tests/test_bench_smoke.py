"""Tiny runs of every bench: the harnesses work and report what the contract names (speed is
measured by `mmoe bench`, never here)."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from jobs.bench import (
    bench_catalog,
    bench_evaluation,
    bench_scaling,
    bench_scoring,
    bench_validation,
)
from schemas import load_spec


@pytest.fixture
def cfg(job_config):
    job_config.scoring.batch_size = 256
    return job_config


def _median_rate(rows: int, rates: list[int]) -> float:
    """rows / the median of the rounds' seconds, from the rounds' rates (rows / seconds)."""
    return rows / statistics.median(rows / r for r in rates)


def test_scoring_bench_smoke(spark, cfg):
    result = bench_scoring(cfg, rows=3000, record=False, repeats=2)
    rounds = result["rounds_rows_per_s"]
    assert all(len(rates) == 2 for rates in rounds.values())
    assert result["rows"] == 3000
    # each reported rate is the median round's, each ratio the quotient of two of them
    for path in ("ours", "predict_batch_udf", "naive_udf", "io_floor", "torch_inprocess", "udf"):
        want = _median_rate(3000, rounds[path])
        assert result[f"{path}_rows_per_s"] == pytest.approx(want, rel=2e-3, abs=1), path
    for ratio, num, den in (("ours_vs_predict_batch_udf", "ours", "predict_batch_udf"),
                            ("udf_vs_predict_batch_udf", "udf", "predict_batch_udf"),
                            ("ours_vs_inprocess", "ours", "torch_inprocess"),
                            ("ours_wall_vs_io_floor", "io_floor", "ours")):
        want = _median_rate(3000, rounds[num]) / _median_rate(3000, rounds[den])
        assert result[ratio] == pytest.approx(want, abs=0.006 + 2e-3 * want), ratio
    assert result["ours_seconds"] == pytest.approx(3000 / result["ours_rows_per_s"], rel=2e-3,
                                                   abs=1e-3)
    # the model-only anchor: in the run's precision, one process per core, their sum
    assert result["precision"] == cfg.scoring.precision == "fp32"
    workers = result["model_limit_worker_rows_per_s"]
    assert len(workers) == result["spark_cores"] and min(workers) > 0
    assert result["model_limit_rows_per_s"] == sum(workers)
    only = result["model_only_rows_per_s"]
    assert set(only) == {"fp32", "bf16", "int8"}
    assert only[result["precision"]] == result["model_limit_rows_per_s"]
    for precision, ratio in result["model_only_vs_fp32"].items():
        assert ratio == pytest.approx(only[precision] / only["fp32"], abs=1e-3), precision
    assert result["ours_vs_model_limit"] == pytest.approx(
        result["ours_rows_per_s"] / result["model_limit_rows_per_s"], rel=3e-3, abs=1e-3)
    parity = result["precision_parity"]
    spec = load_spec("synth")
    assert parity["rows"] == 3000 and set(parity["fp32_auc"]) == set(spec.task_names)
    for precision, bound in (("bf16", 0.005), ("int8", 0.03)):  # tests/test_precision.py
        assert 0 < parity[precision]["max_abs_dp"] <= bound, precision
        assert set(parity[precision]["auc_delta"]) == set(spec.task_names)
        assert all(abs(d) <= 0.02 for d in parity[precision]["auc_delta"].values())


def _within_rounded_ratio(ratio: float, a: float, b: float, step: float = 0.01) -> bool:
    """``ratio`` (rounded to 3 decimals) is a / b for some times that round to ``a`` and ``b``."""
    low, high = (a - step / 2) / (b + step / 2), (a + step / 2) / max(b - step / 2, 1e-9)
    return low - 1e-3 <= ratio <= high + 1e-3


def test_evaluation_bench_smoke(spark, cfg):
    result = bench_evaluation(cfg, rows=20000, record=False)
    assert result["rows"] == 20000
    assert result["ours_seconds"] > 0 and result["mllib_seconds"] > 0
    # each ratio is of the unrounded times: within what the two rounded times allow
    assert _within_rounded_ratio(result["ours_vs_mllib_time"], result["ours_seconds"],
                                 result["mllib_seconds"])
    assert _within_rounded_ratio(result["ranking_overhead"] + 1,
                                 result["ours_with_ranking_seconds"], result["ours_seconds"])
    assert result["max_abs_auc_error_vs_sklearn"] < 1e-9
    # the ranking metrics against the bench's plain loop, on every request of the small table
    assert result["ranking_loop_rows"] == 20000 and result["max_abs_ranking_error_vs_loop"] < 1e-9
    assert set(result["ranking_metrics"]) == {"mrr", *(f"{m}@{k}" for m in ("ndcg", "map", "recall",
                                                                         "hit_rate") for k in (5, 10))}
    assert {"auc", "gauc", "logloss", "ne", "calibration", "pr_auc", "count", "positives"} <= set(result["metrics"])


def test_validation_bench_smoke(spark, cfg, tmp_path):
    docs = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    before = docs.read_bytes()
    results = tmp_path / "out" / "bench.md"
    result = bench_validation(cfg, rows=3000, results=results)
    assert docs.read_bytes() == before  # never into the source tree
    assert '"one_pass_floor_seconds"' in results.read_text()
    assert result["rows"] == result["floor_rows"] == 3000
    assert result["spark_jobs"] >= 1
    assert result["seconds"] > 0 and result["one_pass_floor_seconds"] > 0 and result["scoring_seconds"] > 0
    assert result["validation_vs_floor"] == pytest.approx(
        result["seconds"] / result["one_pass_floor_seconds"], rel=0.02, abs=0.01)
    # every dense feature and every categorical one with a vocabulary is profiled (ids skipped)
    spec = load_spec("synth")
    watched = [f for f in spec.features if f.kind == "dense" or f.vocabulary is not None]
    assert result["drift_features"] == len(watched)
    assert result["floor_distinct_keys"] == 3000


def test_scaling_bench_smoke(spark, cfg):
    result = bench_scaling(cfg, rows=500, record=False)
    assert [r["rows"] for r in result["runs"]] == [500, 2000, 8000]
    assert all(r["seconds"] > 0 and r["peak_python_worker_rss_mib"] > 0 for r in result["runs"])


def test_catalog_bench_smoke(spark, cfg):
    result = bench_catalog(cfg, rows=4000, record=False, items=40, top_k=5)
    assert result["rows"] == 4000 and result["users"] == 100
    for path in ("factored", "rows"):
        assert result[f"{path}_pairs_per_s"] == pytest.approx(
            4000 / result[f"{path}_seconds"], rel=2e-3, abs=1), path
    assert result["factored_vs_rows"] == pytest.approx(
        result["rows_seconds"] / result["factored_seconds"], abs=0.006 + 2e-3 * result["factored_vs_rows"])
    assert result["top_k_pairs_in_both"] > 0.99 and result["max_abs_dp_factored_vs_rows"] < 1e-6
    assert result["max_score_gap_of_differing_pairs"] < 1e-6
