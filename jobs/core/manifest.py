"""Run manifests: one JSON object per job run, printed as the last stdout line and kept under
``<wh>/<dataset>/_runs/`` (CONTRACT.md).

Stages never see a manifest. A stage returns a typed result whose ``record()`` gives a
:class:`RunRecord` (counts, model, outputs, details), or raises an ``MmoeError`` whose
``details`` say what it got to. :func:`run_job` — the one helper the CLI and the demo share —
turns either into a finished manifest and writes it through the warehouse.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence

from jobs.core import signals
from jobs.core.errors import JobStopped, MmoeError, error_kind
from jobs.core.warehouse import Warehouse, parse_date, safe_name, write_json
from mmoe_model.errors import MmoeModelError

MANIFEST_FIELDS = ("input_rows", "output_rows", "quarantined_rows", "model_version",
                   "model_sha256")


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class RunRecord:
    """What a finished stage reports: the manifest's counts, model, outputs and details."""

    input_rows: int = 0
    output_rows: int = 0
    quarantined_rows: int = 0
    model_version: str | None = None
    model_sha256: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class StageResult(Protocol):
    def record(self) -> RunRecord: ...


@dataclass
class RunManifest:
    job: str
    dataset: str
    ds: str | None
    status: Literal["running", "succeeded", "failed"] = "running"
    input_rows: int = 0
    output_rows: int = 0
    quarantined_rows: int = 0
    model_version: str | None = None
    model_sha256: str | None = None
    started_at: str = field(default_factory=utc_now)
    finished_at: str | None = None
    manifest_path: str | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    error: str | None = None
    error_kind: str | None = None   # permanent | transient (jobs.core.errors.error_kind)
    outputs: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False, default=str)

    def apply(self, record: RunRecord) -> "RunManifest":
        for name in MANIFEST_FIELDS:
            setattr(self, name, getattr(record, name))
        self.outputs.update(record.outputs)
        self.details.update(record.details)
        return self

    def apply_error(self, exc: BaseException) -> "RunManifest":
        """What a failed stage got to: ``MmoeError.details`` keys named like manifest fields
        (e.g. ``model_version``) go to the top level, the rest to ``details``."""
        for key, value in (getattr(exc, "details", None) or {}).items():
            if key == "outputs":
                self.outputs.update(value)
            elif key in MANIFEST_FIELDS:
                setattr(self, key, value)
            else:
                self.details[key] = value
        return self

    def file_name(self) -> str:
        stamp = self.started_at.replace(":", "").replace("-", "").replace(".", "")
        return f"{self.job}_{self.ds or 'nods'}_{stamp}_{self.run_id}.json"


def error_line(exc: BaseException) -> str:
    """The one line a failure is reported with: the message of our typed errors, else the
    exception's type and first line."""
    text = str(exc).strip().splitlines()
    if isinstance(exc, (MmoeError, JobStopped)) or _is_model_error(exc) or _is_ours(exc):
        return text[0] if text else type(exc).__name__
    if isinstance(exc, KeyboardInterrupt):
        return "stopped by SIGINT (interrupted)"
    cause = spark_task_failure(str(exc))
    if cause:
        return cause
    # a bug: the type name is part of what a person needs to report it
    return (f"unexpected {type(exc).__name__} (the traceback is in the manifest): "
            f"{text[0] if text else ''}").rstrip(": ")


def _is_ours(exc: BaseException) -> bool:
    """An exception class of this project (e.g. ``schemas.spec.SpecError``): its message is
    written for people, without a class-name prefix."""
    return type(exc).__module__.split(".")[0] in ("jobs", "schemas", "mmoe_model")


_PY_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Fault|Exit)): (.*)$")


def spark_task_failure(text: str) -> str | None:
    """The cause of a failed Spark job, from the JVM's error text: the Python exception a task
    raised (its last traceback line), else Spark's "Job aborted due to stage failure: ..." line
    (e.g. a Python worker that crashed). ``Py4JJavaError``'s own first line only says which
    JVM method was being called."""
    marker = "Traceback (most recent call last):"
    if marker in text:
        for line in text.split(marker, 1)[1].splitlines():
            match = _PY_EXCEPTION.match(line)
            if match and not match.group(1).startswith(("org.", "java.", "py4j.", "scala.")):
                return f"a Spark task failed: {match.group(1).rsplit('.', 1)[-1]}: " \
                       f"{match.group(2)[:300]}"
    match = re.search(r"Job aborted due to stage failure: ([^\n]*)", text)
    if match:
        return f"Spark job aborted: {match.group(1)[:400]}"
    return None


def _is_model_error(exc: BaseException) -> bool:
    return isinstance(exc, MmoeModelError)


def is_expected(exc: BaseException) -> bool:
    """Our typed errors (a one-line cause is the whole story) vs bugs worth a traceback."""
    return isinstance(exc, (MmoeError, JobStopped, KeyboardInterrupt)) or _is_model_error(exc)


@dataclass
class Outcome:
    manifest: RunManifest
    result: Any = None
    error: BaseException | None = None


def run_job(job: str, dataset: str, ds: str | None, prepare: Callable[[], Any],
            body: Callable[[Any, str], StageResult],
            runs_in: Sequence[str] | None = None, ds_option: str = "--ds") -> Outcome:
    """Run one job and finish its manifest, whatever happens.

    ``prepare()`` checks the inputs and returns the job config (nothing is written when it
    fails: there is no warehouse yet); ``body(cfg, run_id)`` runs the stage and returns its
    result. The manifest is written under ``<wh>/<dataset>/_runs/`` once the config is known;
    ``runs_in`` names other data sets to keep it in instead (census ingest writes two data
    sets, and its manifest goes to both; ``manifest_path`` is the first copy). ``ds_option``
    names the option ``ds`` came from in the error when it is no date.
    Exceptions (``KeyboardInterrupt`` included) are returned, never raised: the caller decides
    how to report them. SIGTERM and SIGINT stop the job as a ``JobStopped`` failure
    (:mod:`jobs.core.signals`): whatever the clean-up raised after the signal, the manifest and
    the error name the signal, and the driver JVM is stopped before the caller prints.
    """
    manifest = RunManifest(job=job, dataset=dataset, ds=ds)
    runs_dirs: list[Path] = []
    outcome = Outcome(manifest)
    try:
        with signals.stop_on_signals():
            if ds is not None:
                parse_date(ds, ds_option)  # the option it came from (a range's: --end)
            cfg = prepare()
            safe_name(dataset, "--dataset")
            kept_in = [safe_name(name, "--dataset") for name in (runs_in or [dataset])]
            runs_dirs = [Warehouse(cfg.warehouse).runs_dir(name) for name in kept_in]
            outcome.result = body(cfg, manifest.run_id)
            manifest.apply(outcome.result.record())
            manifest.status = "succeeded"
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a manifest
        stopped_by = signals.received()
        if stopped_by is not None and not isinstance(exc, JobStopped):
            # a clean-up step failed after the signal (e.g. the JVM got it too): the signal is
            # what happened
            exc = JobStopped(getattr(signal, stopped_by), stopped_by)
        if isinstance(exc, (JobStopped, KeyboardInterrupt)):
            signals.stop_spark()
        outcome.error = exc
        manifest.apply_error(exc)
        if not is_expected(exc):  # a bug: keep the traceback in the manifest, not on stderr
            manifest.details["traceback"] = "".join(traceback.format_exception(exc))[-8000:]
        manifest.status, manifest.error = "failed", error_line(exc)
        manifest.error_kind = error_kind(exc)
    manifest.finished_at = utc_now()
    if runs_dirs:
        manifest.manifest_path = str(runs_dirs[0] / manifest.file_name())
        for runs_dir in runs_dirs:
            write_json(runs_dir / manifest.file_name(), asdict(manifest), indent=None)
    return outcome
