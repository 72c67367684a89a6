"""The `mmoe` command line: thin typer commands over the typed job functions, one module per
command group (`data`, `train`, `nightly` = validate/score/evaluate, `backfill`, `compare`,
`models`, `demo`, `bench`).

Every job command prints its run manifest (JSON) as the last stdout line, also on failure; the
one-line error goes to stderr. Only this package exits.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
import typer.main

# registers the commands; `mmoe --help` lists them in this order (the groups data, models last)
# isort: off
from jobs.cli import nightly, compare, backfill, train, demo, bench, data, models, tables  # noqa: F401
# isort: on
from jobs.cli._app import app


def command_line(path: list[str], **options: object) -> list[str]:
    """The arguments of an ``mmoe`` call built from the CLI's own definitions: ``path`` names the
    sub-command (``["score"]``, ``["data", "synth"]``), ``options`` its parameters by their
    Python names (``ds="2026-11-03"``; global ones like ``config`` go before the sub-command).
    A name the command does not declare is a ``KeyError``, so a renamed option breaks callers
    (the Airflow runner) in a test, not at 3 a.m. None values and False flags are left out."""
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


class _NotPy4j(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "py4j" not in Path(record.pathname).parts


def quiet_py4j_root_logging() -> None:
    """py4j reports a lost JVM connection with the module-level ``logging.exception`` (the root
    logger), which, with no handler there, installs one on stderr and prints a traceback. A job
    stopped by SIGTERM with its whole process group (the JVM dies too) can hit that while it
    cleans up, after which stderr would not end in one error line (seen once in a clean-clone
    run of tests/test_signals.py). The job's error line says what happened; every other
    record reaches stderr as Python's last-resort handler prints it (WARNING and up, the
    message)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_NotPy4j())
    root.addHandler(handler)


def main(argv: list[str] | None = None) -> None:
    """The console script: the app without click's standalone mode, so a mistyped flag or a
    missing option is one plain ``error:`` line on stderr (exit 2), not Typer's box."""
    quiet_py4j_root_logging()
    try:
        code = app(args=argv, prog_name="mmoe", standalone_mode=False)
    except typer.Abort:
        print("error: stopped by SIGINT (interrupted)", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as exc:  # click's UsageError / ClickException (typer's own copy)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        if exc.format_message():  # empty: a group called bare, its help already printed
            print(f"error: {exc.format_message()}{hint}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)
