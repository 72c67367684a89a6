"""`make demo`: the product's three uses on the embedded default config, in about 60 lines.

generate synth days → train a champion (``demo.arch``) and a challenger
(``demo.challenger_arch``) on all but the last day, register them as ``@champion`` /
``@challenger`` → **1. the nightly day**: validate → score → evaluate the last (held-out) day,
with its metrics table → **2. a backfill** of every demo day with both models in one Spark
session (each day validated once), with its per-day table → **3. the A/B**: ``compare`` on the
held-out day, its decision and the report's path → **4. the catalog**: top-K items per user →
what next. Each step is run and recorded exactly as the CLI runs a job (its manifest goes to
``_runs/``, whose path is printed once, never to the screen); what the screen shows of a step
is the command's own summary (:mod:`jobs.cli.summary`) over that manifest.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from dataclasses import asdict, replace

import typer

from jobs.cli._app import app, exit_on_error
from jobs.cli.summary import (
    backfill_summary,
    compare_summary,
    metrics_table,
    recommendations_summary,
    use_colour,
)
from jobs.core.config import JobConfig, load_config
from jobs.core.errors import MmoeError
from jobs.core.manifest import RunManifest, error_line, run_job
from jobs.core.modelref import ModelRef
from jobs.core.warehouse import Warehouse, date_range

INDENT = "   "


class DemoFailed(MmoeError):
    """A demo step failed; its manifest (printed above) has the details."""


def _step(name: str, dataset: str, ds: str, cfg: JobConfig, body,
          label: str | None = None, quiet: bool = False) -> RunManifest:
    """One step, run and recorded exactly as the CLI runs a job (:func:`run_job`)."""
    started = time.perf_counter()
    outcome = run_job(name, dataset, ds, lambda: cfg, lambda cfg, run_id: body())
    m = outcome.manifest
    if outcome.error is not None:
        raise DemoFailed(f"demo step {name} failed: {error_line(outcome.error)} "
                         f"(manifest: {m.manifest_path})") from outcome.error
    if quiet:
        return m
    counts = f"{m.input_rows:,} rows in, {m.output_rows:,} out"
    if m.quarantined_rows:
        counts += f", {m.quarantined_rows:,} quarantined"
    model = f", model {m.model_version}" if m.model_version else ""
    print(f"{INDENT}{label or name:<15} ds={ds}  {counts}{model}  "
          f"({time.perf_counter() - started:.1f}s)", flush=True)
    return m


def _section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _indented(text: str) -> None:
    print("\n".join(INDENT + line for line in text.splitlines()), flush=True)


def run_demo(cfg: JobConfig) -> dict[str, RunManifest]:
    # deferred: pyspark, torch, GX (CLI start-up)
    from jobs.backfill.stage import backfill_range
    from jobs.compare.stage import compare_models
    from jobs.core.registry import register_model
    from jobs.core.spark import get_spark
    from jobs.data.synth import generate_synth
    from jobs.evaluate.stage import evaluate_partition, evaluate_recommendations
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
    wh = Warehouse(cfg.warehouse)
    arms = {"champion": demo.arch, "challenger": demo.challenger_arch}
    model_dirs = {alias: wh.beside("artifacts", f"{demo.dataset}-{arch}")
                  for alias, arch in arms.items()}
    colour = use_colour(sys.stdout)
    runs: dict[str, RunManifest] = {}
    print(f"mmoe demo: {spec.name}, {demo.days} days of {demo.rows_per_day:,} rows; every step's "
          f"run manifest goes to {wh.runs_dir(spec.name)}", flush=True)
    _section(f"0. Data, and two models trained on {days[0]}..{train_end} ({last} is held out), "
             f"registered as @champion ({arms['champion']}) and @challenger "
             f"({arms['challenger']})")
    runs["data"] = _step("data-synth", spec.name, days[0], cfg, lambda: generate_synth(
        cfg, days[0], demo.days, demo.rows_per_day, seed=demo.seed,
        logging_policy=demo.logging_policy), label="data synth")
    for alias, arch in arms.items():
        runs[f"train-{alias}"] = _step("train", spec.name, train_end, cfg, lambda: train_model(
            cfg, spec.name, arch, days[0], train_end, model_dirs[alias], demo.epochs, demo.seed,
            progress=False), label=f"train @{alias}")
        runs[f"register-{alias}"] = _step(
            "models-register", spec.name, days[0], cfg,
            lambda: register_model(cfg, model_dirs[alias], alias=alias, effective=days[0]),
            quiet=True)
    spark = get_spark(cfg.spark)

    _section(f"1. The nightly day {last}: validate -> score @champion -> evaluate")
    runs["validate"] = _step("validate", spec.name, last, cfg,
                             lambda: validate_partition(spark, cfg, spec, last))
    runs["score"] = _step("score", spec.name, last, cfg, lambda: score_partition(
        spark, cfg, spec, last, ModelRef.parse("@champion"), False))
    runs["evaluate"] = _step("evaluate", spec.name, last, cfg, lambda: evaluate_partition(
        spark, cfg, spec, last, [runs["score"].model_version]))
    version = runs["score"].model_version
    _indented(f"metrics of {version} (segment all):\n"
              + metrics_table(runs["evaluate"].details["pooled"][version], spec.task_names))

    _section(f"2. Backfill {days[0]}..{last}, @champion and @challenger in one Spark session "
             f"(each day validated once)")

    # the nightly day above shows the Data Docs; rendering them is most of a validation
    quick = replace(cfg, validation=replace(cfg.validation, keep_data_docs=False))

    def backfill():
        result = backfill_range(spark, quick, spec, days[0], last, ["@champion", "@challenger"])
        result.raise_if_failed()
        return result

    runs["backfill"] = _step("backfill", spec.name, last, cfg, backfill)  # a range: its last day
    _indented(backfill_summary(asdict(runs["backfill"]), colour))

    _section(f"3. A/B on the held-out day {last}: @challenger ({arms['challenger']}) vs "
             f"@champion ({arms['champion']})")
    gated = cfg if cfg.compare.gates else replace(cfg, compare=replace(cfg.compare, gates=demo.gates))
    runs["compare"] = _step("compare", spec.name, last, cfg, lambda: compare_models(
        spark, gated, spec, ModelRef.parse("@champion"), ModelRef.parse("@challenger"), last,
        last))
    _indented(compare_summary(asdict(runs["compare"]), colour))

    if spec.catalog is not None:
        _section("4. Catalog: top items per user")
        runs["catalog"] = _step("score", spec.name, last, cfg, lambda: score_catalog(
            spark, cfg, spec, last, ModelRef.parse("@champion")), label="score --catalog")
        _print_recommendations(spark, cfg, spec, last, runs["catalog"])
        version = runs["catalog"].model_version
        runs["catalog-evaluate"] = _step("evaluate", spec.name, last, cfg, lambda: evaluate_recommendations(
            spark, cfg, spec, last, [version]), quiet=True)
        k = max([x for x in cfg.evaluation.ranking_ks if x <= cfg.scoring.catalog.top_k] or [1])
        _indented(recommendations_summary(asdict(runs["catalog-evaluate"]), spec.task_names, k))
    _what_next(cfg, spec, runs)
    return runs


def _what_next(cfg: JobConfig, spec, runs: dict[str, RunManifest]) -> None:
    wh = Warehouse(cfg.warehouse)
    _section("What next")
    print(f"{INDENT}look:     the A/B report {runs['compare'].outputs.get('html')}")
    if runs["validate"].outputs.get("report"):
        print(f"{INDENT}          the validation report {runs['validate'].outputs['report']}")
    print(f"{INDENT}          every table under {wh.root / spec.name}")
    print(f"{INDENT}real data: the README's census example (mmoe data census, train, validate, "
          f"score, evaluate)")
    print(f"{INDENT}A/B:      mmoe backfill --model @champion --model @challenger ..., then "
          f"mmoe compare (README, 'Offline A/B')")
    print(f"{INDENT}nightly:  airflow_dags/mmoe_nightly.py (validate -> score champion and "
          f"challengers -> evaluate -> compare); ranges: airflow_dags/mmoe_backfill.py")


def _print_recommendations(spark, cfg: JobConfig, spec, ds: str, run: RunManifest, users: int = 1,
                           k: int = 3) -> None:
    """The top items of a few users from the catalog run's recommendations partition, one line
    per user."""
    from pyspark.sql import functions as F

    from jobs.core.tables import table  # deferred: pyspark (CLI start-up)

    cat = spec.catalog
    recs = table(cfg, spec.name, "recommendations", spark).read(spark, ds,
                                                                 model_version=run.model_version)
    first = [r[0] for r in recs.select(cat.user_key).distinct().orderBy(cat.user_key)
             .limit(users).collect()]
    rows = (recs.where(F.col(cat.user_key).isin(first) & (F.col("rank") <= k))
            .orderBy(cat.user_key, "rank").collect())
    fused = f" {'×' if run.details.get('fusion') == 'product' else '+'} ".join(
        f"p_{t}" for t in spec.task_names)
    print(f"{INDENT}the top {run.details.get('top_k')} items of each user, ranked by {fused} "
          f"({run.input_rows:,} candidate pairs, {run.details.get('method')} scoring); "
          f"the first {k} for {'one user' if users == 1 else f'{users} users'} "
          f"({cat.item_key} (score)):")
    for user in first:
        top = [r for r in rows if r[cat.user_key] == user]
        print(f"{INDENT}{cat.user_key} {user}: "
              + ", ".join(f"{r[cat.item_key]} ({r['score']:.2g})" for r in top))


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


@app.command("demo", short_help="The product's three uses on synthetic data (make demo).")
def demo_command(ctx: typer.Context) -> None:
    """The nightly day, an A/B of two models, a backfill and the catalog on the config's demo
    section (what `make demo` runs)."""
    try:
        main(ctx.obj.job_config())
    except Exception as exc:
        exit_on_error(exc)


if __name__ == "__main__":
    sys.exit(main())
