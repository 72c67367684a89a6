"""The `mmoe` command line: thin typer commands over the typed job functions.

Every job command prints its run manifest (JSON) as the last stdout line, also on failure; the
one-line error goes to stderr. Only this module exits. Heavy imports (Spark, torch, GX) happen
inside the commands, so `mmoe --help` and argument errors are instant.
"""

from __future__ import annotations

import json
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer

from jobs.config import JobConfig, load_config
from jobs.errors import InputError, MmoeError
from jobs.manifest import RunManifest
from jobs.warehouse import Warehouse, date_range, parse_date, safe_name
from mmoe_model.archs import ARCHS

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Batch scoring and offline evaluation of multi-task (MMoE) models on Spark.")
data_app = typer.Typer(no_args_is_help=True, help="Write the features and labels tables.")
app.add_typer(data_app, name="data")

BENCHES = ("scoring", "evaluation", "validation", "scaling")


@dataclass
class Globals:
    config: Optional[Path]
    warehouse: Optional[Path]

    def job_config(self) -> JobConfig:
        return load_config(self.config, self.warehouse)


@app.callback()
def _globals(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", envvar="MMOE_CONFIG",
                                          help="Job config YAML (default: the embedded demo config)."),
    warehouse: Optional[Path] = typer.Option(None, "--warehouse", envvar="MMOE_WAREHOUSE",
                                             help="Warehouse root; overrides the config's."),
) -> None:
    ctx.obj = Globals(config, warehouse)


# --------------------------------------------------------------------------------------------
# Running a job: manifest in, manifest out, one-line errors.


def _error_line(exc: BaseException) -> str:
    if isinstance(exc, MmoeError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _exit_code(exc: BaseException) -> int:
    return getattr(exc, "exit_code", 1)


@contextmanager
def _job(ctx: typer.Context, job: str, dataset: str, ds: Optional[str]) -> Iterator[tuple[JobConfig, RunManifest]]:
    """Validate inputs before any work, run the body, finish and print the manifest."""
    manifest = RunManifest(job=job, dataset=dataset, ds=ds)
    runs_dir: Optional[Path] = None
    try:
        if ds is not None:
            parse_date(ds, "--ds")
        cfg = ctx.obj.job_config()
        safe_name(dataset, "--dataset")
        runs_dir = Warehouse(cfg.warehouse).table(dataset, "_runs")
        yield cfg, manifest
    except KeyboardInterrupt:
        manifest.finish("failed", runs_dir, "interrupted")
        print(manifest.to_json())
        raise typer.Exit(130)
    except Exception as exc:  # every failure becomes a manifest + one line, never a traceback
        line = _error_line(exc)
        if not isinstance(exc, MmoeError) and not isinstance(exc, _model_errors()):
            traceback.print_exc(file=sys.stderr)  # unexpected: keep the detail for debugging
        manifest.finish("failed", runs_dir, line)
        print(manifest.to_json())
        print(f"error: {line}", file=sys.stderr)
        raise typer.Exit(_exit_code(exc))
    manifest.finish("succeeded", runs_dir)
    print(manifest.to_json())


def _model_errors() -> tuple[type, ...]:
    try:
        from mmoe_model.errors import MmoeModelError
    except ImportError:  # pragma: no cover - model package always present once installed
        return ()
    return (MmoeModelError,)


def _spec(dataset: str):
    from schemas import load_spec

    return load_spec(dataset)


def _spark(cfg: JobConfig):
    from jobs.spark import get_spark

    return get_spark(cfg.spark)


def _check_choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise InputError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Commands


@data_app.command("census")
def data_census(
    ctx: typer.Context,
    input: Path = typer.Option(..., "--input", help="Raw UCI Census-Income file (.gz or plain)."),
    ds: str = typer.Option(..., "--ds", help="Partition date YYYY-MM-DD."),
) -> None:
    """Ingest a raw UCI Census-Income file into census-group1 and census-group2."""
    with _job(ctx, "data-census", "census", ds) as (cfg, manifest):
        if not input.is_file():
            raise InputError(f"--input {input} is not a readable file")
        from jobs.data.census import ingest_census

        ingest_census(_spark(cfg), cfg, input, ds, manifest)


@data_app.command("synth")
def data_synth(
    ctx: typer.Context,
    start: str = typer.Option(..., "--start", help="First partition date YYYY-MM-DD."),
    days: int = typer.Option(..., "--days", min=1, help="Number of daily partitions."),
    rows_per_day: int = typer.Option(..., "--rows-per-day", min=1),
    seed: int = typer.Option(0, "--seed"),
    task_correlation: float = typer.Option(0.5, "--task-correlation", min=-1.0, max=1.0,
                                           help="Cosine between the tasks' weight vectors (rho)."),
) -> None:
    """Generate synthetic impression logs (click, like, conversion) plus catalog tables."""
    with _job(ctx, "data-synth", "synth", start) as (cfg, manifest):
        from jobs.data.synth import generate_synth

        generate_synth(cfg, start, days, rows_per_day, seed=seed,
                       task_correlation=task_correlation, manifest=manifest)


@app.command()
def train(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset"),
    arch: str = typer.Option(..., "--arch", help=f"One of: {', '.join(ARCHS)}."),
    start: str = typer.Option(..., "--start"),
    end: str = typer.Option(..., "--end"),
    out: Path = typer.Option(..., "--out", help="Artifact directory to write."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1),
    seed: int = typer.Option(0, "--seed"),
    gate: Optional[str] = typer.Option(None, "--gate",
                                       help="Gate kind: softmax, topk, max or constant "
                                            "(default: the config's training.gate)."),
) -> None:
    """Train a model on the features/labels tables of a ds range and save an artifact."""
    with _job(ctx, "train", dataset, end) as (cfg, manifest):
        _check_choice(arch, ARCHS, "--arch")
        if gate is not None:
            from dataclasses import replace

            from mmoe_model.config import GATE_KINDS

            _check_choice(gate, GATE_KINDS, "--gate")
            cfg.training.model = replace(cfg.training.model, gate=gate)
        date_range(start, end)
        _spec(dataset)
        from jobs.stages.train import train_model

        train_model(cfg, dataset, arch, start, end, out, epochs, seed, manifest)


@app.command()
def validate(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset"),
    ds: str = typer.Option(..., "--ds"),
) -> None:
    """Validate a features partition with the Great Expectations suite derived from the spec."""
    with _job(ctx, "validate", dataset, ds) as (cfg, manifest):
        spec = _spec(dataset)
        from jobs.stages.validate import validate_partition

        validate_partition(_spark(cfg), cfg, spec, ds, manifest)


@app.command()
def score(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset"),
    ds: str = typer.Option(..., "--ds"),
    model: Path = typer.Option(..., "--model", help="Model artifact directory."),
    with_gates: bool = typer.Option(False, "--with-gates", help="Add per-row gate weights."),
    catalog: bool = typer.Option(False, "--catalog",
                                 help="Score users x catalog items and write top-K recommendations."),
) -> None:
    """Score the validated rows of a partition and write the predictions table."""
    with _job(ctx, "score", dataset, ds) as (cfg, manifest):
        spec = _spec(dataset)
        from jobs.stages.score import score_catalog, score_partition

        if catalog:
            score_catalog(_spark(cfg), cfg, spec, ds, model, manifest)
        else:
            score_partition(_spark(cfg), cfg, spec, ds, model, with_gates, manifest)


@app.command()
def evaluate(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset"),
    ds: str = typer.Option(..., "--ds"),
    model_version: Optional[list[str]] = typer.Option(None, "--model-version",
                                                      help="Only these versions (repeatable)."),
) -> None:
    """Join predictions with labels and write the metrics table for a ds."""
    with _job(ctx, "evaluate", dataset, ds) as (cfg, manifest):
        spec = _spec(dataset)
        for version in model_version or []:
            safe_name(version, "--model-version")
        from jobs.stages.evaluate import evaluate_partition

        evaluate_partition(_spark(cfg), cfg, spec, ds, model_version or None, manifest)


@app.command()
def bench(
    ctx: typer.Context,
    which: str = typer.Argument(..., help=f"One of: {', '.join(BENCHES)}."),
    rows: Optional[int] = typer.Option(None, "--rows", min=1),
) -> None:
    """Benchmark a stage; prints one JSON object as the last line and appends to docs/."""
    try:
        _check_choice(which, BENCHES, "bench")
        cfg = ctx.obj.job_config()
        from jobs import bench as bench_mod

        result = getattr(bench_mod, f"bench_{which}")(cfg, rows)
    except Exception as exc:
        print(f"error: {_error_line(exc)}", file=sys.stderr)
        raise typer.Exit(_exit_code(exc))
    print(json.dumps(result, default=str))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
