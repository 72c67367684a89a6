"""Tiny runs of every bench: the harnesses work and report what the contract names (speed is
measured by `mmoe bench`, never here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.bench import (
    bench_catalog,
    bench_evaluation,
    bench_scaling,
    bench_scoring,
    bench_validation,
)


@pytest.fixture
def cfg(job_config):
    job_config.scoring.batch_size = 256
    return job_config


def test_scoring_bench_smoke(spark, cfg):
    result = bench_scoring(cfg, rows=3000, record=False, repeats=2)
    assert all(len(rates) == 2 for rates in result["rounds_rows_per_s"].values())
    for key in ("rows", "ours_rows_per_s", "predict_batch_udf_rows_per_s", "naive_udf_rows_per_s",
                "io_floor_rows_per_s", "torch_inprocess_rows_per_s", "udf_rows_per_s"):
        assert result[key] > 0, key
    assert result["rows"] == 3000


def test_evaluation_bench_smoke(spark, cfg):
    result = bench_evaluation(cfg, rows=20000, record=False)
    assert result["rows"] == 20000
    assert result["ours_seconds"] > 0 and result["mllib_seconds"] > 0
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


def test_scaling_bench_smoke(spark, cfg):
    result = bench_scaling(cfg, rows=500, record=False)
    assert [r["rows"] for r in result["runs"]] == [500, 2000, 8000]
    assert all(r["seconds"] > 0 and r["peak_python_worker_rss_mib"] > 0 for r in result["runs"])


def test_catalog_bench_smoke(spark, cfg):
    result = bench_catalog(cfg, rows=4000, record=False, items=40, top_k=5)
    assert result["rows"] == 4000 and result["users"] == 100
    assert result["factored_pairs_per_s"] > 0 and result["rows_pairs_per_s"] > 0
    assert result["top_k_pairs_in_both"] > 0.99 and result["max_abs_dp_factored_vs_rows"] < 1e-6
    assert result["max_score_gap_of_differing_pairs"] < 1e-6
