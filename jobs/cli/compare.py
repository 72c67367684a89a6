"""`mmoe compare`: offline A/B of two models over a ds range."""

from __future__ import annotations

from typing import Optional

import typer

from jobs.cli._app import app, load_dataset_spec, run_command, spark_session
from jobs.core import precheck
from jobs.core.config import JobConfig
from jobs.core.errors import RegressionDetected
from jobs.core.modelref import ModelRef
from jobs.core.warehouse import date_range

REF_HELP = "a model version, @alias (in force on --end) or artifact directory"


@app.command(short_help="Offline A/B of two models: verdicts, decision, report.")
def compare(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", metavar="NAME",
                                help="Dataset spec name (schemas/specs/NAME.yaml)."),
    baseline: str = typer.Option(..., "--baseline", metavar="MODEL",
                                 help=f"The champion: {REF_HELP}."),
    candidate: str = typer.Option(..., "--candidate", metavar="MODEL",
                                  help=f"The challenger: {REF_HELP}."),
    start: str = typer.Option(..., "--start", metavar="DATE", help="First ds YYYY-MM-DD."),
    end: str = typer.Option(..., "--end", metavar="DATE",
                            help="Last ds YYYY-MM-DD (the manifest's ds)."),
    segment: Optional[list[str]] = typer.Option(
        None, "--segment", metavar="COL[,COL]",
        help="Slice: a segment column, or columns crossed (platform,user_cohort); repeatable; "
             "default: compare.segments / evaluation.segments / the spec's."),
    fail_on_regression: bool = typer.Option(
        False, "--fail-on-regression", help="Exit 3 when the candidate breaks a guardrail or fails a gate."),
) -> None:
    """Offline A/B: the candidate vs the baseline per task x segment x metric, with intervals,
    adjusted p-values, verdicts and a ship decision -> ab_reports + HTML + Markdown."""
    def body(cfg: JobConfig, run_id: str):
        date_range(start, end)
        base = ModelRef.parse(baseline, "--baseline")
        cand = ModelRef.parse(candidate, "--candidate")
        spec = load_dataset_spec(dataset)
        precheck.different_models(cfg, spec.name, end, base, cand)  # before the JVM starts
        # deferred: pyspark (CLI start-up)
        from jobs.compare.stage import compare_models

        result = compare_models(spark_session(cfg), cfg, spec, base, cand, start, end,
                                segment or None)
        broken = result.decision.broken_guardrails + [
            f"gate {g}" for g in result.decision.failed_gates]
        if fail_on_regression and broken:
            record = result.record()
            raise RegressionDetected(
                f"candidate {result.candidate} breaks {len(broken)} guardrail(s)/gate(s) vs "
                f"{result.baseline}: {broken[0]}"
                + (f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""),
                details={**{k: v for k, v in record.__dict__.items() if k != "details"},
                         **record.details})
        return result

    run_command(ctx, "compare", dataset, end, body, ds_option="--end")
