"""`mmoe backfill`: validate, score and evaluate every day of a range in one Spark session, for
one model or several (an A/B's arms in one command)."""

from __future__ import annotations

from typing import Optional

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
from jobs.core.modelref import parse_models
from jobs.core.warehouse import date_range

DEFAULT_MODEL = "@champion"


@app.command(short_help="Validate, score and evaluate every day of a ds range.")
def backfill(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", metavar="NAME",
                                help="Dataset spec name (schemas/specs/NAME.yaml)."),
    start: str = typer.Option(..., "--start", metavar="DATE", help="First ds YYYY-MM-DD."),
    end: str = typer.Option(..., "--end", metavar="DATE", help="Last ds YYYY-MM-DD (inclusive)."),
    model: Optional[list[str]] = typer.Option(
        None, "--model", metavar="MODEL",
        help=f"{MODEL_HELP} Repeatable: each day is validated once, then every "
                              f"model is scored and evaluated (default {DEFAULT_MODEL})."),
    force: bool = typer.Option(False, "--force", help="Validate, score and evaluate every day "
                                                      "again, even when up to date."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first failed day."),
    catalog: bool = typer.Option(False, "--catalog", help="Each day's catalog recommendations "
                                 "(mmoe score --catalog per day, point-in-time users and "
                                 "items) instead of the day's impressions."),
) -> None:
    """Validate, score and evaluate every day of a range in one Spark application."""
    def body(cfg: JobConfig, run_id: str):
        days = date_range(start, end)
        spec = load_dataset_spec(dataset)
        targets = parse_models(model or [DEFAULT_MODEL])
        for target in targets:
            precheck.model_known(cfg, spec.name, end, target)  # before the JVM starts
        several = len(targets) > 1
        # deferred: pyspark, torch, GX (CLI start-up)
        from jobs.backfill.stage import backfill_range, day_line

        with day_progress(len(days) * len(targets), f"backfill {dataset}",
                          lambda name, day: day_line(name, day, several)) as on_day:
            result = backfill_range(spark_session(cfg), cfg, spec, start, end, targets,
                                    force=force, fail_fast=fail_fast, on_day=on_day,
                                    catalog=catalog)
        result.raise_if_failed()
        return result

    # a range job's manifest ds is the range's last day, as for compare (README)
    run_command(ctx, "backfill", dataset, end, body, ds_option="--end")
