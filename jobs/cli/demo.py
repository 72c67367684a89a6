"""`make demo`: the whole nightly flow on the embedded default config.

generate synth days → train a small MMoE on all but the last day → validate → score → evaluate
the last day → print a per-task metrics table, where every output is, and what to run next.
Each step is run and recorded exactly as the CLI runs a job (its manifest goes to ``_runs/``,
whose path is printed once); the screen gets one line per step.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path

import typer

from jobs.cli._app import app, exit_on_error
from jobs.core import metric_registry
from jobs.core.config import JobConfig, load_config
from jobs.core.errors import MmoeError
from jobs.core.manifest import RunManifest, error_line, run_job
from jobs.core.warehouse import Warehouse, date_range


class DemoFailed(MmoeError):
    """A demo step failed; its manifest (printed above) has the details."""


def _step(name: str, dataset: str, ds: str, cfg: JobConfig, body,
          label: str | None = None) -> RunManifest:
    """One step, run and recorded exactly as the CLI runs a job (:func:`run_job`)."""
    started = time.perf_counter()
    outcome = run_job(name, dataset, ds, lambda: cfg, lambda cfg, run_id: body())
    m = outcome.manifest
    if outcome.error is not None:
        raise DemoFailed(f"demo step {name} failed: {error_line(outcome.error)} "
                         f"(manifest: {m.manifest_path})") from outcome.error
    counts = f"{m.input_rows:,} rows in, {m.output_rows:,} out"
    if m.quarantined_rows:
        counts += f", {m.quarantined_rows:,} quarantined"
    model = f", model {m.model_version}" if m.model_version else ""
    print(f"== {label or name:<16} ds={ds}  {counts}{model}  "
          f"({time.perf_counter() - started:.1f}s)", flush=True)
    return m


def run_demo(cfg: JobConfig) -> dict[str, RunManifest]:
    # deferred: pyspark, torch, GX (CLI start-up)
    from jobs.core.spark import get_spark
    from jobs.data.synth import generate_synth
    from jobs.evaluate.stage import evaluate_partition
    from jobs.score.catalog import score_catalog
    from jobs.score.stage import score_partition
    from jobs.train.stage import train_model
    from jobs.validate.stage import validate_partition
    from schemas import load_spec

    demo = cfg.demo
    spec = load_spec(demo.dataset)
    days = date_range(demo.start, (dt.date.fromisoformat(demo.start)
                                   + dt.timedelta(days=demo.days - 1)).isoformat())
    train_end, last = days[-2] if len(days) > 1 else days[-1], days[-1]
    model_dir = Warehouse(cfg.warehouse).beside("artifacts", f"{demo.dataset}-{demo.arch}")
    runs: dict[str, RunManifest] = {}
    print(f"mmoe demo: {spec.name}, {demo.days} days of {demo.rows_per_day:,} rows; every step's "
          f"run manifest goes to {Warehouse(cfg.warehouse).runs_dir(spec.name)}", flush=True)
    runs["data"] = _step("data-synth", spec.name, days[0], cfg, lambda: generate_synth(
        cfg, days[0], demo.days, demo.rows_per_day, seed=demo.seed))
    runs["train"] = _step("train", spec.name, train_end, cfg, lambda: train_model(
        cfg, spec.name, demo.arch, days[0], train_end, model_dir, demo.epochs, demo.seed))
    spark = get_spark(cfg.spark)
    runs["validate"] = _step("validate", spec.name, last, cfg,
                             lambda: validate_partition(spark, cfg, spec, last))
    runs["score"] = _step("score", spec.name, last, cfg, lambda: score_partition(
        spark, cfg, spec, last, model_dir, False))
    runs["evaluate"] = _step("evaluate", spec.name, last, cfg, lambda: evaluate_partition(
        spark, cfg, spec, last, None))
    if spec.catalog is not None:
        runs["catalog"] = _step("score", spec.name, last, cfg, lambda: score_catalog(
            spark, cfg, spec, last, model_dir), label="score --catalog")
    _print_summary(spark, cfg, spec, last, runs)
    return runs


def _print_summary(spark, cfg: JobConfig, spec, ds: str, runs: dict[str, RunManifest]) -> None:
    from pyspark.sql import functions as F

    from jobs.core.tables import table  # deferred: pyspark (CLI start-up)

    wh = Warehouse(cfg.warehouse)
    shown = metric_registry.names("size", "quality")
    metrics = (table(cfg, spec.name, "metrics", spark).read(spark, ds)
               .where(F.col("segment") == "all")
               .where(F.col("metric").isin(*shown))
               .groupBy("task").pivot("metric").agg(F.first("value"))
               .toPandas().set_index("task").reindex(spec.task_names))
    cols = [c for c in shown if c in metrics.columns]
    for col in metric_registry.names("size"):
        if col in metrics.columns:
            metrics[col] = metrics[col].astype("int64")
    print(f"\n== Offline metrics, {spec.name} ds={ds}, model {runs['score'].model_version}")
    print(metrics[cols].to_string(float_format=lambda v: f"{v:.4f}"))
    _print_gates(spark, cfg, spec, ds, Path(runs["train"].outputs["artifact"]))
    if "catalog" in runs:
        _print_recommendations(spark, cfg, spec, ds, runs["catalog"])
    print("\n== Outputs")
    print(f"   warehouse        {wh.root}")
    for name in ("features", "labels", "quarantine", "validation", "predictions", "metrics",
                 "recommendations", "_runs"):
        print(f"   {name:<16} {wh.table(spec.name, name)}")
    print(f"   model artifact   {runs['train'].outputs.get('artifact')}")
    print("\n== What next")
    print("   real data: the README's census example (mmoe data census, then train, validate, "
          "score, evaluate)")
    print("   A/B: train a second model, score it for the same days, then mmoe compare "
          "--baseline A --candidate B (README, 'Offline A/B')")
    print("   every night: airflow_dags/ (validate -> score champion and challengers -> "
          "evaluate), and mmoe backfill for a range of days")


def _print_recommendations(spark, cfg: JobConfig, spec, ds: str, run: RunManifest, users: int = 3,
                           k: int = 3) -> None:
    """The top items of a few users from the catalog run's recommendations partition."""
    from pyspark.sql import functions as F

    from jobs.core.tables import table  # deferred: pyspark (CLI start-up)

    cat = spec.catalog
    recs = table(cfg, spec.name, "recommendations", spark).read(spark, ds,
                                                                 model_version=run.model_version)
    first = [r[0] for r in recs.select(cat.user_key).distinct().orderBy(cat.user_key)
             .limit(users).collect()]
    rows = (recs.where(F.col(cat.user_key).isin(first) & (F.col("rank") <= k))
            .orderBy(cat.user_key, "rank").toPandas())
    print(f"\n== Catalog: top {k} of {run.details.get('top_k')} items for {users} users "
          f"({run.input_rows:,} candidate pairs, {run.details.get('method')} scoring, "
          f"{run.details.get('fusion')} fusion)")
    print(rows[[cat.user_key, "rank", cat.item_key, "score", *spec.prediction_columns]]
          .to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def _print_gates(spark, cfg: JobConfig, spec, ds: str, model_dir: Path, rows: int = 5000) -> None:
    """Which experts each task's gate uses, on a sample of the scored day (in-process)."""
    from jobs.validate.scorable import passed_rows
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


def main(cfg: JobConfig | None = None) -> int:
    """``make demo`` runs ``mmoe demo``, so ``--config`` / ``--warehouse`` and ``MMOE_CONFIG`` /
    ``MMOE_WAREHOUSE`` apply; ``python -m jobs.cli.demo`` reads the same environment variables."""
    started = time.perf_counter()
    if cfg is None:
        cfg = load_config(os.environ.get("MMOE_CONFIG") or None,
                          os.environ.get("MMOE_WAREHOUSE") or None)
    run_demo(cfg)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f}s", flush=True)
    return 0


@app.command("demo")
def demo_command(ctx: typer.Context) -> None:
    """The nightly flow end to end on the config's demo section (what `make demo` runs)."""
    try:
        main(ctx.obj.job_config())
    except Exception as exc:
        exit_on_error(exc)


if __name__ == "__main__":
    sys.exit(main())
