"""`mmoe models register | promote | list | import | export`: the model registry in the
warehouse, and ONNX graphs in and out of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import typer

from jobs.cli._app import exit_on_error, models_app, run_command
from jobs.core.config import JobConfig
from jobs.core.registry import (
    artifact_dataset,
    find_dataset,
    format_table,
    import_model,
    list_models,
    promote_model,
    register_model,
)
from jobs.core.warehouse import safe_name


# Shared by register and import (typer reads the defaults; they are never mutated).
ALIAS = typer.Option(None, "--alias", metavar="A", help="Also promote it to this alias.")
EFFECTIVE = typer.Option(None, "--effective", metavar="DATE",
                         help="With --alias: first ds it is in force (default: today, UTC).")
REASON = typer.Option(None, "--reason", metavar="TEXT", help="Why (kept in the history).")


@models_app.command("register",
                    short_help="Copy an artifact into the registry (optionally alias it).")
def models_register(
    ctx: typer.Context,
    directory: Path = typer.Argument(..., metavar="DIR", help="Model artifact directory."),
    alias: Optional[str] = ALIAS,
    effective: Optional[str] = EFFECTIVE,
    reason: Optional[str] = REASON,
) -> None:
    """Copy an artifact into its dataset's registry (content-addressed) and record it."""
    def body(cfg: JobConfig, run_id: str):
        return register_model(cfg, directory, alias, effective, reason)

    _registry_job(ctx, "models-register", lambda: artifact_dataset(directory), body)


@models_app.command("promote", short_help="Point an alias at a version from an effective date.")
def models_promote(
    ctx: typer.Context,
    version: str = typer.Argument(..., metavar="V", help="A registered model version."),
    alias: str = typer.Option(..., "--alias", metavar="A",
                              help="champion, challenger[-NAME], or any name."),
    effective: Optional[str] = typer.Option(None, "--effective", metavar="DATE",
                                            help="First ds it is in force (default: today, UTC)."),
    reason: Optional[str] = typer.Option(None, "--reason", metavar="TEXT",
                                         help="Why (kept in the history)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", metavar="NAME",
                                          help="Needed only when several datasets hold V."),
) -> None:
    """Point an alias at a registered version from an effective date on."""
    def body(cfg: JobConfig, run_id: str):
        return promote_model(cfg, version, alias, effective, reason, dataset)

    def which_dataset() -> str:
        return dataset or find_dataset(ctx.obj.job_config(), safe_name(version, "version"))

    _registry_job(ctx, "models-promote", which_dataset, body)


@models_app.command("import", short_help="Register an ONNX model trained elsewhere.")
def models_import(
    ctx: typer.Context,
    file: Path = typer.Argument(..., metavar="FILE", help="The model file (an ONNX graph)."),
    fmt: str = typer.Option(..., "--format", metavar="onnx", help="The model format: onnx."),
    dataset: str = typer.Option(..., "--dataset", metavar="NAME",
                                help="The dataset whose spec it scores."),
    alias: Optional[str] = ALIAS,
    effective: Optional[str] = EFFECTIVE,
    reason: Optional[str] = REASON,
) -> None:
    """Check an ONNX multi-task graph against the dataset's spec, wrap it in the artifact format
    and register it (inputs: spec feature columns; outputs: p_<task> or [N, T] probabilities)."""
    def body(cfg: JobConfig, run_id: str):
        return import_model(cfg, file, fmt, dataset, alias, effective, reason)

    _registry_job(ctx, "models-import", lambda: safe_name(dataset, "--dataset"), body)


@models_app.command("export", short_help="Write a model as one ONNX graph (encoding included).")
def models_export(
    ctx: typer.Context,
    model: str = typer.Argument(..., metavar="DIR|V|@ALIAS",
                                help="An artifact directory, a registered version, or @alias."),
    fmt: str = typer.Option(..., "--format", metavar="onnx", help="The model format: onnx."),
    out: Path = typer.Option(..., "--out", metavar="FILE", help="The ONNX file to write."),
    dataset: Optional[str] = typer.Option(None, "--dataset", metavar="NAME",
                                          help="Needed only when several datasets hold MODEL."),
    ds: Optional[str] = typer.Option(None, "--ds", metavar="DATE",
                                     help="For @alias: the ds whose promotion in force is "
                                          "exported (default: today, UTC)."),
) -> None:
    """Write the whole model (feature encoding included) as one ONNX graph with the contract's
    inputs and outputs."""
    # Deferred: the exporter imports torch and onnx; `mmoe models --help` stays instant.
    from jobs.runtime.onnx import export_dataset, export_model

    def body(cfg: JobConfig, run_id: str):
        return export_model(cfg, model, fmt, out, dataset, ds)

    _registry_job(ctx, "models-export",
                  lambda: export_dataset(ctx.obj.job_config(), model, dataset), body)


@models_app.command("list", short_help="The registered versions and their aliases.")
def models_list(
    ctx: typer.Context,
    dataset: Optional[str] = typer.Option(None, "--dataset", metavar="NAME",
                                          help="Only this dataset."),
    as_json: bool = typer.Option(False, "--json", help="One JSON list instead of the table."),
) -> None:
    """The registered versions: version, checksum, spec, registered, aliases (effective dates).
    A read: it prints the table (or JSON) and writes no manifest."""
    try:
        rows = list_models(ctx.obj.job_config(), dataset)
    except Exception as exc:
        exit_on_error(exc)
    if as_json:
        print(json.dumps(rows))
    else:
        shown = [r | {"checksum": r["checksum"][:12]} for r in rows]
        print(format_table(shown, ["dataset", "version", "checksum", "spec", "registered",
                                   "aliases"]))


def _registry_job(ctx: typer.Context, job: str, dataset: Callable[[], str],
                  body: Callable[[JobConfig, str], object]) -> None:
    """Registry writes are jobs with a manifest under the dataset they touch; that dataset is
    found first (a one-line error when it cannot be)."""
    try:
        name = dataset()
    except Exception as exc:
        exit_on_error(exc)
    run_command(ctx, job, name, None, body)
