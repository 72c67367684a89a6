"""`mmoe backfill`: validate, score and evaluate every day of a range in one Spark session."""

from __future__ import annotations

import sys

import typer

from jobs.cli._app import (
    MODEL_HELP,
    app,
    day_progress,
    load_dataset_spec,
    run_command,
    spark_session,
)
from jobs.core import precheck
from jobs.core.config import JobConfig
from jobs.core.modelref import ModelRef
from jobs.core.warehouse import date_range


@app.command()
def backfill(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", help="Dataset spec name (schemas/specs/NAME.yaml)."),
    start: str = typer.Option(..., "--start", help="First ds YYYY-MM-DD."),
    end: str = typer.Option(..., "--end", help="Last ds YYYY-MM-DD (inclusive)."),
    model: str = typer.Option("@champion", "--model", help=MODEL_HELP),
    force: bool = typer.Option(False, "--force", help="Validate, score and evaluate every day "
                                                      "again, even when up to date."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first failed day."),
) -> None:
    """Validate, score and evaluate every day of a range in one Spark application."""
    def body(cfg: JobConfig, run_id: str):
        days = date_range(start, end)
        spec = load_dataset_spec(dataset)
        target = ModelRef.parse(model)
        precheck.model_known(cfg, spec.name, end, target)  # before the JVM starts
        # deferred: pyspark, torch, GX (CLI start-up)
        from jobs.backfill.stage import backfill_range, day_line, summary_table

        with day_progress(len(days), f"backfill {dataset}", day_line) as on_day:
            result = backfill_range(spark_session(cfg), cfg, spec, start, end, target,
                                    force=force, fail_fast=fail_fast, on_day=on_day)
        print(summary_table(result), file=sys.stderr, flush=True)
        result.raise_if_failed()
        return result

    run_command(ctx, "backfill", dataset, start, body)
