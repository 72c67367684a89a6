"""Fault injection for the reliability tests: off by default, one environment variable.

``MMOE_FAULT=<name>[,<name>...]`` is read on the driver when a scoring job builds its task
function (:func:`active_faults`); the names travel to the executors inside that function's
closure, so nothing has to be set in the executors' environment (on a cluster too). An unknown
name is a one-line :class:`~jobs.core.errors.ConfigError`.

Faults (each fires only in a task's FIRST attempt, ``TaskContext.attemptNumber() == 0``, after
the task's first Arrow batch was scored — and, with the direct reader, written — so Spark must
retry the task and the retry must give the same output as a clean run):

- ``score_task_first_attempt`` — the scoring function raises :class:`InjectedFault`;
- ``score_worker_kill_first_attempt`` — the Python worker kills itself with SIGKILL
  (a worker crashing mid-batch: out of memory, a segfault in native code);
- ``score_task_hang`` — the task writes its partition and its Python worker's pid to
  ``$MMOE_TEST_PAUSE_DIR/in_task`` (the driver's variable, carried in the closure too) and
  sleeps (up to 10 minutes): a Spark job still running when the signal tests send SIGTERM.

Spark retries a failed task up to ``spark.task.maxFailures`` times (default 4) on a cluster;
plain ``local[N]`` never retries (use ``local[N,F]``).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from pyspark import TaskContext

from jobs.core.errors import ConfigError

FAULT_ENV = "MMOE_FAULT"
FAULTS = ("score_task_first_attempt", "score_worker_kill_first_attempt", "score_task_hang")


class InjectedFault(RuntimeError):
    """Raised in an executor by ``score_task_first_attempt``."""


class Faults(frozenset):
    """The active fault names, plus the driver's ``MMOE_TEST_PAUSE_DIR`` for the hang marker
    (over Spark Connect the executors have the server's environment, not the client's)."""

    pause_dir: str = "."


def active_faults() -> Faults:
    """The faults named by ``MMOE_FAULT`` (empty: none, the default)."""
    names = {n.strip() for n in os.environ.get(FAULT_ENV, "").split(",") if n.strip()}
    unknown = sorted(names - set(FAULTS))
    if unknown:
        raise ConfigError(f"{FAULT_ENV} names unknown fault(s) {unknown}; known: {', '.join(FAULTS)}")
    faults = Faults(names)
    faults.pause_dir = os.environ.get("MMOE_TEST_PAUSE_DIR", ".")
    return faults


def after_first_batch(faults: frozenset[str]) -> None:
    """Executor side: called once a task's first batch is done; fires the active faults in the
    task's first attempt only."""
    if not faults:
        return

    ctx = TaskContext.get()
    if ctx is None or ctx.attemptNumber() > 0:
        return
    if "score_worker_kill_first_attempt" in faults:
        os.kill(os.getpid(), signal.SIGKILL)
    if "score_task_hang" in faults:
        marker = Path(getattr(faults, "pause_dir", ".")) / "in_task"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{ctx.partitionId()} {os.getpid()}")  # the pid: a test sees it end
        time.sleep(600)
    if "score_task_first_attempt" in faults:
        raise InjectedFault(f"{FAULT_ENV}=score_task_first_attempt: partition "
                            f"{ctx.partitionId()}, attempt {ctx.attemptNumber()}")
