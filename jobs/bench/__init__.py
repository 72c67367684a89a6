"""`mmoe bench WHICH`: one ``bench_<which>(cfg, rows, results)`` per benchmark (results go to
``--results``, default under the warehouse, never into the source tree)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs.bench.common import _run_harness
from jobs.bench.compare import run_compare_bench
from jobs.bench.evaluation import run_evaluation_bench
from jobs.bench.scoring import bench_catalog, bench_scaling, bench_scoring
from jobs.bench.validation import run_validation_bench
from jobs.core.config import JobConfig

__all__ = ["bench_scoring", "bench_scaling", "bench_catalog", "bench_evaluation",
           "bench_compare", "bench_validation"]


def bench_evaluation(cfg: JobConfig, rows: int | None = None, results: Path | None = None,
                     record: bool = True) -> dict[str, Any]:
    return _run_harness("evaluation", run_evaluation_bench, cfg, rows or 20_000_000, results,
                        record)


def bench_compare(cfg: JobConfig, rows: int | None = None, results: Path | None = None,
                  record: bool = True) -> dict[str, Any]:
    return _run_harness("compare", run_compare_bench, cfg, rows or 10_000_000, results, record)


def bench_validation(cfg: JobConfig, rows: int | None = None, results: Path | None = None,
                     record: bool = True) -> dict[str, Any]:
    return _run_harness("validation", run_validation_bench, cfg, rows or 10_000_000, results,
                        record)
