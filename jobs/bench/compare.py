"""`mmoe bench compare`: `mmoe compare` of two arms on N paired rows x 3 tasks (default
replicates), timed beside `mmoe evaluate` of the same two arms on the same partition.

Data: a synth features/labels partition of N rows (the real generator, reused when present)
and two prediction versions written once by Spark from the labels (sigmoid of a label shift plus
noise; the candidate a little less noisy), so both jobs read exactly what they read in
production.
"""

from __future__ import annotations

import time
from typing import Any

from jobs.bench.common import BENCH_DS, ensure_synth_partition
from jobs.compare.stage import compare_models
from jobs.core.config import JobConfig
from jobs.core.spark import get_spark
from jobs.core.warehouse import Warehouse, read_json, replacing, write_json
from jobs.evaluate.stage import evaluate_partition
from schemas.spec import load_spec

BASELINE, CANDIDATE = "bench-champion", "bench-challenger"


def _ensure_predictions(spark, cfg: JobConfig, spec, ds: str, rows: int) -> None:
    from pyspark.sql import functions as F

    wh = Warehouse(cfg.warehouse)
    labels = spark.read.parquet(str(wh.partition(spec.name, "labels", ds)))
    for i, (version, noise) in enumerate(((BASELINE, 1.0), (CANDIDATE, 0.9))):
        target = wh.partition(spec.name, "predictions", ds, model_version=version)
        marker = target.parent / f".bench-rows-{version}.json"
        if (read_json(marker) or {}).get("rows") == rows:
            continue
        cols = [F.col(k) for k in spec.key_names]
        for j, t in enumerate(spec.task_names):
            logit = F.lit(-2.0) + F.lit(1.5) * F.col(t) + F.lit(noise) * F.randn(100 * i + j)
            cols.append((1 / (1 + F.exp(-logit))).alias(f"p_{t}"))
        cols.append(F.current_timestamp().alias("scored_at"))
        with replacing(target) as staging:
            labels.select(*cols).write.parquet(str(staging))
        write_json(marker, {"rows": rows})


def run_compare_bench(cfg: JobConfig, rows: int) -> dict[str, Any]:
    spec = load_spec("synth")
    ensure_synth_partition(cfg, rows)
    spark = get_spark(cfg.spark)
    _ensure_predictions(spark, cfg, spec, BENCH_DS, rows)

    started = time.perf_counter()
    evaluate_partition(spark, cfg, spec, BENCH_DS, [BASELINE, CANDIDATE])
    evaluate_seconds = time.perf_counter() - started

    started = time.perf_counter()
    result = compare_models(spark, cfg, spec, BASELINE, CANDIDATE, BENCH_DS, BENCH_DS)
    compare_seconds = time.perf_counter() - started
    return {
        "rows": rows, "paired_rows": result.pairing.paired_rows, "tasks": len(spec.task_names),
        "segments": result.segments, "replicates": cfg.compare.replicates,
        "compare_seconds": round(compare_seconds, 2), "evaluate_seconds": round(evaluate_seconds, 2),
        "compare_over_evaluate": round(compare_seconds / evaluate_seconds, 2),
        "ship": result.decision.ship, "report_rows": len(result.report),
        "html": result.outputs.get("html"),
    }
