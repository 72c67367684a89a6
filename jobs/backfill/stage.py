"""Backfill stage: validate → score → evaluate every day of a ds range in ONE Spark session.

Per day (read → decide → write, through the other stages):

1. **model** — ``--model`` resolved for the day (a directory, a registered version, or the
   ``@alias`` promotion in force that day, see :mod:`jobs.core.registry`);
2. **validate** — only when the day was never validated or its features changed since (the
   fingerprint in ``status.json``); ``--force`` validates again. A stored *failed* decision for
   unchanged features fails the day without running GX again;
3. **score** — skipped when the predictions partition's stamp (``_scored.json``) names the same
   model checksum and the same features fingerprint (the day is then ``skipped``), unless
   ``--force``;
4. **evaluate** — when the labels have matured (ds + ``evaluation.label_wait_days`` <= the run's
   ``as_of`` date, today in UTC by default) and the labels partition exists, for this model
   version only (other versions' metrics are kept), unless its metrics are already there for a
   skipped day.

A day's failure is recorded (``failed`` + its one-line error) and the next day runs, unless
``fail_fast``: then the remaining days are ``not_run``. Days are independent and every write
replaces its partition under its lock, so a run killed mid-range is simply run again: the days
it finished are skipped, the rest are done.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass
from typing import Callable

from pyspark.sql import SparkSession

from jobs.core.config import JobConfig
from jobs.core.errors import BackfillFailed
from jobs.core.manifest import RunRecord, error_line
from jobs.core.registry import ModelChoice, format_table, resolve_model
from jobs.core.status import ValidationStatus, read_score_stamp
from jobs.core.tables import DatasetTables
from jobs.core.warehouse import date_range, parse_date
from jobs.evaluate.stage import evaluate_partition
from jobs.score.stage import score_partition
from jobs.validate.scorable import checked_status
from jobs.validate.stage import validate_partition
from schemas.spec import DatasetSpec

STATUSES = ("scored", "skipped", "failed", "not_run")


@dataclass
class DayResult:
    ds: str
    status: str = "not_run"          # scored | skipped | failed | not_run (after --fail-fast)
    model_version: str | None = None
    model_sha256: str | None = None
    model_source: str | None = None
    validation: str | None = None    # passed | quarantined (+ " (reused)") | failed
    input_rows: int = 0
    output_rows: int = 0
    quarantined_rows: int = 0
    evaluation: str | None = None    # evaluated | up to date | labels not matured | no labels
    seconds: float = 0.0
    error: str | None = None


@dataclass
class BackfillResult:
    dataset: str
    start: str
    end: str
    model: str
    force: bool
    days: list[DayResult]

    def counts(self) -> dict[str, int]:
        return {status: sum(d.status == status for d in self.days) for status in STATUSES}

    @property
    def failed_days(self) -> list[DayResult]:
        return [d for d in self.days if d.status == "failed"]

    def _joined(self, name: str) -> str | None:
        values = list(dict.fromkeys(getattr(d, name) for d in self.days if getattr(d, name)))
        return ",".join(values) or None

    def record(self) -> RunRecord:
        return RunRecord(
            input_rows=sum(d.input_rows for d in self.days),
            output_rows=sum(d.output_rows for d in self.days),
            quarantined_rows=sum(d.quarantined_rows for d in self.days),
            model_version=self._joined("model_version"),
            model_sha256=self._joined("model_sha256"),
            details={"start": self.start, "end": self.end, "model": self.model,
                     "force": self.force, "counts": self.counts(),
                     "days": [asdict(d) for d in self.days]})

    def raise_if_failed(self) -> None:
        """The run failed when any day did: a one-line error naming the first failure."""
        failed = self.failed_days
        if not failed:
            return
        record = self.record()
        first = failed[0]
        raise BackfillFailed(
            f"backfill {self.dataset} {self.start}..{self.end}: {len(failed)} of "
            f"{len(self.days)} day(s) failed; first {first.ds}: {first.error}",
            details={**{k: getattr(record, k) for k in ("input_rows", "output_rows",
                                                        "quarantined_rows", "model_version",
                                                        "model_sha256")},
                     **record.details})


def backfill_range(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, start: str, end: str,
                   model: str, *, force: bool = False, fail_fast: bool = False,
                   as_of: dt.date | None = None,
                   on_day: Callable[[DayResult], None] | None = None) -> BackfillResult:
    """Every day of ``start``..``end`` (see the module docstring). ``on_day`` is called after
    each day (progress reporting); per-day failures are in the result, never raised."""
    days = [DayResult(ds) for ds in date_range(start, end)]
    as_of = as_of or dt.datetime.now(dt.timezone.utc).date()
    result = BackfillResult(spec.name, start, end, str(model), force, days)
    for day in days:
        began = time.perf_counter()
        try:
            backfill_day(spark, cfg, spec, day, model, force, as_of)
        except Exception as exc:  # noqa: BLE001 - one day's failure must not stop the others
            day.status, day.error = "failed", error_line(exc)
        day.seconds = round(time.perf_counter() - began, 2)
        if on_day is not None:
            on_day(day)
        if day.status == "failed" and fail_fast:
            break
    return result


def backfill_day(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, day: DayResult,
                 model: str, force: bool, as_of: dt.date) -> None:
    """Fill ``day`` in place: validate if needed, score unless up to date, evaluate if matured."""
    choice = resolve_model(cfg, spec.name, day.ds, model)
    day.model_sha256, day.model_source = choice.sha256, choice.source
    status = ensure_validated(spark, cfg, spec, day, force)
    day.quarantined_rows = status.quarantined_rows
    stamp_version = choice.version or _stamped_version(cfg, spec, day.ds, choice)
    if not force and stamp_version and is_up_to_date(cfg, spec, day.ds, stamp_version, choice):
        day.status, day.model_version = "skipped", stamp_version
        day.input_rows = status.passed_rows
    else:
        scored = score_partition(spark, cfg, spec, day.ds, choice)
        day.status, day.model_version = "scored", scored.model_version
        day.input_rows, day.output_rows = scored.input_rows, scored.output_rows
    day.evaluation = evaluate_if_matured(spark, cfg, spec, day, force, as_of)


def ensure_validated(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, day: DayResult,
                     force: bool) -> ValidationStatus:
    """The day's validation status, validating first when it is missing, stale or forced (a
    stored failure for unchanged features fails the day without running GX again)."""
    try:
        report = validate_partition(spark, cfg, spec, day.ds, reuse_current=not force)
    except Exception:
        day.validation = "failed"
        raise
    day.validation = report.status + (" (reused)" if report.reused else "")
    return checked_status(cfg, spec, day.ds)


def _stamped_version(cfg: JobConfig, spec: DatasetSpec, ds: str,
                     choice: ModelChoice) -> str | None:
    """A directory's version is only known once loaded; the stamp of a partition scored from
    the same checksum tells it without loading the model."""
    tb = DatasetTables(cfg, spec.name)
    for version in tb["predictions"].sub_partitions(ds, "model_version"):
        stamp = read_score_stamp(tb.wh, spec.name, ds, version)
        if stamp and stamp.model_sha256 == choice.sha256:
            return version
    return None


def is_up_to_date(cfg: JobConfig, spec: DatasetSpec, ds: str, version: str,
                  choice: ModelChoice) -> bool:
    """Predictions of ``version`` exist for ``ds``, scored from the same artifact checksum and
    the features as they are now."""
    tb = DatasetTables(cfg, spec.name)
    stamp = read_score_stamp(tb.wh, spec.name, ds, version)
    return bool(
        stamp and tb["predictions"].exists(ds, model_version=version)
        and stamp.model_sha256 == choice.sha256
        and stamp.features_fingerprint == tb["features"].fingerprint(ds))


def labels_matured(cfg: JobConfig, ds: str, as_of: dt.date) -> bool:
    """Labels of ``ds`` are final once ds + evaluation.label_wait_days has been reached."""
    return parse_date(ds, "ds") + dt.timedelta(days=cfg.evaluation.label_wait_days) <= as_of


def evaluate_if_matured(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, day: DayResult,
                        force: bool, as_of: dt.date) -> str:
    tb = DatasetTables(cfg, spec.name, spark)
    if not labels_matured(cfg, day.ds, as_of):
        return "labels not matured"
    if not tb["labels"].exists(day.ds):
        return "no labels"
    if day.status == "skipped" and not force and day.model_version in _evaluated_versions(
            tb, day.ds):
        return "up to date"
    evaluate_partition(spark, cfg, spec, day.ds, [day.model_version])
    return "evaluated"


def _evaluated_versions(tb: DatasetTables, ds: str) -> set[str]:
    metrics = tb["metrics"]
    if not metrics.exists(ds):
        return set()
    return set(metrics.read_arrow(ds, columns=["model_version"]).column(0).to_pylist())


# --------------------------------------------------------------------------------------------
# Presentation helpers (the CLI prints them on stderr)


def day_line(dataset: str, day: DayResult) -> str:
    """One plain line per finished day."""
    what = f"{day.status}"
    if day.model_version:
        what += f" {day.model_version}"
    if day.status in ("scored", "skipped"):
        what += f", {day.output_rows if day.status == 'scored' else 0} rows written"
        what += f", validation {day.validation}, evaluation {day.evaluation}"
    if day.error:
        what += f": {day.error}"
    return f"backfill {dataset} {day.ds}: {what} ({day.seconds:.1f}s)"


def summary_table(result: BackfillResult) -> str:
    columns = ["ds", "status", "model_version", "validation", "input_rows", "output_rows",
               "quarantined_rows", "evaluation", "seconds", "error"]
    rows = [{c: ("" if getattr(d, c) is None else getattr(d, c)) for c in columns}
            for d in result.days]
    counts = ", ".join(f"{n} {s}" for s, n in result.counts().items() if n)
    return f"{format_table(rows, columns)}\n{len(result.days)} day(s): {counts}"
