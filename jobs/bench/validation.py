"""`mmoe bench validation`: the GX validation job on a big synth partition vs its floor.

The floor is ONE Spark aggregation (one action) over the same partition, features joined with
labels as validation does, computing the same counts: rows, distinct keys, every row-level rule's
violations, per-column nulls and out-of-vocabulary counts. Scoring the same partition is timed
too, so the validation cost can be read against the job it protects.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from jobs.bench.common import (
    BENCH_DS,
    _score_direct,
    ensure_synth_partition,
    reference_artifact,
)
from jobs.core.config import JobConfig
from jobs.core.spark import default_parallelism, get_spark
from jobs.core.warehouse import Warehouse
from jobs.validate.rules import row_rules, vocabulary_values
from jobs.validate.stage import validate_partition
from mmoe_model.artifact import ModelArtifact, read_artifact_files
from schemas import load_spec


def one_pass_counts(spark, spec, features_dir: Path, labels_dir: Path | None) -> dict[str, int]:
    """Every count the suite needs, in a single aggregation."""
    from pyspark.sql import functions as F

    frame = spark.read.parquet(str(features_dir))
    with_labels = labels_dir is not None
    if with_labels:
        frame = frame.join(spark.read.parquet(str(labels_dir)), on=spec.key_names, how="left")
    # duplicate keys are counted as rows - distinct keys, so the key-copies rule is skipped here
    rules = [(r.reason, r.condition) for r in row_rules(spec, with_labels)
             if r.rule != "duplicate_key"]
    aggs = [F.count(F.lit(1)).alias("rows"),
            F.countDistinct(*[F.col(k) for k in spec.key_names]).alias("distinct_keys")]
    aggs += [F.sum(F.expr(cond).cast("int")).alias(name) for name, cond in rules]
    for col in spec.features_table_columns:
        aggs.append(F.sum(F.col(col).isNull().cast("int")).alias(f"null:{col}"))
    for feat in spec.categorical_features:
        if feat.vocabulary is not None and feat.oov == "bucket":
            known = F.col(feat.name).isin(vocabulary_values(feat))
            aggs.append(F.sum((F.col(feat.name).isNotNull() & ~known).cast("int")).alias(f"oov:{feat.name}"))
    row = frame.agg(*aggs).first()
    return {k: int(v or 0) for k, v in row.asDict().items()}


def run_validation_bench(cfg: JobConfig, rows: int) -> dict[str, Any]:
    spec = load_spec("synth")
    features_dir = ensure_synth_partition(cfg, rows)
    wh = Warehouse(cfg.warehouse)
    labels_dir = wh.partition(spec.name, "labels", BENCH_DS)
    spark = get_spark(cfg.spark)

    # with drift once (warms the JVM and GX up, writes the day's profile), then without drift
    # and with drift again: the two timed runs are equally warm
    validate_partition(spark, cfg, spec, BENCH_DS)
    started = time.perf_counter()
    validate_partition(spark, replace(cfg, drift=replace(cfg.drift, enabled=False)), spec,
                       BENCH_DS)
    without_drift_seconds = time.perf_counter() - started
    started = time.perf_counter()
    report = validate_partition(spark, cfg, spec, BENCH_DS)
    validation_seconds = time.perf_counter() - started

    started = time.perf_counter()
    counts = one_pass_counts(spark, spec, features_dir, labels_dir)
    floor_seconds = time.perf_counter() - started

    files = read_artifact_files(reference_artifact(cfg))
    artifact = ModelArtifact.from_files(files)
    started = time.perf_counter()
    # the score job's direct reader (what `mmoe score` runs on a parquet partition)
    _score_direct(spark, features_dir, files, artifact, spec, cfg,
                  Path(cfg.warehouse) / "bench-out" / "validation-scoring",
                  dt.datetime.now(dt.timezone.utc))
    scoring_seconds = time.perf_counter() - started

    return {
        "bench": "validation", "rows": rows,
        "seconds": round(validation_seconds, 2),
        "spark_jobs": report.spark_jobs,
        "one_pass_floor_seconds": round(floor_seconds, 2),
        "validation_vs_floor": round(validation_seconds / floor_seconds, 2),
        "without_drift_seconds": round(without_drift_seconds, 2),
        "without_drift_vs_floor": round(without_drift_seconds / floor_seconds, 2),
        "drift_added": round(validation_seconds / without_drift_seconds - 1.0, 3),
        # features profiled; the bench day has no earlier days, so no reference-edge counts
        # (9 count_if per dense feature) are in the aggregate
        "drift_features": (report.drift_details or {}).get("watched", 0),
        "scoring_seconds": round(scoring_seconds, 2),
        "quarantined_rows": report.quarantined_rows,
        "floor_rows": counts["rows"], "floor_distinct_keys": counts["distinct_keys"],
        "expectations": len(report.rules),
        "spark_cores": default_parallelism(spark),
    }
