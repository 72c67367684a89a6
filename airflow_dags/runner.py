"""What an Airflow task does: run an `mmoe` sub-command, return its manifest or fail loudly.

Kept out of the DAG file so the DAG parses fast and this logic is testable without Airflow.
"""

from __future__ import annotations

import json
import subprocess


class JobFailed(RuntimeError):
    """The job exited non-zero; the message is its one-line error."""


def run_ds(data_interval_start) -> str:
    """The ds a scheduled run works on: the data interval's START date (the day whose data the
    interval covers), never the run's wall-clock time."""
    return data_interval_start.date().isoformat()


def build_command(subcommand: list[str], ds: str, dataset: str, model_dir: str | None,
                  config: str | None, mmoe_bin: str = "mmoe") -> list[str]:
    """The ``mmoe`` command line, its flags taken from the CLI's own definitions."""
    from jobs.cli import command_line

    options: dict[str, object] = {"config": config or None, "dataset": dataset, "ds": ds}
    if subcommand[0] == "score":
        options["model"] = model_dir or None
    return [mmoe_bin, *command_line(subcommand, **options)]


def run_job(subcommand: list[str], ds: str, dataset: str, model_dir: str | None = None,
            config: str | None = None, mmoe_bin: str = "mmoe") -> dict:
    cmd = build_command(subcommand, ds, dataset, model_dir, config, mmoe_bin)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    try:
        manifest = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        manifest = {}
    if proc.returncode != 0:
        error = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no error output"
        raise JobFailed(f"{' '.join(cmd)} exited {proc.returncode}: {error}")
    return manifest
