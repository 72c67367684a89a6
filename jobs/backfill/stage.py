"""Backfill stage: validate → score → evaluate every day of a ds range in ONE Spark session,
for one model or several (``--model A --model B``: an A/B in one command).

Per day (read → decide → write, through the other stages):

1. **model** — each ``--model`` resolved for the day (a directory, a registered version, or the
   ``@alias`` promotion in force that day, see :mod:`jobs.core.registry`);
2. **validate** — once per day, shared by every model: only when the day was never validated or
   its features changed since (the fingerprint in ``status.json``); ``--force`` validates again.
   A stored *failed* decision for unchanged features fails the day without running GX again;
3. **score** — per model; skipped when the predictions partition's stamp (``_scored.json``)
   names the same model checksum, the same features fingerprint and the same
   ``scoring.precision`` (the model's day is then
   ``skipped``), unless ``--force``;
4. **evaluate** — per model, when the labels have matured (ds + ``evaluation.label_wait_days``
   <= the run's ``as_of`` date, today in UTC by default) and the labels partition exists, for
   this model version only (other versions' metrics are kept), unless its metrics are already
   there for a skipped day.

The result has one :class:`DayResult` per day and model (days first, models in the order
given). A failure is recorded (``failed`` + its one-line error) on the model's day it belongs
to (a failed validation on every model's), and the rest runs, unless ``fail_fast``: then the
remaining days are ``not_run``. Days are independent and every write replaces its partition
under its lock, so a run killed mid-range is simply run again: the days it finished are
skipped, the rest are done.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from pyspark.sql import SparkSession

from jobs.core.config import JobConfig
from jobs.core.errors import PERMANENT, BackfillFailed, error_kind as failure_kind
from jobs.core.manifest import RunRecord, error_line
from jobs.core.modelref import parse_models
from jobs.core.registry import ModelChoice, resolve_model
from jobs.core.status import read_score_stamp
from jobs.core.tables import DatasetTables
from jobs.core.warehouse import date_range, parse_date
from jobs.evaluate.recommendations import judged_day
from jobs.evaluate.stage import evaluate_partition, evaluate_recommendations
from jobs.score.catalog import score_catalog
from jobs.score.stage import score_partition
from jobs.validate.scorable import checked_status
from jobs.validate.stage import validate_partition
from schemas.spec import DatasetSpec

STATUSES = ("scored", "skipped", "failed", "not_run")


@dataclass
class DayResult:
    """One day of one model (the ``--model`` reference as given, in ``model``)."""

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
    error_kind: str | None = None    # transient | permanent (jobs.core.errors.error_kind)
    model: str | None = None

    def fail(self, exc: BaseException) -> None:
        self.status, self.error, self.error_kind = "failed", error_line(exc), failure_kind(exc)


@dataclass
class BackfillResult:
    dataset: str
    start: str
    end: str
    model: str                       # the --model values as given, comma-joined
    force: bool
    days: list[DayResult]            # one per day and model: days first, models in order
    models: list[str] = field(default_factory=list)

    def counts(self, model: str | None = None) -> dict[str, int]:
        rows = [d for d in self.days if model is None or d.model == model]
        return {status: sum(d.status == status for d in rows) for status in STATUSES}

    @property
    def failed_days(self) -> list[DayResult]:
        return [d for d in self.days if d.status == "failed"]

    def _per_day(self, name: str) -> dict[str, int]:
        """A day's shared count (its validation's), once per day whatever the models."""
        out: dict[str, int] = {}
        for d in self.days:
            out[d.ds] = max(out.get(d.ds, 0), getattr(d, name))
        return out

    def _joined(self, name: str) -> str | None:
        values = list(dict.fromkeys(getattr(d, name) for d in self.days if getattr(d, name)))
        return ",".join(values) or None

    def record(self) -> RunRecord:
        details = {"start": self.start, "end": self.end, "model": self.model,
                   "models": self.models, "force": self.force, "counts": self.counts(),
                   "days": [asdict(d) for d in self.days]}
        if len(self.models) > 1:
            details["counts_by_model"] = {m: self.counts(m) for m in self.models}
        return RunRecord(
            input_rows=sum(d.input_rows for d in self.days),
            output_rows=sum(d.output_rows for d in self.days),
            quarantined_rows=sum(self._per_day("quarantined_rows").values()),
            model_version=self._joined("model_version"),
            model_sha256=self._joined("model_sha256"),
            details=details)

    def raise_if_failed(self) -> None:
        """The run failed when any model's day did: a one-line error naming the first failure."""
        failed = self.failed_days
        if not failed:
            return
        record = self.record()
        first = failed[0]
        which = f" {first.model}" if len(self.models) > 1 else ""
        unit = "model-day(s)" if len(self.models) > 1 else "day(s)"
        raise BackfillFailed(
            f"backfill {self.dataset} {self.start}..{self.end}: {len(failed)} of "
            f"{len(self.days)} {unit} failed; first {first.ds}{which}: {first.error}",
            details={**{k: getattr(record, k) for k in ("input_rows", "output_rows",
                                                        "quarantined_rows", "model_version",
                                                        "model_sha256")},
                     **record.details},
            retryable=any(d.error_kind != PERMANENT for d in failed))


def backfill_range(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, start: str, end: str,
                   model, *, force: bool = False, fail_fast: bool = False,
                   as_of: dt.date | None = None,
                   on_day: Callable[[DayResult], None] | None = None,
                   catalog: bool = False) -> BackfillResult:
    """Every day of ``start``..``end`` for ``model`` (one reference or a list of them; see the
    module docstring). ``on_day`` is called after each model's day (progress reporting);
    failures are in the result, never raised. ``catalog``: each day's recommendations instead
    (:func:`catalog_day`)."""
    models = parse_models(model)
    names = [str(m) for m in models]
    days = [DayResult(ds, model=name) for ds in date_range(start, end) for name in names]
    as_of = as_of or dt.datetime.now(dt.timezone.utc).date()
    result = BackfillResult(spec.name, start, end, ",".join(names), force, days, names)
    for first in range(0, len(days), len(models)):
        rows = days[first:first + len(models)]
        fill = catalog_day if catalog else backfill_day
        fill(spark, cfg, spec, list(zip(rows, models)), force, as_of, on_day)
        if fail_fast and any(d.status == "failed" for d in rows):
            break
    return result


def backfill_day(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec,
                 rows: list[tuple[DayResult, object]], force: bool, as_of: dt.date,
                 on_day: Callable[[DayResult], None] | None = None) -> None:
    """Fill one day's rows (one per model) in place: resolve each model, validate once if
    needed, then per model score unless up to date and evaluate if matured. A failure fails
    the model's row it belongs to (a validation failure every row), never the others."""
    began = time.perf_counter()
    chosen: list[tuple[DayResult, ModelChoice]] = []
    for day, model in rows:
        try:
            choice = resolve_model(cfg, spec.name, day.ds, model)
        except Exception as exc:  # noqa: BLE001 - one model's failure must not stop the others
            day.fail(exc)
            continue
        day.model_sha256, day.model_source = choice.sha256, choice.source
        chosen.append((day, choice))
    status = None
    if chosen:
        try:
            status = ensure_validated(spark, cfg, spec, chosen[0][0].ds, force)
        except Exception as exc:  # noqa: BLE001 - the day fails for every model
            for day, _ in chosen:
                day.fail(exc)
                day.validation = "failed"
    rows[0][0].seconds = time.perf_counter() - began  # the shared part: the first row's
    for day, choice in chosen if status is not None else []:
        day.validation = status.validation
        day.quarantined_rows = status.quarantined_rows
        own = time.perf_counter()
        try:
            score_day(spark, cfg, spec, day, choice, status.passed_rows, force, as_of)
        except Exception as exc:  # noqa: BLE001 - one model's failure must not stop the others
            day.fail(exc)
        day.seconds += time.perf_counter() - own
    for day, _ in rows:
        day.seconds = round(day.seconds, 2)
        if on_day is not None:
            on_day(day)


def catalog_day(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec,
                rows: list[tuple[DayResult, object]], force: bool, as_of: dt.date,
                on_day: Callable[[DayResult], None] | None = None) -> None:
    """One day of a catalog backfill (``--catalog``), per model: resolve it for the day, write
    the day's recommendations from the users and items snapshots as of the day
    (:func:`jobs.score.catalog.score_catalog`, always rewritten: the partition is replaced),
    and evaluate them once the judged day's interactions exist. Nothing is validated (the
    catalog tables are not a day's logged features)."""
    for day, model in rows:
        began = time.perf_counter()
        try:
            choice = resolve_model(cfg, spec.name, day.ds, model)
            day.model_sha256, day.model_source = choice.sha256, choice.source
            scored = score_catalog(spark, cfg, spec, day.ds, choice)
            day.status, day.model_version = "scored", scored.model_version
            day.input_rows, day.output_rows = scored.input_rows, scored.output_rows
            day.validation = "not needed"
            day.evaluation = evaluate_recommendations_if_logged(spark, cfg, spec, day, as_of)
        except Exception as exc:  # noqa: BLE001 - one model's failure must not stop the others
            day.fail(exc)
        day.seconds = round(time.perf_counter() - began, 2)
        if on_day is not None:
            on_day(day)


def evaluate_recommendations_if_logged(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec,
                                       day: DayResult, as_of: dt.date) -> str:
    judged = judged_day(cfg, day.ds)
    tb = DatasetTables(cfg, spec.name, spark)
    if not labels_matured(cfg, judged, as_of):
        return "labels not matured"
    if not (tb["features"].exists(judged) and tb["labels"].exists(judged)):
        return "no labels"
    evaluate_recommendations(spark, cfg, spec, day.ds, [day.model_version])
    return "evaluated"


def score_day(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, day: DayResult,
              choice: ModelChoice, passed_rows: int, force: bool, as_of: dt.date) -> None:
    """One model's day on a validated ds: score unless up to date, evaluate if matured."""
    stamp_version = choice.version or _stamped_version(cfg, spec, day.ds, choice)
    if not force and stamp_version and is_up_to_date(cfg, spec, day.ds, stamp_version, choice):
        day.status, day.model_version = "skipped", stamp_version
        day.input_rows = passed_rows
    else:
        scored = score_partition(spark, cfg, spec, day.ds, choice)
        day.status, day.model_version = "scored", scored.model_version
        day.input_rows, day.output_rows = scored.input_rows, scored.output_rows
    day.evaluation = evaluate_if_matured(spark, cfg, spec, day, force, as_of)


@dataclass
class DayValidation:
    validation: str                  # passed | quarantined (+ " (reused)")
    passed_rows: int
    quarantined_rows: int


def ensure_validated(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, ds: str,
                     force: bool) -> DayValidation:
    """The day's validation, validating first when it is missing, stale or forced (a stored
    failure for unchanged features fails the day without running GX again)."""
    report = validate_partition(spark, cfg, spec, ds, reuse_current=not force)
    status = checked_status(cfg, spec, ds)
    return DayValidation(report.status + (" (reused)" if report.reused else ""),
                         status.passed_rows, status.quarantined_rows)


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
    """Predictions of ``version`` exist for ``ds``, scored from the same artifact checksum,
    the features as they are now and in this run's ``scoring.precision`` (a day scored in fp32
    is not up to date for an int8 run, nor the other way round)."""
    tb = DatasetTables(cfg, spec.name)
    stamp = read_score_stamp(tb.wh, spec.name, ds, version)
    return bool(
        stamp and tb["predictions"].exists(ds, model_version=version)
        and stamp.model_sha256 == choice.sha256
        and stamp.features_fingerprint == tb["features"].fingerprint(ds)
        and stamp.precision == cfg.scoring.precision)


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


def day_line(dataset: str, day: DayResult, with_model: bool = False) -> str:
    """One plain line per finished day (per model's day when ``with_model``)."""
    what = f"{day.status}"
    if day.model_version:
        what += f" {day.model_version}"
    if day.status in ("scored", "skipped"):
        what += f", {day.output_rows if day.status == 'scored' else 0} rows written"
        what += f", validation {day.validation}, evaluation {day.evaluation}"
    if day.error:
        what += f": {day.error}"
    which = f" {day.model}" if with_model else ""
    return f"backfill {dataset} {day.ds}{which}: {what} ({day.seconds:.1f}s)"
