"""`mmoe bench WHICH`: benchmarks; one JSON object as the last stdout line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from jobs.cli._app import app, check_choice, exit_on_error
from jobs.core.errors import InputError

BENCHES = ("scoring", "evaluation", "validation", "scaling", "compare", "catalog")


@app.command(short_help="Benchmark a stage against its peers (JSON on stdout).")
def bench(
    ctx: typer.Context,
    which: str = typer.Argument(..., metavar="WHICH", help=f"One of: {', '.join(BENCHES)}."),
    rows: Optional[int] = typer.Option(None, "--rows", min=1, metavar="N",
                                       help="Rows to time (default: the bench's own size)."),
    results: Optional[Path] = typer.Option(
        None, "--results", metavar="FILE",
        help="Markdown file to append the results to (default: <warehouse>/_bench/benchmarks.md)."),
    connect: Optional[str] = typer.Option(
        None, "--connect", metavar="URL",
        help="scoring: also time both readers from a client of this Spark Connect server "
             "(sc://HOST:PORT)."),
    repeats: Optional[int] = typer.Option(
        None, "--repeats", min=1, metavar="N",
        help="scoring: rounds of every method, medians reported (default 3)."),
    precision: Optional[str] = typer.Option(
        None, "--precision", metavar="P",
        help="scoring: scoring.precision for ours, the public UDF and the model limit "
             "(fp32 | bf16 | int8; default: the config's)."),
) -> None:
    """Benchmark a stage; prints one JSON object as the last line and appends it to --results."""
    try:
        check_choice(which, BENCHES, "bench")
        cfg = ctx.obj.job_config()
        from jobs import bench as bench_mod  # deferred: pyspark, torch (CLI start-up)

        extra = {k: v for k, v in (("connect", connect), ("repeats", repeats)) if v}
        for flag in [*extra, *(["precision"] if precision else [])]:
            if which != "scoring":
                raise InputError(f"--{flag} applies to `mmoe bench scoring` only")
        if precision:
            from mmoe_model.precision import PRECISIONS

            check_choice(precision, PRECISIONS, "--precision")
            cfg.scoring.precision = precision
        result = getattr(bench_mod, f"bench_{which}")(cfg, rows, results, **extra)
    except Exception as exc:
        exit_on_error(exc)
    print(json.dumps(result, default=str))
