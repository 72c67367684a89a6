"""`mmoe data census|synth`: write the features and labels tables."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from jobs.cli._app import data_app, run_command, spark_session
from jobs.core.config import JobConfig
from jobs.core.errors import InputError
from jobs.core.warehouse import local_path
from jobs.data import CENSUS_DATASETS


@data_app.command("census", short_help="Ingest a raw UCI Census-Income file (two data sets).")
def data_census(
    ctx: typer.Context,
    input: Path = typer.Option(..., "--input", metavar="PATH",
                               help="Raw UCI Census-Income file (.gz or plain)."),
    ds: str = typer.Option(..., "--ds", metavar="DATE", help="Partition date YYYY-MM-DD."),
) -> None:
    """Ingest a raw UCI Census-Income file into census-group1 and census-group2."""
    def body(cfg: JobConfig, run_id: str):
        source = local_path(input, "--input")
        if not source.is_file():
            raise InputError(f"--input {input} is not a readable file")
        from jobs.data.census import ingest_census  # deferred: pyspark (CLI start-up)

        return ingest_census(spark_session(cfg), cfg, source, ds)

    # the manifest is kept beside the data sets the ingest writes (there is no "census" data set)
    run_command(ctx, "data-census", "census", ds, body, runs_in=CENSUS_DATASETS)


@data_app.command("synth", short_help="Generate synthetic impression logs and catalog tables.")
def data_synth(
    ctx: typer.Context,
    start: str = typer.Option(..., "--start", metavar="DATE",
                              help="First partition date YYYY-MM-DD."),
    days: int = typer.Option(..., "--days", min=1, metavar="N",
                             help="Number of daily partitions."),
    rows_per_day: int = typer.Option(..., "--rows-per-day", min=1, metavar="N",
                                     help="Impressions per day."),
    seed: int = typer.Option(0, "--seed", metavar="S",
                             help="Random seed (the same seed, the same data)."),
    task_correlation: float = typer.Option(0.5, "--task-correlation", min=-1.0, max=1.0,
                                           metavar="RHO",
                                           help="Cosine between the tasks' weight vectors (rho)."),
    logging_policy: Optional[str] = typer.Option(
        None, "--logging-policy", metavar="uniform|popularity|softmax",
        help="Log exploration: each request shows 10 of a pool of candidates drawn by this "
             "policy, with position and propensity (off: today's data)."),
    pool_size: int = typer.Option(50, "--pool-size", metavar="M",
                                  help="Candidates per request with --logging-policy."),
) -> None:
    """Generate synthetic impression logs (click, like, conversion) plus catalog tables."""
    def body(cfg: JobConfig, run_id: str):
        # deferred: pyarrow/numpy (CLI start-up)
        from jobs.data.synth import generate_synth

        return generate_synth(cfg, start, days, rows_per_day, seed=seed,
                              task_correlation=task_correlation, logging_policy=logging_policy,
                              pool_size=pool_size)

    run_command(ctx, "data-synth", "synth", start, body)
