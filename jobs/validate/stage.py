"""Validate stage: one features partition (and its labels partition) against the rules of its
spec (jobs/validate/rules.py), checked by Great Expectations. Read (footers, through
jobs/core/warehouse.py) → decide (GX over the labels table, then over one cached features frame;
:func:`decide` turns the GX results into a :class:`ValidationReport`) → write (result.json,
labels_result.json, the quarantine partition, status.json, all through jobs/core/warehouse.py).

    labels/ds=D    ──►  validation/ds=D/labels_result.json   (its own GX batch)
    features/ds=D  ──►  validation/ds=D/{result.json, data_docs/, status.json}
                   └─►  quarantine/ds=D   (rows breaking a row-level rule, + ``reason``)

Labels are validated where they live: the labels table is its own GX batch (keys and task
columns present and typed, every label in {0, 1}), so ``label_not_binary:<task>`` reports the
labels table's rows. Only when that batch finds bad labels are their keys (folded per key and
task, few: broadcast) joined back onto the features, so that a features row whose key has a bad
label is quarantined with ``label_not_binary:<task>`` in its reason, as before; the wide
features ⋈ labels join of earlier versions is gone.

How it keeps Spark work small (``manifest.details["spark_jobs"]`` counts the jobs):

- the schema and the row counts (this partition's and the trailing ones') come from the parquet
  footers, read with pyarrow on the driver: no schema-inference or count job;
- the partition is read once and cached together with two derived columns: ``_key_copies``
  (rows sharing the row's key) and ``_reason`` (every row-level rule the row breaks,
  ``;``-joined, null when none). No wide row is shuffled: the duplicated keys come from a
  group-by over the key columns (one job; only keys move, normally none survive
  ``count > 1``) and are broadcast back;
- GX runs every expectation over that cached frame (``persist=False``: GX does not cache again);
  its metrics are bundled into a few single-row aggregates (row count; non-null shares; all the
  map counts). The result format is BASIC with ``partial_unexpected_count: 0``: counts, no
  sample values. GX would still plan one ``LIMIT 0`` sample query per map expectation (no job,
  but a plan analysis each: ~35-50 % of a small day's validation, a gRPC round trip each over
  Connect); jobs/validate/gx.py drops them;
- adaptive execution is off while the validation runs (it would split every shuffle into a job
  of its own, with nothing to re-plan here) and so is whole-stage code generation of methods
  the JVM would not JIT-compile (see :data:`VALIDATION_CONF`), both restored after: 4 jobs
  without labels (the duplicate-key job + GX), + the labels batch's (narrow: keys and labels)
  with labels, +1 when labels are bad, +1 when rows are quarantined;
- the quarantine rows are written straight from the cache.

Decisions (see CONTRACT.md and docs/DESIGN.md):

- **failed** — a schema/table rule fails, the share of bad rows is over
  ``validation.max_bad_row_fraction`` (any bad row when ``on_bad_rows: fail``), or GX could not
  evaluate an expectation. ``ValidationFailed`` is raised with a one-line message naming rule,
  column and counts; no quarantine partition is left; ``status.json`` says failed; the result
  JSON and Data Docs are kept. The manifest's row counts stay 0 (nothing was passed on or
  quarantined); ``details["rows_read"]`` has the partition's size.
- **quarantined** — some rows break row-level rules: they go to the quarantine table, the rest
  pass. A duplicated key sends *all* its copies to quarantine (which copy is right is unknown),
  so "features minus quarantined keys" is exactly the passing rows (see :func:`passed_rows`).
- **passed** — nothing to quarantine.

Feature drift (jobs/validate/feature_drift.py) is measured on the same cached frame (one more
aggregate, over the rows that pass) against the trailing ``drift.reference_days`` validated
days: its rows go to ``drift/ds=D`` (jobs/core/drift_table.py), the day's profile to
``validation/ds=D/drift_profile.json``; with ``drift.on_drift: fail`` a drifted feature fails
the partition (one line naming the features), with ``warn`` it passes and the manifest's
``details.drift`` lists them.

Module map: this file orchestrates and writes ``status.json`` in one place
(:func:`_write_status`); :mod:`jobs.validate.decision` decides and words it;
:mod:`jobs.validate.gx` runs GX; :mod:`jobs.validate.frame` builds the frame and the
quarantine; :mod:`jobs.validate.history` reads earlier days; :mod:`jobs.validate.scorable` is
the gate score and backfill call.

Every run first removes the ds's previous validation partition (so a crash never leaves an old
"passed" behind) and, unless rows are quarantined again, its quarantine partition.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.core.config import JobConfig
from jobs.core.drift_table import replace_drift_rows
from jobs.core.errors import MissingInputError, ValidationFailed
from jobs.core.manifest import utc_now
from jobs.core.spark import job_group, jobs_in_group, session_conf
from jobs.core.status import (
    ValidationStatus,
    read_validation_status,
    write_validation_status,
)
from jobs.core.tables import DatasetTables, Table
from jobs.core.warehouse import (
    footer_ranges,
    read_footers,
    remove,
    write_json,
    write_text,
)
from jobs.validate.decision import ValidationReport, decide
from jobs.validate.feature_drift import DriftOutcome, feature_drift
from jobs.validate.frame import (
    bad_label_keys,
    prepare_frame,
    read_partition,
    reason_counts,
    schema_problems,
    write_quarantine,
)
from jobs.validate.gx import GxRun, schema_only
from jobs.validate.history import (
    PROFILE_FILE,
    drift_history,
    row_count_bounds,
    trailing_profiles,
)
from jobs.validate.report import render_validation_html
from jobs.validate.rules import RowCountBounds, build_labels_suite, build_suite
from schemas.spec import DatasetSpec

RESULT_FILE = "result.json"
REPORT_FILE = "report.html"   # our self-contained, offline-readable page (GX's Data Docs need CDNs)
LABELS_RESULT_FILE = "labels_result.json"
DOCS_DIR = "data_docs"


@dataclass
class ValidationInputs:
    """What the validation knows before any Spark work: paths and footers."""

    features: Table
    labels: Table
    features_schema: pa.Schema
    labels_schema: pa.Schema | None
    rows_read: int
    bounds: RowCountBounds
    fingerprint: list
    ranges: dict[str, tuple] | None = None   # dense column -> (min, max) from the footers


class _Refused(Exception):
    """A failure before (or instead of) a GX decision; :func:`validate_partition` records it
    as a failed status with no quarantine."""

    def __init__(self, message: str, rows: int, skipped: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message, self.rows, self.skipped = message, rows, skipped


# --------------------------------------------------------------------------------------------
# The job: read (footers) → decide (GX over one cached frame) → write (status, quarantine)


def validate_partition(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, ds: str, *,
                       run_id: str | None = None, reuse_current: bool = False) -> ValidationReport:
    """Validate ``<wh>/<dataset>/features/ds=D``; see the module docstring for the decisions.
    Raises :class:`ValidationFailed` (its ``details`` carry the counts) when the partition fails.

    ``reuse_current`` (the backfill): when the stored decision is for the features as they are
    now, return it (``report.reused``) instead of running GX again; checked under the lock, so
    of two jobs wanting the same day validated only the first one validates."""
    started = time.perf_counter()
    tb = DatasetTables(cfg, spec.name, spark)
    wh = tb.wh
    tb.preflight(inputs=("features", "labels"), outputs=("quarantine",))
    if not tb["features"].exists(ds):
        raise MissingInputError(
            f"features partition {tb['features'].where(ds)} is missing or has no parquet files "
            f"(dataset {spec.name}, ds {ds})")
    validation_dir = wh.partition(spec.name, "validation", ds)
    # One writer of the ds's validation, quarantine and status at a time (nightly vs backfill).
    with wh.lock(spec.name, "validation", ds, wait_seconds=cfg.locks.wait_seconds,
                 poll_seconds=cfg.locks.poll_seconds):
        if reuse_current:
            current = _current_decision(tb, spec, ds)
            if current is not None:
                return current
        remove(validation_dir)  # no stale decision while we run
        validation_dir.mkdir(parents=True)
        try:
            try:
                inputs = read_inputs(tb, spec, ds)
            except ValueError as exc:
                raise _Refused(f"validation failed: {exc}", 0) from None
            _check_extra_columns(cfg, spec, inputs)
            group = f"mmoe-validate-{uuid4().hex[:12]}"
            docs_dir = validation_dir / DOCS_DIR if cfg.validation.keep_data_docs else None
            with job_group(spark, group, f"validate {spec.name} ds={ds}"), \
                    session_conf(spark, VALIDATION_CONF):
                report = _check_and_write(spark, cfg, spec, ds, inputs, tb, docs_dir)
            report.spark_jobs = jobs_in_group(spark, group)
        except _Refused as refused:
            tb["quarantine"].remove(ds)
            _write_status(tb, spec, ds, run_id, refused=refused)
            raise ValidationFailed(refused.message, details={
                "validation_status": "failed", "rows_read": refused.rows, "spark_jobs": 0,
                "skipped_partitions": list(refused.skipped)}) from refused.__cause__
        report.seconds = round(time.perf_counter() - started, 3)
        report.validation_dir = str(validation_dir)
        report.report_html = str(write_text(validation_dir / REPORT_FILE,
                                            render_validation_html(report)))
        _write_status(tb, spec, ds, run_id, report=report, inputs=inputs)
    if report.status == "failed":
        raise ValidationFailed(report.message, details=_failure_details(report))
    return report


def _write_status(tb: DatasetTables, spec: DatasetSpec, ds: str, run_id: str | None, *,
                  report: ValidationReport | None = None, inputs: ValidationInputs | None = None,
                  refused: _Refused | None = None) -> None:
    """THE writer of ``status.json``: a decision (``report`` + ``inputs``) or a refusal before
    one. The fingerprint makes a failure reusable too: an unchanged partition fails again
    without another GX run (the backfill's reuse_current)."""
    wh = tb.wh
    facts: dict[str, Any] = {"validated_at": utc_now(), "run_id": run_id}
    if report is None or inputs is None:
        write_validation_status(wh, ValidationStatus(
            status="failed", dataset=spec.name, ds=ds,
            input_rows=refused.rows if refused else 0, message=refused.message if refused else "",
            skipped_partitions=list(refused.skipped) if refused else [],
            features_fingerprint=tb["features"].fingerprint(ds), **facts))
        return
    write_validation_status(wh, report.to_status(
        spark_jobs=report.spark_jobs, features_fingerprint=inputs.fingerprint,
        row_count_bounds=asdict(inputs.bounds), skipped_partitions=list(inputs.bounds.unreadable),
        **facts))


def _current_decision(tb: DatasetTables, spec: DatasetSpec, ds: str) -> ValidationReport | None:
    """The stored decision when it was made on the features as they are now (None otherwise);
    a stored failure is raised again."""
    wh = tb.wh
    try:
        status = read_validation_status(wh, spec.name, ds)
    except ValueError:
        return None
    if status is None or status.features_fingerprint is None or \
            status.features_fingerprint != tb["features"].fingerprint(ds):
        return None
    if status.status == "failed":
        raise ValidationFailed(f"{spec.name} ds={ds} failed validation (features unchanged "
                               f"since): {status.message or '?'}")
    if status.quarantined_rows and not tb["quarantine"].exists(ds):
        return None  # the decision's quarantine went missing: decide again
    return ValidationReport(
        dataset=spec.name, ds=ds, status=status.status, input_rows=status.input_rows,
        passed_rows=status.passed_rows, quarantined_rows=status.quarantined_rows,
        message=status.message, reasons=status.reasons, failed_rules=status.failed_rules,
        rows_read=status.input_rows, validation_dir=str(wh.partition(spec.name, "validation", ds)),
        result_json=status.result_json or "", data_docs=status.data_docs,
        quarantine=status.quarantine, reused=True)


def _check_extra_columns(cfg: JobConfig, spec: DatasetSpec, inputs: ValidationInputs) -> None:
    """A features column the spec does not know fails the partition (a rename upstream, a
    producer writing the wrong table) unless ``validation.on_extra_columns: ignore``. Checked
    only when no spec column is missing: then GX's missing-column failure says more."""
    names = inputs.features_schema.names
    if cfg.validation.on_extra_columns == "ignore" or any(
            c not in names for c in spec.features_table_columns):
        return
    extra = [c for c in names if c not in spec.features_table_columns]
    if extra:
        raise _Refused(
            f"validation failed: unexpected column{'s' if len(extra) > 1 else ''} "
            f"{', '.join(repr(c) for c in extra)} not in the {spec.name} spec "
            f"(validation.on_extra_columns: fail)", inputs.rows_read, inputs.bounds.unreadable)


def _failure_details(report: ValidationReport) -> dict[str, Any]:
    record = report.record()
    return {**record.details, "outputs": record.outputs}


def read_inputs(tb: DatasetTables, spec: DatasetSpec, ds: str) -> ValidationInputs:
    """Footers of the features and labels partitions and the row-count bounds: no Spark job.
    ``ValueError`` names an unreadable file or a schema disagreement."""
    features, labels = tb["features"], tb["labels"]
    files = features.files(ds)
    features_schema, rows = read_footers(files)
    labels_files = labels.files(ds)
    labels_schema = read_footers(labels_files)[0] if labels_files else None
    dense = [f.name for f in spec.dense_features if f.name in features_schema.names]
    return ValidationInputs(features, labels, features_schema, labels_schema, rows,
                            row_count_bounds(tb, spec, ds), features.fingerprint(ds),
                            footer_ranges(files, dense))


def _check_and_write(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, ds: str,
                     inputs: ValidationInputs, tb: DatasetTables,
                     docs_dir: Path | None) -> ValidationReport:
    """GX over the labels table (its own batch) and over the cached features frame → the
    decision (+ feature drift) → result.json (+ labels_result.json), the drift rows and
    profile, and the quarantine partition."""
    max_bad = 0.0 if cfg.validation.on_bad_rows == "fail" else cfg.validation.max_bad_row_fraction
    suite = build_suite(spec, inputs.bounds, with_labels=False, max_bad_row_fraction=max_bad)
    labels_suite = build_labels_suite(spec) if inputs.labels_schema is not None else None
    validation_dir = tb.wh.partition(spec.name, "validation", ds)
    quarantine = tb["quarantine"]
    frame: DataFrame | None = None
    run_name = f"{spec.name}-{ds}"
    try:
        raw = read_partition(spark, inputs.features, ds, inputs.features_schema)
        labels = (read_partition(spark, inputs.labels, ds, inputs.labels_schema)
                  if inputs.labels_schema is not None else None)
        gx_run = GxRun(docs_dir)
        labels_result = None
        schema_ok = not schema_problems(spec, raw, labels)
        if not schema_ok:
            # Only the schema expectations can run; they need no Spark job.
            frame = raw
            schema_only(suite, set(raw.columns))
            if labels is not None:
                schema_only(labels_suite, set(labels.columns))
                labels_result = _run_or_fail(inputs, lambda: gx_run.run(
                    labels, labels_suite, "labels", run_name))
        else:
            bad_labels = None
            if labels is not None:
                # A null label (a labels row without a value) is judged as -1: not in {0, 1}, so
                # GX's in-set rule and the quarantine reason both flag it. (A features row with
                # no labels row at all keeps null labels: not judged.)
                labels_frame = labels.select(*spec.key_names, *[
                    F.coalesce(F.col(t), F.lit(-1)).alias(t)
                    for t in spec.task_names])
                labels_result = _run_or_fail(inputs, lambda: gx_run.run(
                    labels_frame, labels_suite, "labels", run_name))
                bad_labels = bad_label_keys(spec, labels_frame, labels_result)
            frame = prepare_frame(spec, raw, bad_labels=bad_labels).cache()
        result = _run_or_fail(inputs, lambda: gx_run.run(frame, suite, "features", run_name))
        write_json(validation_dir / RESULT_FILE, result.to_json_dict())
        if labels_result is not None:
            write_json(validation_dir / LABELS_RESULT_FILE, labels_result.to_json_dict())
        report = decide(spec, ds, result, inputs.rows_read, cfg, inputs.bounds,
                        labels_result=labels_result)
        report.result_json = str(validation_dir / RESULT_FILE)
        report.column_ranges = dict(inputs.ranges or {})
        if labels_result is not None:
            report.labels_result_json = str(validation_dir / LABELS_RESULT_FILE)
        report.data_docs = str(docs_dir / "index.html") if docs_dir is not None else None
        if cfg.drift.enabled and schema_ok and report.status != "failed":
            _drift(cfg, spec, ds, tb, frame, report)
        if report.status == "quarantined":
            with quarantine.writing(spark, ds) as staged:
                write_quarantine(frame, spec, staged.dir)
            report.quarantine = quarantine.where(ds)
            written, report.reasons = reason_counts(quarantine, ds)
            if written != report.quarantined_rows:  # a broken invariant must not pass
                raise _Refused(
                    f"validation failed: {written:,} rows written to quarantine but GX "
                    f"counted {report.quarantined_rows:,} rows breaking row-level rules",
                    inputs.rows_read)
        else:
            quarantine.remove(ds)
    finally:
        if frame is not None and frame.is_cached:
            frame.unpersist()
    return report


def _drift(cfg: JobConfig, spec: DatasetSpec, ds: str, tb: DatasetTables, frame: DataFrame,
           report: ValidationReport) -> DriftOutcome:
    """Feature drift on the cached frame → the drift rows (table), the day's profile (for later
    references), the report's drift and, with ``on_drift: fail`` and a drifted feature, the
    failed decision."""
    wh = tb.wh
    reference, skipped = trailing_profiles(wh, spec, ds, cfg.drift.reference_days)
    outcome = feature_drift(spec, ds, frame, cfg.drift, reference, skipped, report.passed_rows)
    report.drift, report.drift_details = outcome.day_rows, outcome.details()
    report.drift_details["table"] = str(replace_drift_rows(cfg, spec.name, ds, outcome.rows))
    write_json(wh.partition(spec.name, "validation", ds) / PROFILE_FILE, outcome.profile.to_json())
    report.drift_history = drift_history(tb, ds, cfg.drift.reference_days)
    if outcome.drifted and cfg.drift.on_drift == "fail":
        report.status, report.passed_rows, report.quarantined_rows = "failed", 0, 0
        report.failed_rules = report.failed_rules + [f"drift:{f}" for f in outcome.drifted]
        report.message = f"validation failed: {outcome.note()} (drift.on_drift: fail)"
    elif outcome.drifted:
        report.message += f"; warning: {outcome.note()}"
    return outcome


def _run_or_fail(inputs: ValidationInputs, run):
    try:
        return run()
    except ValidationFailed:
        raise
    except Exception as exc:  # GX itself broke: still leave a failed status behind
        raise _Refused(
            f"validation failed: Great Expectations could not run the suite: "
            f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}",
            inputs.rows_read) from exc


# Session settings while the validation runs, restored after (session settings: the validation
# must not share its session with concurrent queries of other threads).
# - adaptive execution runs every shuffle stage as a job of its own; the validation's shuffles
#   (the duplicate-key count, the labels join, GX's global aggregates) leave it nothing to re-plan;
# - GX's bundled aggregate (dozens of CASE WHENs) and the ``_reason`` expression compile to one
#   whole-stage method over 8000 bytecode bytes, which the JVM never JIT-compiles: that stage
#   ran interpreted, 4-5x slower. With the limit at the JIT's 8000 Spark falls back to
#   per-operator code generation for such a stage instead.
VALIDATION_CONF = {
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.codegen.hugeMethodLimit": "8000",
}
