"""The `mmoe` command line: thin typer commands over the typed job functions.

Every job command prints its run manifest (JSON) as the last stdout line, also on failure; the
one-line error goes to stderr. Only this module exits. Heavy imports (Spark, torch, GX) happen
inside the commands, so `mmoe --help` and argument errors are instant.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer

from jobs.config import JobConfig, load_config
from jobs.errors import InputError, MmoeError, RegressionDetected
from jobs.manifest import error_line, run_job
from jobs.warehouse import date_range, safe_name
from mmoe_model.archs import ARCHS

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Batch scoring and offline evaluation of multi-task (MMoE) models on Spark.")
data_app = typer.Typer(no_args_is_help=True, help="Write the features and labels tables.")
app.add_typer(data_app, name="data")
models_app = typer.Typer(no_args_is_help=True,
                         help="The model registry in the warehouse: register, promote, list.")
app.add_typer(models_app, name="models")

MODEL_HELP = ("Model: an artifact directory, a registered version, or @alias (the promotion of "
              "that alias in force on each ds).")

BENCHES = ("scoring", "evaluation", "validation", "scaling", "compare", "catalog")


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
# Running a job: the shared helper finishes the manifest; this layer prints it and exits.


def _job(ctx: typer.Context, job: str, dataset: str, ds: Optional[str],
         body: Callable[[JobConfig, str], object]) -> None:
    """Run ``body(cfg, run_id)`` (it returns the stage's result); print the manifest as the last
    stdout line; on failure print one line on stderr and exit non-zero."""
    outcome = run_job(job, dataset, ds, ctx.obj.job_config, body)
    exc = outcome.error
    # The error line first, then the manifest: under spark-submit, Spark's PythonRunner merges
    # the Python driver's stderr into its stdout, and the manifest must stay the last line.
    if exc is not None and not isinstance(exc, KeyboardInterrupt):
        print(f"error: {error_line(exc)}", file=sys.stderr, flush=True)
    print(outcome.manifest.to_json(), flush=True)
    if exc is None:
        return
    if isinstance(exc, KeyboardInterrupt):
        raise typer.Exit(130)
    raise typer.Exit(getattr(exc, "exit_code", 1))


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
    def body(cfg: JobConfig, run_id: str):
        if not input.is_file():
            raise InputError(f"--input {input} is not a readable file")
        from jobs.data.census import ingest_census

        return ingest_census(_spark(cfg), cfg, input, ds)

    _job(ctx, "data-census", "census", ds, body)


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
    def body(cfg: JobConfig, run_id: str):
        from jobs.data.synth import generate_synth

        return generate_synth(cfg, start, days, rows_per_day, seed=seed,
                              task_correlation=task_correlation)

    _job(ctx, "data-synth", "synth", start, body)


def _model_options(model, gate: str | None, gate_k: int | None,
                   expert_groups: list[str] | None):
    """The config's ModelConfig with ``train``'s model options applied (validated there)."""
    from dataclasses import replace

    from mmoe_model.config import GATE_KINDS, ExpertGroup
    from mmoe_model.errors import ModelConfigError

    changes: dict[str, object] = {}
    if gate is not None:
        changes["gate"] = _check_choice(gate, GATE_KINDS, "--gate")
    if gate_k is not None:
        changes["gate_k"] = gate_k
    if gate_k is not None and changes.get("gate", model.gate) != "topk":
        raise InputError("--gate-k applies to topk gates only (add --gate topk)")
    try:
        if expert_groups:
            changes["expert_layout"] = tuple(expert_groups)
            changes["num_experts"] = sum(ExpertGroup.parse(g).count for g in expert_groups)
        return replace(model, **changes) if changes else model
    except ModelConfigError as exc:
        raise InputError(str(exc)) from None


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
    gate_k: Optional[int] = typer.Option(None, "--gate-k", min=1,
                                         help="Experts a topk gate keeps per row "
                                              "(default: the config's training.gate_k)."),
    expert_group: Optional[list[str]] = typer.Option(
        None, "--expert-group",
        help="Repeatable: one expert group of a heterogeneous / field-split bank, e.g. "
             "'6xmlp' '2xcross:2' or '2xmlp:64@work' (replaces training.expert_layout; "
             "num_experts becomes their total)."),
    resume: bool = typer.Option(True, "--resume/--no-resume",
                                help="Continue an interrupted run of the same --out after its "
                                     "last finished epoch (default), or start over."),
    checkpoint_dir: Optional[Path] = typer.Option(
        None, "--checkpoint-dir",
        help="Where the per-epoch checkpoint goes (default: under the warehouse's "
             "<dataset>/_checkpoints/, keyed on --out); removed once the artifact is written."),
) -> None:
    """Train a model on the features/labels tables of a ds range and save an artifact."""
    def body(cfg: JobConfig, run_id: str):
        _check_choice(arch, ARCHS, "--arch")
        cfg.training.model = _model_options(cfg.training.model, gate, gate_k, expert_group)
        date_range(start, end)
        _spec(dataset)
        from jobs.stages.train import train_model

        return train_model(cfg, dataset, arch, start, end, out, epochs, seed, resume=resume,
                           checkpoint_dir=checkpoint_dir)

    _job(ctx, "train", dataset, end, body)


@app.command()
def validate(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset"),
    ds: str = typer.Option(..., "--ds"),
) -> None:
    """Validate a features partition with the Great Expectations suite derived from the spec."""
    def body(cfg: JobConfig, run_id: str):
        spec = _spec(dataset)
        from jobs.stages.validate import validate_partition

        return validate_partition(_spark(cfg), cfg, spec, ds, run_id=run_id)

    _job(ctx, "validate", dataset, ds, body)


@app.command()
def score(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset"),
    ds: str = typer.Option(..., "--ds"),
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    with_gates: bool = typer.Option(False, "--with-gates", help="Add per-row gate weights."),
    catalog: bool = typer.Option(False, "--catalog",
                                 help="Score catalog candidates (or users x top items) and write top-K recommendations."),
) -> None:
    """Score the validated rows of a partition and write the predictions table."""
    def body(cfg: JobConfig, run_id: str):
        spec = _spec(dataset)
        from jobs.stages.score import score_catalog, score_partition

        target = _model_arg(model)
        if catalog:
            return score_catalog(_spark(cfg), cfg, spec, ds, target)
        return score_partition(_spark(cfg), cfg, spec, ds, target, with_gates)

    _job(ctx, "score", dataset, ds, body)


def _model_arg(model: str) -> "Path | str":
    """An existing directory stays a directory (the old behaviour); anything else is a
    registered version or @alias, resolved through the registry for the ds."""
    return Path(model) if not model.startswith("@") and Path(model).is_dir() else model


@app.command()
def backfill(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset"),
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
        spec = _spec(dataset)
        from jobs.stages.backfill import backfill_range, summary_table

        with _progress(len(days), f"backfill {dataset}") as on_day:
            result = backfill_range(_spark(cfg), cfg, spec, start, end, _model_arg(model),
                                    force=force, fail_fast=fail_fast, on_day=on_day)
        print(summary_table(result), file=sys.stderr, flush=True)
        result.raise_if_failed()
        return result

    _job(ctx, "backfill", dataset, start, body)


@contextmanager
def _progress(total: int, label: str) -> Iterator[Callable]:
    """A tqdm bar on stderr when it is a terminal, and one plain line per finished day always
    (so logs and Airflow show progress too)."""
    from tqdm import tqdm

    from jobs.stages.backfill import day_line

    bar = tqdm(total=total, desc=label, unit="day", file=sys.stderr,
               disable=not sys.stderr.isatty(), leave=False)

    def on_day(day) -> None:
        tqdm.write(day_line(label.split()[-1], day), file=sys.stderr)
        bar.update(1)

    try:
        yield on_day
    finally:
        bar.close()


@app.command()
def evaluate(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset"),
    ds: str = typer.Option(..., "--ds"),
    model_version: Optional[list[str]] = typer.Option(None, "--model-version",
                                                      help="Only these versions (repeatable)."),
) -> None:
    """Join predictions with labels and write the metrics table for a ds."""
    def body(cfg: JobConfig, run_id: str):
        spec = _spec(dataset)
        for version in model_version or []:
            safe_name(version, "--model-version")
        from jobs.stages.evaluate import evaluate_partition

        return evaluate_partition(_spark(cfg), cfg, spec, ds, model_version or None)

    _job(ctx, "evaluate", dataset, ds, body)


@models_app.command("register")
def models_register(
    ctx: typer.Context,
    directory: Path = typer.Argument(..., help="Model artifact directory."),
    alias: Optional[str] = typer.Option(None, "--alias", help="Also promote it to this alias."),
    effective: Optional[str] = typer.Option(None, "--effective",
                                            help="With --alias: first ds it is in force "
                                                 "(default: today, UTC)."),
    reason: Optional[str] = typer.Option(None, "--reason", help="Why (kept in the history)."),
) -> None:
    """Copy an artifact into its dataset's registry (content-addressed) and record it."""
    def body(cfg: JobConfig, run_id: str):
        from jobs.registry import register_model

        return register_model(cfg, directory, alias, effective, reason)

    _registry_job(ctx, "models-register", lambda: _artifact_dataset(directory), body)


@models_app.command("promote")
def models_promote(
    ctx: typer.Context,
    version: str = typer.Argument(..., help="A registered model version."),
    alias: str = typer.Option(..., "--alias", help="champion, challenger[-NAME], or any name."),
    effective: Optional[str] = typer.Option(None, "--effective",
                                            help="First ds it is in force (default: today, UTC)."),
    reason: Optional[str] = typer.Option(None, "--reason", help="Why (kept in the history)."),
    dataset: Optional[str] = typer.Option(None, "--dataset",
                                          help="Needed only when several datasets hold V."),
) -> None:
    """Point an alias at a registered version from an effective date on."""
    def body(cfg: JobConfig, run_id: str):
        from jobs.registry import promote_model

        return promote_model(cfg, version, alias, effective, reason, dataset)

    def which_dataset() -> str:
        from jobs.registry import find_dataset

        return dataset or find_dataset(ctx.obj.job_config(), safe_name(version, "version"))

    _registry_job(ctx, "models-promote", which_dataset, body)


@models_app.command("list")
def models_list(
    ctx: typer.Context,
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Only this dataset."),
    as_json: bool = typer.Option(False, "--json", help="One JSON list instead of the table."),
) -> None:
    """The registered versions: version, checksum, spec, registered, aliases (effective dates)."""
    try:
        from jobs.registry import format_table, list_models

        rows = list_models(ctx.obj.job_config(), dataset)
    except Exception as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        raise typer.Exit(getattr(exc, "exit_code", 1))
    if as_json:
        print(json.dumps(rows))
    else:
        shown = [r | {"checksum": r["checksum"][:12]} for r in rows]
        print(format_table(shown, ["dataset", "version", "checksum", "spec", "registered",
                                   "aliases"]))


def _artifact_dataset(directory: Path) -> str:
    from jobs.registry import artifact_dataset

    return artifact_dataset(directory)


def _registry_job(ctx: typer.Context, job: str, dataset: Callable[[], str],
                  body: Callable[[JobConfig, str], object]) -> None:
    """Registry writes are jobs with a manifest under the dataset they touch; that dataset is
    found first (a one-line error when it cannot be)."""
    try:
        name = dataset()
    except Exception as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        raise typer.Exit(getattr(exc, "exit_code", 1))
    _job(ctx, job, name, None, body)


@app.command()
def compare(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset"),
    baseline: str = typer.Option(..., "--baseline", help="The champion's model version."),
    candidate: str = typer.Option(..., "--candidate", help="The challenger's model version."),
    start: str = typer.Option(..., "--start", help="First ds YYYY-MM-DD."),
    end: str = typer.Option(..., "--end", help="Last ds YYYY-MM-DD (the manifest's ds)."),
    segment: Optional[list[str]] = typer.Option(
        None, "--segment", help="Segment column (repeatable; default: evaluation.segments / the spec's)."),
    fail_on_regression: bool = typer.Option(
        False, "--fail-on-regression", help="Exit 3 when the candidate breaks a guardrail."),
) -> None:
    """Offline A/B: the candidate vs the baseline per task x segment x metric, with intervals,
    adjusted p-values, verdicts and a ship decision -> ab_reports + HTML + Markdown."""
    def body(cfg: JobConfig, run_id: str):
        date_range(start, end)
        safe_name(baseline, "--baseline")
        safe_name(candidate, "--candidate")
        spec = _spec(dataset)
        from jobs.stages.compare import compare_models

        result = compare_models(_spark(cfg), cfg, spec, baseline, candidate, start, end, segment or None)
        broken = result.decision.broken_guardrails
        if fail_on_regression and broken:
            record = result.record()
            raise RegressionDetected(
                f"candidate {candidate} breaks {len(broken)} guardrail(s) vs {baseline}: {broken[0]}"
                + (f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""),
                details={**{k: v for k, v in record.__dict__.items() if k != "details"},
                         **record.details})
        return result

    _job(ctx, "compare", dataset, end, body)


@app.command()
def demo(ctx: typer.Context) -> None:
    """The nightly flow end to end on the config's demo section (what `make demo` runs)."""
    try:
        cfg = ctx.obj.job_config()
        from jobs.demo import main as run_demo

        run_demo(cfg)
    except Exception as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        raise typer.Exit(getattr(exc, "exit_code", 1))


@app.command()
def bench(
    ctx: typer.Context,
    which: str = typer.Argument(..., help=f"One of: {', '.join(BENCHES)}."),
    rows: Optional[int] = typer.Option(None, "--rows", min=1),
    results: Optional[Path] = typer.Option(
        None, "--results", help="Markdown file to append the results to "
                                "(default: <warehouse>/_bench/benchmarks.md)."),
) -> None:
    """Benchmark a stage; prints one JSON object as the last line and appends it to --results."""
    try:
        _check_choice(which, BENCHES, "bench")
        cfg = ctx.obj.job_config()
        from jobs import bench as bench_mod

        result = getattr(bench_mod, f"bench_{which}")(cfg, rows, results)
    except Exception as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        raise typer.Exit(getattr(exc, "exit_code", 1))
    print(json.dumps(result, default=str))


def command_line(path: list[str], **options: object) -> list[str]:
    """The arguments of an ``mmoe`` call built from the CLI's own definitions: ``path`` names the
    sub-command (``["score"]``, ``["data", "synth"]``), ``options`` its parameters by their
    Python names (``ds="2026-11-03"``; global ones like ``config`` go before the sub-command).
    A name the command does not declare is a ``KeyError``, so a renamed option breaks callers
    (the Airflow runner) in a test, not at 3 a.m. None values and False flags are left out."""
    import typer.main

    group = typer.main.get_command(app)
    command, head = group, []
    for name in path:
        command = command.commands[name]  # KeyError: no such sub-command
    flags = {p.name: p for p in group.params} | {p.name: p for p in command.params}
    tail: list[str] = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        param = flags[name]  # KeyError: the command has no such option
        target = head if param in group.params else tail
        if getattr(param, "is_flag", False):
            target.append(param.opts[0])
            continue
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            target += [param.opts[0], str(item)]
    return head + list(path) + tail


def main() -> None:
    app()


if __name__ == "__main__":
    main()
