"""Typed exceptions. Library code raises these; only the CLI layer turns them into exit codes.

Each also says whether running the job again could help (``retryable``): a lock held by
another run, an unreachable Spark Connect server or a stop by a signal may be gone on the next
try; a bad argument, a refused input, no model in force or a spec mismatch will not be.
:func:`error_kind` is THE mapping (the manifest records it as ``error_kind``) and
:func:`is_permanent` reads it back from a manifest or, without one, from the exit status: the
DAGs fail a task at once on a permanent failure and retry only a transient one.
"""

from mmoe_model.errors import MmoeModelError

PERMANENT, TRANSIENT = "permanent", "transient"
# exit statuses that always mean "the same command will fail again": a usage, config or input
# error (2: also Typer's usage errors) and compare's --fail-on-regression (3)
PERMANENT_EXIT_CODES = frozenset({2, 3})


class MmoeError(Exception):
    """Base class: the message is the one-line error the CLI prints. ``details`` records what the
    job got to before it failed (keys named like manifest fields, e.g. ``model_version``, land at
    the manifest's top level; see :func:`jobs.core.manifest.run_job`)."""

    exit_code = 1
    retryable = False  # the same run again would fail the same way

    def __init__(self, message: str = "", details: dict | None = None) -> None:
        super().__init__(message)
        self.details = dict(details or {})


class ConfigError(MmoeError):
    exit_code = 2


class SparkUnavailable(MmoeError):
    """The Spark Connect server named by ``spark.remote`` / ``SPARK_REMOTE`` / ``--remote``
    cannot be reached (refused, timed out, not a Connect server)."""

    retryable = True


class InputError(MmoeError):
    """Bad command-line input (dates, paths, names), refused before any work."""

    exit_code = 2


class MissingInputError(MmoeError):
    """A table partition or artifact the job needs does not exist."""


class TableError(MissingInputError):
    """A mapped catalog table that does not exist, is partitioned other than mapped, or whose
    columns disagree with the spec (the message names the table); nothing was written."""


class ValidationFailed(MmoeError):
    """A table-level data-quality rule failed; nothing downstream was written."""


class NotValidated(MmoeError):
    """Scoring was asked for a ds whose validation failed or never ran."""


class PartitionLocked(MmoeError):
    """Another process holds the lock of the partition this job writes, longer than
    ``locks.wait_seconds``; the message names the holder."""

    retryable = True


class RegistryError(MmoeError):
    """The model registry refused a request: an unknown version or alias, an alias with no
    promotion in force on the ds, a version registered twice with different content, or a
    stored artifact that no longer matches its checksum."""


class BackfillFailed(MmoeError):
    """At least one day of a backfill failed (the others ran, unless --fail-fast). A rerun
    skips the days already scored, so a retry is cheap: it is ``retryable`` when at least one
    failed day's error was transient (a lost executor, a held lock), not when every one was
    permanent (no model in force, a refused input), which a retry would only repeat."""

    def __init__(self, message: str = "", details: dict | None = None,
                 retryable: bool = True) -> None:
        super().__init__(message, details)
        self.retryable = retryable


class RegressionDetected(MmoeError):
    """``mmoe compare --fail-on-regression``: the candidate broke a guardrail. The report was
    written; the exit status lets a DAG or CI gate on it."""

    exit_code = 3


class JobStopped(BaseException):
    """The job was sent SIGTERM or SIGINT (Airflow's timeout or mark-failed, ``kill``, Ctrl-C).

    A ``BaseException`` like ``KeyboardInterrupt``: no ``except Exception`` in a stage, and none
    in py4j (which wraps the ``Exception``s raised under a JVM call), turns it into another
    error. Raised by :mod:`jobs.core.signals`; the exit status is 128 + the signal's number."""

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(f"stopped by {name}: its Spark jobs were cancelled and nothing it was "
                         f"writing was kept")
        self.signum, self.signal_name = signum, name
        self.exit_code = 128 + signum

    retryable = True  # a timeout, a worker shut down: the next try may finish


def error_kind(exc: BaseException) -> str:
    """Whether running the job again could help: ``transient`` for our errors that say so, for
    a stop by a signal and for anything unexpected (a lost executor, a JVM error, a bug: Spark's
    own retries did not save it, one more try may); ``permanent`` for every other typed error
    of this project (``MmoeError``, the model library's, ``schemas``' spec errors)."""
    retryable = getattr(exc, "retryable", None)
    if isinstance(retryable, bool):
        return TRANSIENT if retryable else PERMANENT
    if isinstance(exc, MmoeModelError) or type(exc).__module__.split(".")[0] in (
            "jobs", "schemas", "mmoe_model"):
        return PERMANENT
    return TRANSIENT


def is_permanent(kind: str | None, exit_code: int | None = None) -> bool:
    """A failure a retry cannot fix: the manifest's ``error_kind`` when there is one, else the
    exit status (:data:`PERMANENT_EXIT_CODES`; any other is treated as transient)."""
    if kind in (PERMANENT, TRANSIENT):
        return kind == PERMANENT
    return exit_code in PERMANENT_EXIT_CODES
