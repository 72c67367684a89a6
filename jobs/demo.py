"""`make demo`: the whole nightly flow on the embedded default config.

generate synth days → train a small MMoE on all but the last day → validate → score → evaluate
the last day → print a per-task metrics table and where every output is. Each step prints its
run manifest, exactly as the CLI does.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

from jobs.config import JobConfig, load_config
from jobs.manifest import RunManifest
from jobs.warehouse import Warehouse


def _step(name: str, dataset: str, ds: str, cfg: JobConfig, fn) -> RunManifest:
    manifest = RunManifest(job=name, dataset=dataset, ds=ds)
    started = time.perf_counter()
    print(f"\n== {name} ({dataset}, ds={ds})", flush=True)
    try:
        fn(manifest)
    except Exception as exc:
        manifest.finish("failed", Warehouse(cfg.warehouse).table(dataset, "_runs"), str(exc))
        print(manifest.to_json())
        raise
    manifest.finish("succeeded", Warehouse(cfg.warehouse).table(dataset, "_runs"))
    print(manifest.to_json())
    print(f"   {name}: {time.perf_counter() - started:.1f}s", flush=True)
    return manifest


def run_demo(cfg: JobConfig) -> dict[str, RunManifest]:
    from jobs.stages.evaluate import evaluate_partition
    from jobs.stages.score import score_partition
    from jobs.spark import get_spark
    from jobs.data.synth import generate_synth
    from jobs.stages.train import train_model
    from jobs.stages.validate import validate_partition
    from schemas import load_spec

    demo = cfg.demo
    spec = load_spec(demo.dataset)
    first = dt.date.fromisoformat(demo.start)
    days = [(first + dt.timedelta(days=i)).isoformat() for i in range(demo.days)]
    train_end, last = days[-2] if len(days) > 1 else days[-1], days[-1]
    model_dir = Path(cfg.warehouse).parent / "artifacts" / f"{demo.dataset}-{demo.arch}"
    runs: dict[str, RunManifest] = {}
    runs["data"] = _step("data-synth", spec.name, days[0], cfg, lambda m: generate_synth(
        cfg, days[0], demo.days, demo.rows_per_day, seed=demo.seed, manifest=m))
    runs["train"] = _step("train", spec.name, train_end, cfg, lambda m: train_model(
        cfg, spec.name, demo.arch, days[0], train_end, model_dir, demo.epochs, demo.seed, m))
    spark = get_spark(cfg.spark)
    runs["validate"] = _step("validate", spec.name, last, cfg,
                             lambda m: validate_partition(spark, cfg, spec, last, m))
    runs["score"] = _step("score", spec.name, last, cfg, lambda m: score_partition(
        spark, cfg, spec, last, model_dir, False, m))
    runs["evaluate"] = _step("evaluate", spec.name, last, cfg, lambda m: evaluate_partition(
        spark, cfg, spec, last, None, m))
    _print_summary(spark, cfg, spec, last, runs)
    return runs


def _print_summary(spark, cfg: JobConfig, spec, ds: str, runs: dict[str, RunManifest]) -> None:
    from pyspark.sql import functions as F

    wh = Warehouse(cfg.warehouse)
    metrics = (spark.read.parquet(str(wh.partition(spec.name, "metrics", ds)))
               .where(F.col("segment") == "all")
               .where(F.col("metric").isin("auc", "gauc", "logloss", "ne", "calibration", "pr_auc", "positives", "count"))
               .groupBy("task").pivot("metric").agg(F.first("value"))
               .toPandas().set_index("task").reindex(spec.task_names))
    cols = [c for c in ("count", "positives", "auc", "gauc", "pr_auc", "logloss", "ne", "calibration")
            if c in metrics.columns]
    for col in ("count", "positives"):
        if col in metrics.columns:
            metrics[col] = metrics[col].astype("int64")
    print(f"\n== Offline metrics, {spec.name} ds={ds}, model {runs['score'].model_version}")
    print(metrics[cols].to_string(float_format=lambda v: f"{v:.4f}"))
    _print_gates(spark, cfg, spec, ds, Path(runs["train"].outputs["artifact"]))
    print("\n== Outputs")
    print(f"   warehouse        {wh.root}")
    for name in ("features", "labels", "quarantine", "validation", "predictions", "metrics", "_runs"):
        print(f"   {name:<16} {wh.table(spec.name, name)}")
    print(f"   model artifact   {runs['train'].outputs.get('artifact')}")


def _print_gates(spark, cfg: JobConfig, spec, ds: str, model_dir: Path, rows: int = 5000) -> None:
    """Which experts each task's gate uses, on a sample of the scored day (in-process)."""
    from jobs.stages.validate import passed_rows
    from mmoe_model.artifact import ModelArtifact
    from mmoe_model.gates import gate_summary

    artifact = ModelArtifact.load(model_dir)
    sample = passed_rows(spark, cfg, spec, ds).limit(rows).toPandas()
    _, gates = artifact.predict(sample, with_gates=True)  # [B, T, E]
    summary = gate_summary(gates.transpose(1, 0, 2), spec.task_names)
    print(f"\n== Gates ({len(sample)} rows): mean weight per expert, normalised entropy")
    for task, s in summary.items():
        if not s["mean_weight"]:
            print(f"   {task:<12} (no gates in this architecture)")
            continue
        weights = " ".join(f"{w:.2f}" for w in s["mean_weight"])
        flag = "  COLLAPSED onto one expert" if s["collapsed"] else ""
        print(f"   {task:<12} [{weights}]  H={s['normalized_entropy']:.2f}{flag}")


def main() -> int:
    started = time.perf_counter()
    cfg = load_config()
    run_demo(cfg)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
