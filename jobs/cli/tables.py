"""`mmoe tables`: what a logical table holds, through the jobs' own table layer."""

from __future__ import annotations

from typing import Optional

import typer

from jobs.cli._app import app, check_choice, run_command, spark_session
from jobs.core.config import MAPPABLE_TABLES, JobConfig


@app.command(short_help="What a table holds: its days, or one day's data and model versions.")
def tables(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", metavar="NAME", help="Dataset spec name."),
    table: str = typer.Option(..., "--table", metavar="TABLE",
                              help=f"Logical table: {', '.join(MAPPABLE_TABLES)}."),
    ds: Optional[str] = typer.Option(None, "--ds", metavar="DATE",
                                     help="One day: whether it holds data, and its model versions."),
) -> None:
    """Describe a logical table (a path under the warehouse or the catalog table the config's
    `tables:` maps it to) as the jobs see it; the manifest's `details` carry the facts. The
    nightly DAG's sensor and its evaluate step decide on these facts."""
    def body(cfg: JobConfig, run_id: str):
        from jobs.core.table_facts import is_catalog, table_facts

        check_choice(table, MAPPABLE_TABLES, "--table")
        spark = spark_session(cfg) if is_catalog(cfg, dataset, table) else None
        return table_facts(cfg, dataset, table, ds, spark)

    run_command(ctx, "tables", dataset, ds, body)
