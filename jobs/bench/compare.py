"""`mmoe bench compare`: `mmoe compare` of two arms on N paired rows x 3 tasks (default
replicates), timed beside `mmoe evaluate` of the same two arms on the same partition; then the
counterfactual section's cost: compare on min(N, 2M) logged rows (softmax logging, pools of 50)
without and with the section (two seeded untrained reference-size MMoEs, registered, each day
validated and scored once; the section scores every pool with both).

Data: a synth features/labels partition of N rows (the real generator, reused when present)
and two prediction versions written once by Spark from the labels (sigmoid of a label shift plus
noise; the candidate a little less noisy), so both jobs read exactly what they read in
production.
"""

from __future__ import annotations

import time
from typing import Any

import copy
import dataclasses

import torch

from jobs.bench.common import BENCH_DS, ensure_synth_partition
from jobs.compare.stage import compare_models
from jobs.core.config import JobConfig
from jobs.core.spark import get_spark
from jobs.core.registry import register_model
from jobs.core.warehouse import Warehouse, read_json, read_table, replacing, write_json
from jobs.data.synth import generate_synth
from jobs.evaluate.stage import evaluate_partition
from jobs.score.stage import score_partition
from jobs.validate.stage import validate_partition
from mmoe_model.artifact import save_artifact
from mmoe_model.features import FeatureEncoder, InputLayout
from mmoe_model.models import ModelConfig, build_model
from schemas.spec import load_spec

BASELINE, CANDIDATE = "bench-champion", "bench-challenger"
LOGGED_MAX_ROWS, POOL = 2_000_000, 50


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
        "counterfactual": counterfactual_cost(cfg, spark, min(rows, LOGGED_MAX_ROWS)),
    }


def _logged_warehouse(cfg: JobConfig, spark, rows: int) -> tuple[JobConfig, list[str]]:
    """A warehouse with one logged synth day of ``rows`` impressions, two registered models,
    the day validated and scored by both (built once per size, then reused)."""
    logged = copy.deepcopy(cfg)
    logged.warehouse = Warehouse(cfg.warehouse).scratch(f"logged-{rows}")
    wh, spec = Warehouse(logged.warehouse), load_spec("synth")
    marker = wh.scratch("ready.json")
    ready = read_json(marker) or {}
    if ready.get("rows") == rows:
        return logged, ready["versions"]
    generate_synth(logged, BENCH_DS, 1, rows, seed=0, logging_policy="softmax", pool_size=POOL)
    sample = read_table(wh.partition("synth", "features", BENCH_DS)).slice(0, 20_000)
    encoder = FeatureEncoder.fit(spec, sample)
    versions = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        config = ModelConfig(arch="mmoe")
        model = build_model(config, InputLayout.from_spec(spec), len(spec.tasks)).eval()
        out = wh.scratch(f"model-{seed}")
        save_artifact(out, model, config, spec, encoder, {"note": "benchmark, untrained"})
        versions.append(register_model(logged, out).version)
    validate_partition(spark, logged, spec, BENCH_DS)
    for version in versions:
        score_partition(spark, logged, spec, BENCH_DS, version)
    write_json(marker, {"rows": rows, "versions": versions})
    return logged, versions


def counterfactual_cost(cfg: JobConfig, spark, rows: int) -> dict[str, Any]:
    """compare on a logged day without, then with, the counterfactual section."""
    spec = load_spec("synth")
    logged, (base, cand) = _logged_warehouse(cfg, spark, rows)
    seconds = {}
    for enabled in (False, True):
        run_cfg = copy.deepcopy(logged)
        run_cfg.compare.counterfactual = dataclasses.replace(run_cfg.compare.counterfactual,
                                                             enabled=enabled)
        started = time.perf_counter()
        result = compare_models(spark, run_cfg, spec, base, cand, BENCH_DS, BENCH_DS)
        seconds[enabled] = time.perf_counter() - started
    table = result.counterfactual.table
    return {"logged_rows": rows, "pool_size": POOL, "candidate_rows": rows * POOL // 10,
            "compare_seconds": round(seconds[False], 2),
            "with_counterfactual_seconds": round(seconds[True], 2),
            "counterfactual_over_compare": round(seconds[True] / seconds[False], 2),
            "policy_value_rows": len(table)}
