"""`mmoe validate | score | evaluate`: one step of the nightly flow for one ds."""

from __future__ import annotations

from typing import Optional

import typer

from jobs.cli._app import MODEL_HELP, app, load_dataset_spec, run_command, spark_session
from jobs.core import precheck
from jobs.core.config import JobConfig
from jobs.core.modelref import ModelRef

DATASET_HELP = "Dataset spec name (schemas/specs/NAME.yaml)."
DS_HELP = "Partition date YYYY-MM-DD."


@app.command(short_help="Validate a day's features (Great Expectations, drift).")
def validate(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", metavar="NAME", help=DATASET_HELP),
    ds: str = typer.Option(..., "--ds", metavar="DATE", help=DS_HELP),
) -> None:
    """Validate a features partition with the Great Expectations suite derived from the spec."""
    def body(cfg: JobConfig, run_id: str):
        spec = load_dataset_spec(dataset)
        precheck.features_present(cfg, spec.name, ds, "validate")  # before the JVM starts
        # deferred: pyspark, GX (start-up)
        from jobs.validate.stage import validate_partition

        return validate_partition(spark_session(cfg), cfg, spec, ds, run_id=run_id)

    run_command(ctx, "validate", dataset, ds, body)


@app.command(short_help="Score a validated day with a model.")
def score(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", metavar="NAME", help=DATASET_HELP),
    ds: str = typer.Option(..., "--ds", metavar="DATE", help=DS_HELP),
    model: str = typer.Option(..., "--model", metavar="MODEL", help=MODEL_HELP),
    with_gates: bool = typer.Option(False, "--with-gates", help="Add per-row gate weights."),
    catalog: bool = typer.Option(False, "--catalog",
                                 help="Score catalog candidates (or users x top items) and write top-K recommendations."),
) -> None:
    """Score the validated rows of a partition and write the predictions table."""
    def body(cfg: JobConfig, run_id: str):
        spec = load_dataset_spec(dataset)
        target = ModelRef.parse(model)
        precheck.model_known(cfg, spec.name, ds, target)  # before the JVM starts
        if not catalog:
            precheck.features_present(cfg, spec.name, ds, "score")
        # deferred: pyspark, torch (start-up)
        from jobs.score.catalog import score_catalog
        from jobs.score.stage import score_partition

        if catalog:
            return score_catalog(spark_session(cfg), cfg, spec, ds, target)
        return score_partition(spark_session(cfg), cfg, spec, ds, target, with_gates)

    run_command(ctx, "score", dataset, ds, body)


@app.command(short_help="A day's metrics: predictions against labels.")
def evaluate(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", metavar="NAME", help=DATASET_HELP),
    ds: str = typer.Option(..., "--ds", metavar="DATE", help=DS_HELP),
    model_version: Optional[list[str]] = typer.Option(
        None, "--model-version", metavar="V",
        help="Only these models (repeatable): a version, @alias or artifact directory."),
    recommendations: bool = typer.Option(
        False, "--recommendations",
        help="Evaluate the catalog recommendations written for the ds (mmoe score --catalog) "
             "against the interactions logged that day (+ evaluation."
             "recommendations_label_offset_days): top-K accuracy, coverage, exposure Gini, "
             "popularity bias, diversity, novelty (segment 'recommendations')."),
) -> None:
    """Join predictions with labels and write the metrics table for a ds."""
    def body(cfg: JobConfig, run_id: str):
        spec = load_dataset_spec(dataset)
        refs = [ModelRef.parse(v, "--model-version") for v in model_version or []]
        # deferred: pyspark (start-up)
        from jobs.evaluate.stage import evaluate_partition, evaluate_recommendations

        run = evaluate_recommendations if recommendations else evaluate_partition
        return run(spark_session(cfg), cfg, spec, ds, refs or None)

    run_command(ctx, "evaluate", dataset, ds, body)
