"""The `mmoe` app, its global options, and the one helper every job command runs through.

Each command module (``jobs/cli/<group>.py``) is a thin typer command over a typed job
function. Stage modules import pyspark, torch or Great Expectations at the top, so command
modules import them inside the command body: `mmoe --help` and argument errors stay instant.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import typer
from tqdm import tqdm

from jobs.cli.summary import summarize, use_colour
from jobs.core.config import JobConfig, load_config
from jobs.core.errors import InputError
from jobs.core.manifest import error_line, run_job
from jobs.core.warehouse import local_path

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Batch scoring and offline evaluation of multi-task (MMoE) models on Spark.")
data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                       help="Write the features and labels tables.")
app.add_typer(data_app, name="data")
models_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                         help="The model registry in the warehouse: register, promote, list, "
                              "import, export (ONNX).",
                         short_help="The model registry: register, promote, import, export.")
app.add_typer(models_app, name="models")

MODEL_HELP = ("Model: an artifact directory, a registered version, or @alias (the promotion of "
              "that alias in force on each ds).")


@dataclass
class Globals:
    config: Optional[Path]
    warehouse: Optional[str]
    remote: Optional[str] = None

    def job_config(self) -> JobConfig:
        return load_config(None if self.config is None else local_path(self.config, "--config"),
                           self.warehouse, self.remote)


@app.callback()
def _globals(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", envvar="MMOE_CONFIG", metavar="FILE",
                                          help="Job config YAML (default: the embedded demo config)."),
    # a string, not a Path: Path("file:///x") collapses to "file:/x" (load_config parses it)
    warehouse: Optional[str] = typer.Option(None, "--warehouse", envvar="MMOE_WAREHOUSE",
                                            metavar="DIR|URI",
                                            help="Warehouse root (a path or file:// URI); "
                                                 "overrides the config's."),
    remote: Optional[str] = typer.Option(None, "--remote", envvar="SPARK_REMOTE", metavar="URL",
                                         help="Spark Connect server (sc://HOST:PORT); overrides "
                                              "the config's spark.remote. Unset: classic Spark."),
) -> None:
    ctx.obj = Globals(config, warehouse, remote)


def run_command(ctx: typer.Context, job: str, dataset: str, ds: Optional[str],
                body: Callable[[JobConfig, str], object],
                runs_in: Optional[Sequence[str]] = None, ds_option: str = "--ds") -> None:
    """Run ``body(cfg, run_id)`` (it returns the stage's result; ``runs_in``: the data sets whose
    ``_runs/`` keep the manifest, default ``dataset``); print the command's summary
    (:mod:`jobs.cli.summary`, from the manifest) on stderr and the manifest as the last stdout
    line; on failure print one line on stderr (its last) and exit non-zero."""
    outcome = run_job(job, dataset, ds, ctx.obj.job_config, body, runs_in, ds_option)
    exc = outcome.error
    # The error line first, then the manifest: under spark-submit, Spark's PythonRunner merges
    # the Python driver's stderr into its stdout, and the manifest must stay the last line.
    summary = summarize(asdict(outcome.manifest), colour=use_colour(sys.stderr))
    if summary:
        print(summary, file=sys.stderr, flush=True)
    if exc is not None:
        print(f"error: {error_line(exc)}", file=sys.stderr, flush=True)
    print(outcome.manifest.to_json(), flush=True)
    if exc is None:
        return
    if isinstance(exc, KeyboardInterrupt):
        raise typer.Exit(130)
    raise typer.Exit(getattr(exc, "exit_code", 1))


def exit_on_error(exc: BaseException) -> None:
    """The commands without a manifest: one error line, the error's exit code."""
    print(f"error: {error_line(exc)}", file=sys.stderr)
    raise typer.Exit(getattr(exc, "exit_code", 1))


def load_dataset_spec(dataset: str):
    from schemas import load_spec

    return load_spec(dataset)


def spark_session(cfg: JobConfig):
    # Deferred: pyspark's import costs seconds and `mmoe --help` must stay instant.
    from jobs.core.spark import get_spark

    return get_spark(cfg.spark)


def check_choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise InputError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")
    return value


@contextmanager
def day_progress(total: int, label: str, day_line: Callable) -> Iterator[Callable]:
    """A tqdm bar on stderr when it is a terminal, and one plain line per finished day always
    (so logs and Airflow show progress too)."""
    bar = tqdm(total=total, desc=label, unit="day", file=sys.stderr,
               disable=not sys.stderr.isatty(), leave=False)

    def on_day(day) -> None:
        tqdm.write(day_line(label.split()[-1], day), file=sys.stderr)
        bar.update(1)

    try:
        yield on_day
    finally:
        bar.close()
