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
  sample values (Spark optimises the ``LIMIT 0`` sample queries away: no job, only planning);
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

Every run first removes the ds's previous validation partition (so a crash never leaves an old
"passed" behind) and, unless rows are quarantined again, its quarantine partition.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any, NoReturn
from uuid import uuid4

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.core.config import JobConfig
from jobs.core.errors import MissingInputError, NotValidated, ValidationFailed
from jobs.core.manifest import RunRecord, utc_now
from jobs.core.spark import job_group, jobs_in_group, session_conf
from jobs.core.status import (
    ValidationStatus,
    read_validation_status,
    write_validation_status,
)
from jobs.core.tables import DatasetTables, Table, arrow_to_spark
from jobs.core.warehouse import (
    STATUS_FILE,
    Warehouse,
    read_footers,
    remove,
    write_json,
    write_text,
)
from jobs.validate.report import render_validation_html
from jobs.validate.rules import (
    KEY_COPIES,
    LABEL_TYPE,
    REASON,
    SPARK_TYPE,
    RowCountBounds,
    _ident,
    bad_label_condition,
    build_labels_suite,
    build_suite,
    reason_expression,
)
from schemas.spec import DatasetSpec
from schemas.tables import features_struct

RESULT_FILE = "result.json"
REPORT_FILE = "report.html"   # our self-contained, offline-readable page (GX's Data Docs need CDNs)
LABELS_RESULT_FILE = "labels_result.json"
DOCS_DIR = "data_docs"
RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 0}


@dataclass
class RuleResult:
    """One expectation's outcome, flattened from the GX result."""

    rule: str
    column: str
    level: str
    success: bool
    expectation: str
    unexpected_count: int | None = None
    element_count: int | None = None
    missing_count: int | None = None
    observed_value: Any = None
    limit: float | None = None
    error: str | None = None


@dataclass
class ValidationReport:
    dataset: str
    ds: str
    status: str                      # passed | quarantined | failed
    input_rows: int
    passed_rows: int
    quarantined_rows: int
    message: str
    reasons: dict[str, int] = field(default_factory=dict)
    failed_rules: list[str] = field(default_factory=list)
    rules: list[RuleResult] = field(default_factory=list)
    spark_jobs: int = 0
    seconds: float = 0.0
    validation_dir: str = ""
    result_json: str = ""
    labels_result_json: str | None = None
    data_docs: str | None = None
    report_html: str | None = None
    quarantine: str | None = None
    rows_read: int = 0
    bounds: RowCountBounds | None = None
    reused: bool = False             # the stored decision, features unchanged (reuse_current)

    def to_status(self, **facts: Any) -> ValidationStatus:
        """The decision as stored in ``status.json`` (``facts``: when, run id, fingerprint...)."""
        return ValidationStatus(
            status=self.status, dataset=self.dataset, ds=self.ds, input_rows=self.input_rows,
            passed_rows=self.passed_rows, quarantined_rows=self.quarantined_rows,
            message=self.message, reasons=self.reasons, failed_rules=self.failed_rules,
            result_json=self.result_json, data_docs=self.data_docs, report=self.report_html,
            quarantine=self.quarantine, **facts)

    def record(self) -> RunRecord:
        """Counts for the manifest: a failed validation passed nothing on and quarantined
        nothing (0/0/0); the rows it read are in ``details["rows_read"]``."""
        counted = self.status != "failed"
        outputs = {"validation": self.validation_dir,
                   "status": str(Path(self.validation_dir) / STATUS_FILE),
                   "result_json": self.result_json}
        if self.labels_result_json:
            outputs["labels_result_json"] = self.labels_result_json
        if self.data_docs:
            outputs["data_docs"] = self.data_docs
        if self.report_html:
            outputs["report"] = self.report_html
        if self.quarantine:
            outputs["quarantine"] = self.quarantine
        return RunRecord(
            input_rows=self.input_rows if counted else 0,
            output_rows=self.passed_rows if counted else 0,
            quarantined_rows=self.quarantined_rows if counted else 0,
            outputs=outputs,
            details={
                "validation_status": self.status,
                "reused_decision": self.reused,
                "rows_read": self.rows_read,
                "spark_jobs": self.spark_jobs,
                "seconds": self.seconds,
                "reasons": self.reasons,
                "failed_rules": self.failed_rules,
                "expectations": len(self.rules),
                "unsuccessful_expectations": sum(not r.success for r in self.rules),
                "row_count_bounds": asdict(self.bounds) if self.bounds else None,
                # earlier partitions the row-count history could not read (path and cause)
                "skipped_partitions": list(self.bounds.unreadable) if self.bounds else [],
            })


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
            inputs = read_inputs(tb, spec, ds)
        except ValueError as exc:
            _fail(tb, spec, ds, run_id, f"validation failed: {exc}", 0)
        _check_extra_columns(cfg, spec, inputs, tb, ds, run_id)
        group = f"mmoe-validate-{uuid4().hex[:12]}"
        docs_dir = validation_dir / DOCS_DIR if cfg.validation.keep_data_docs else None
        with job_group(spark, group, f"validate {spec.name} ds={ds}"), \
                session_conf(spark, VALIDATION_CONF):
            report = _check_and_write(spark, cfg, spec, ds, inputs, tb, docs_dir, run_id)
        report.spark_jobs = jobs_in_group(spark, group)
        report.seconds = round(time.perf_counter() - started, 3)
        report.validation_dir = str(validation_dir)

        report.report_html = str(write_text(validation_dir / REPORT_FILE,
                                            render_validation_html(report)))
        write_validation_status(wh, report.to_status(
            validated_at=utc_now(), run_id=run_id, spark_jobs=report.spark_jobs,
            features_fingerprint=inputs.fingerprint, row_count_bounds=asdict(inputs.bounds),
            skipped_partitions=list(inputs.bounds.unreadable)))
    if report.status == "failed":
        raise ValidationFailed(report.message, details=_failure_details(report))
    return report


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


def _check_extra_columns(cfg: JobConfig, spec: DatasetSpec, inputs: "ValidationInputs",
                         tb: DatasetTables, ds: str, run_id: str | None) -> None:
    """A features column the spec does not know fails the partition (a rename upstream, a
    producer writing the wrong table) unless ``validation.on_extra_columns: ignore``. Checked
    only when no spec column is missing: then GX's missing-column failure says more."""
    names = inputs.features_schema.names
    if cfg.validation.on_extra_columns == "ignore" or any(
            c not in names for c in spec.features_table_columns):
        return
    extra = [c for c in names if c not in spec.features_table_columns]
    if extra:
        _fail(tb, spec, ds, run_id,
              f"validation failed: unexpected column{'s' if len(extra) > 1 else ''} "
              f"{', '.join(repr(c) for c in extra)} not in the {spec.name} spec "
              f"(validation.on_extra_columns: fail)", inputs.rows_read,
              skipped=inputs.bounds.unreadable)


def _failure_details(report: ValidationReport) -> dict[str, Any]:
    record = report.record()
    return {**record.details, "outputs": record.outputs}


def _fail(tb: DatasetTables, spec: DatasetSpec, ds: str, run_id: str | None, message: str,
          rows: int, cause: BaseException | None = None,
          skipped: tuple[str, ...] = ()) -> NoReturn:
    """Before a GX result exists: leave a failed status (and no quarantine) behind."""
    wh = tb.wh
    tb["quarantine"].remove(ds)
    # The fingerprint makes the failure reusable: an unchanged partition fails again without
    # another GX run (the backfill's reuse_current).
    write_validation_status(wh, ValidationStatus(
        status="failed", dataset=spec.name, ds=ds, input_rows=rows, message=message,
        validated_at=utc_now(), run_id=run_id, skipped_partitions=list(skipped),
        features_fingerprint=tb["features"].fingerprint(ds)))
    raise ValidationFailed(message, details={"validation_status": "failed", "rows_read": rows,
                                             "spark_jobs": 0,
                                             "skipped_partitions": list(skipped)}) from cause


def read_inputs(tb: DatasetTables, spec: DatasetSpec, ds: str) -> ValidationInputs:
    """Footers of the features and labels partitions and the row-count bounds: no Spark job.
    ``ValueError`` names an unreadable file or a schema disagreement."""
    features, labels = tb["features"], tb["labels"]
    features_schema, rows = read_footers(features.files(ds))
    labels_files = labels.files(ds)
    labels_schema = read_footers(labels_files)[0] if labels_files else None
    return ValidationInputs(features, labels, features_schema, labels_schema, rows,
                            row_count_bounds(tb, spec, ds), features.fingerprint(ds))


def _check_and_write(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, ds: str,
                     inputs: ValidationInputs, tb: DatasetTables, docs_dir: Path | None,
                     run_id: str | None) -> ValidationReport:
    """GX over the labels table (its own batch) and over the cached features frame → the
    decision → result.json (+ labels_result.json) and the quarantine partition."""
    max_bad = 0.0 if cfg.validation.on_bad_rows == "fail" else cfg.validation.max_bad_row_fraction
    suite = build_suite(spec, inputs.bounds, with_labels=False, max_bad_row_fraction=max_bad)
    labels_suite = build_labels_suite(spec) if inputs.labels_schema is not None else None
    validation_dir = tb.wh.partition(spec.name, "validation", ds)
    quarantine = tb["quarantine"]
    frame: DataFrame | None = None
    run_name = f"{spec.name}-{ds}"
    try:
        raw = _read(spark, inputs.features, ds, inputs.features_schema)
        labels = (_read(spark, inputs.labels, ds, inputs.labels_schema)
                  if inputs.labels_schema is not None else None)
        gx_run = _GxRun(docs_dir)
        labels_result = None
        if schema_problems(spec, raw, labels):
            # Only the schema expectations can run; they need no Spark job.
            frame = raw
            _schema_only(suite, set(raw.columns))
            if labels is not None:
                _schema_only(labels_suite, set(labels.columns))
                labels_result = _run_or_fail(tb, spec, ds, run_id, inputs, lambda: gx_run.run(
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
                labels_result = _run_or_fail(tb, spec, ds, run_id, inputs, lambda: gx_run.run(
                    labels_frame, labels_suite, "labels", run_name))
                bad_labels = bad_label_keys(spec, labels_frame, labels_result)
            frame = prepare_frame(spec, raw, bad_labels=bad_labels).cache()
        result = _run_or_fail(tb, spec, ds, run_id, inputs, lambda: gx_run.run(
            frame, suite, "features", run_name))
        write_json(validation_dir / RESULT_FILE, result.to_json_dict())
        if labels_result is not None:
            write_json(validation_dir / LABELS_RESULT_FILE, labels_result.to_json_dict())
        report = decide(spec, ds, result, inputs.rows_read, cfg, inputs.bounds,
                        labels_result=labels_result)
        report.result_json = str(validation_dir / RESULT_FILE)
        if labels_result is not None:
            report.labels_result_json = str(validation_dir / LABELS_RESULT_FILE)
        report.data_docs = str(docs_dir / "index.html") if docs_dir is not None else None
        if report.status == "quarantined":
            with quarantine.writing(spark, ds) as staged:
                write_quarantine(frame, spec, staged.dir)
            report.quarantine = quarantine.where(ds)
            written, report.reasons = _reason_counts(quarantine, ds)
            if written != report.quarantined_rows:  # a broken invariant must not pass
                _fail(tb, spec, ds, run_id,
                      f"validation failed: {written:,} rows written to quarantine but GX "
                      f"counted {report.quarantined_rows:,} rows breaking row-level rules",
                      inputs.rows_read)
        else:
            quarantine.remove(ds)
    finally:
        if frame is not None and frame.is_cached:
            frame.unpersist()
    return report


def _schema_only(suite, present: set[str]) -> None:
    suite.expectations = [e for e in suite.expectations
                          if e.meta["level"] == "schema"
                          and (e.meta["rule"] == "missing_column" or e.column in present)]


def _run_or_fail(tb: DatasetTables, spec: DatasetSpec, ds: str, run_id: str | None,
                 inputs: ValidationInputs, run):
    try:
        return run()
    except ValidationFailed:
        raise
    except Exception as exc:  # GX itself broke: still leave a failed status behind
        _fail(tb, spec, ds, run_id,
              f"validation failed: Great Expectations could not run the suite: "
              f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}",
              inputs.rows_read, exc)


def bad_label_keys(spec: DatasetSpec, labels: DataFrame, labels_result) -> DataFrame | None:
    """The keys whose labels break ``label_not_binary`` (one row per key, each task folded to
    an out-of-{0,1} value when the key has one), or None when the labels batch found none (no
    Spark job then). Few keys are collected and broadcast back; many stay a DataFrame."""
    if all(r.success and not r.unexpected_count for r in _rule_results(labels_result)
           if r.rule == "label_not_binary"):
        return None
    keys = spec.key_names
    folded = labels.where(bad_label_condition(spec)).groupBy(*keys).agg(*[
        # out-of-{0,1} values are < 0 or > 1: keep one if there is one
        F.when(F.min(t) < 0, F.min(t)).otherwise(F.max(t)).alias(t) for t in spec.task_names])
    found = folded.limit(MAX_BROADCAST_KEYS + 1).agg(
        F.collect_list(F.struct(*keys, *spec.task_names)).alias("found")).first()["found"]
    if len(found) > MAX_BROADCAST_KEYS:
        return folded
    return F.broadcast(labels.sparkSession.createDataFrame(found, schema=folded.schema))


def passed_rows(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, ds: str) -> DataFrame:
    """The features rows of ``ds`` that passed validation: the partition minus the quarantined
    keys (a null-safe left-anti join, so null-key rows stay out too).

    Raises :class:`NotValidated` when the ds was never validated, failed, or its features
    partition changed since it was validated.
    """
    tb = DatasetTables(cfg, spec.name, spark)
    status = checked_status(cfg, spec, ds, tb)
    rows = tb["features"].read(spark, ds, schema=features_struct(spec))
    if status.quarantined_rows == 0:
        return rows
    keys = tb["quarantine"].read(spark, ds, columns=spec.key_names).distinct()
    cond = reduce(lambda a, b: a & b, [rows[k].eqNullSafe(keys[k]) for k in spec.key_names])
    return rows.join(keys, on=cond, how="left_anti")


def checked_status(cfg: JobConfig, spec: DatasetSpec, ds: str,
                   tb: DatasetTables | None = None) -> ValidationStatus:
    """The ds's validation status when its rows may be scored; :class:`NotValidated` when it
    was never validated, failed, changed since, or its quarantine partition went missing."""
    tb = tb or DatasetTables(cfg, spec.name)
    status = read_status(cfg, spec, ds)
    where = f"{spec.name} ds={ds}"
    if status is None:
        raise NotValidated(f"{where} has not been validated; run: mmoe validate "
                           f"--dataset {spec.name} --ds {ds}")
    if not status.scorable:
        raise NotValidated(f"{where} did not pass validation: {status.message or '?'}")
    if tb["features"].fingerprint(ds) != status.features_fingerprint:
        raise NotValidated(f"{where}: the features partition changed after it was validated; "
                           f"run mmoe validate --dataset {spec.name} --ds {ds} again")
    if status.quarantined_rows and not tb["quarantine"].exists(ds):
        raise NotValidated(f"{where}: status says {status.quarantined_rows} rows were "
                           f"quarantined but {tb['quarantine'].where(ds)} is missing; "
                           f"validate again")
    return status


def read_status(cfg: JobConfig, spec: DatasetSpec, ds: str) -> ValidationStatus | None:
    """The validation decision of a ds, or None when it was never validated (or is being
    validated)."""
    try:
        return read_validation_status(Warehouse(cfg.warehouse), spec.name, ds)
    except ValueError as exc:
        raise NotValidated(str(exc)) from None


# --------------------------------------------------------------------------------------------
# Inputs: row-count history, schema


def _read(spark: SparkSession, source: Table, ds: str, schema: pa.Schema) -> DataFrame:
    """Read a partition with the schema its footers declare (no schema-inference job); Spark's
    own inference for types pyspark cannot map from arrow."""
    return source.read(spark, ds, schema=arrow_to_spark(schema))


def row_count_bounds(tb: DatasetTables, spec: DatasetSpec, ds: str) -> RowCountBounds:
    """``row_count.min_rows``, tightened by [min_ratio, max_ratio] x the median row count of up
    to ``trailing_partitions`` previous features partitions (footer counts, no Spark job).
    A previous partition whose files cannot be read is skipped and named in ``unreadable``:
    one corrupt day never fails the validation of another."""
    policy = spec.row_count
    features = tb["features"]
    previous = [d for d in features.partitions() if d < ds]
    counts, unreadable = [], []
    for day in reversed(previous):
        if len(counts) == policy.trailing_partitions:
            break
        files = features.files(day)
        if files:
            try:
                counts.append(read_footers(files)[1])
            except ValueError as exc:
                unreadable.append(f"ds={day}: {exc}")
    if not counts:
        return RowCountBounds(min_rows=policy.min_rows, max_rows=None,
                              unreadable=tuple(unreadable))
    median = float(statistics.median(counts))
    lo = max(policy.min_rows, int(-(-policy.min_ratio_to_median * median // 1)))  # ceil
    hi = int(policy.max_ratio_to_median * median)                                    # floor
    return RowCountBounds(min_rows=lo, max_rows=max(hi, lo), median=median, trailing=len(counts),
                          unreadable=tuple(unreadable))


def _spark_type_name(frame: DataFrame, column: str) -> str:
    return type(frame.schema[column].dataType).__name__


def schema_problems(spec: DatasetSpec, features: DataFrame,
                    labels: DataFrame | None) -> list[str]:
    """Columns missing or of the wrong type (the GX result words the failure; this only decides
    whether the full suite can run)."""
    problems = []
    typed = [(k.name, k.dtype) for k in spec.keys] + [(f.name, f.dtype) for f in spec.features]
    typed += [(a.name, a.dtype) for a in spec.attributes]
    for name, dtype in typed:
        if name not in features.columns:
            problems.append(f"missing:{name}")
        elif _spark_type_name(features, name) != SPARK_TYPE[dtype]:
            problems.append(f"type:{name}")
    if labels is not None:
        for name in spec.key_names:
            if name not in labels.columns:
                problems.append(f"labels_missing:{name}")
        for task in spec.task_names:
            if task not in labels.columns:
                problems.append(f"missing:{task}")
            elif _spark_type_name(labels, task) != LABEL_TYPE:
                problems.append(f"type:{task}")
    return problems


# --------------------------------------------------------------------------------------------
# The frame GX validates


# Duplicated keys (no labels partition) up to this many are collected to the driver and broadcast
# back onto the partition; more (a badly broken partition), and they are joined back with a
# shuffle instead.
MAX_BROADCAST_KEYS = 100_000


def prepare_frame(spec: DatasetSpec, features: DataFrame, *,
                  bad_labels: DataFrame | None = None) -> DataFrame:
    """The partition's spec columns + ``_key_copies`` + ``_reason``.

    When the labels batch found bad labels, ``bad_labels`` (:func:`bad_label_keys`: only those
    keys) are joined on (broadcast when few) so that ``_reason`` names
    ``label_not_binary:<task>``. No wide row is shuffled: duplicated keys come from a group-by
    over the key columns alone (only keys move; normally none survive ``count > 1``), broadcast
    back when few.
    """
    spark = features.sparkSession
    keys = spec.key_names
    any_null_key = " OR ".join(f"{_ident(k)} IS NULL" for k in keys)
    frame = features.select(*spec.features_table_columns)
    copies = "_copies"
    dups = (features.groupBy(*keys).agg(F.count(F.lit(1)).alias(copies))
            .where(f"{copies} > 1 AND NOT ({any_null_key})"))
    # one job (a limit + a one-row aggregate; ``limit().collect()`` may run several)
    found = dups.limit(MAX_BROADCAST_KEYS + 1).agg(
        F.collect_list(F.struct(*keys, copies)).alias("found")).first()["found"]
    if not found:
        frame = frame.selectExpr(
            "*", f"CAST(CASE WHEN {any_null_key} THEN NULL ELSE 1 END AS BIGINT) "
                 f"AS {_ident(KEY_COPIES)}")
    else:
        if len(found) <= MAX_BROADCAST_KEYS:
            dups = F.broadcast(spark.createDataFrame(found, schema=dups.schema))
        frame = frame.join(dups, on=keys, how="left").selectExpr(
            *[_ident(c) for c in frame.columns],
            f"CASE WHEN {any_null_key} THEN NULL ELSE coalesce({_ident(copies)}, 1) END "
            f"AS {_ident(KEY_COPIES)}")
    if bad_labels is not None:
        frame = frame.join(bad_labels, on=keys, how="left")
        return _with_reason(spec, frame, with_labels=True)
    return _with_reason(spec, frame, with_labels=False)


def _with_reason(spec: DatasetSpec, frame: DataFrame, with_labels: bool) -> DataFrame:
    return frame.selectExpr(
        "*", f"{reason_expression(spec, with_labels)} AS {_ident(REASON)}")


class _GxRun:
    """One ephemeral GX context for a validation: each batch (the labels table, the features
    frame) is validated by its own checkpoint; with ``docs_dir``, GX's Data Docs site builder
    renders every result there (``index.html`` + one page per batch)."""

    def __init__(self, docs_dir: Path | None) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        sites = {}
        if docs_dir is not None:
            sites["local"] = {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                  "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        self.docs_dir = docs_dir
        self.context = gx.get_context(mode="ephemeral", project_config=DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            data_docs_sites=sites, analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False)))
        self.source = self.context.data_sources.add_spark(name="warehouse", persist=False)

    def run(self, frame: DataFrame, suite, asset: str, run_name: str):
        import great_expectations as gx
        from great_expectations.checkpoint import UpdateDataDocsAction
        from great_expectations.core.run_identifier import RunIdentifier

        context = self.context
        batch = self.source.add_dataframe_asset(name=asset).add_batch_definition_whole_dataframe(
            "partition")
        suite = context.suites.add(suite)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=suite.name, data=batch, suite=suite))
        actions = [UpdateDataDocsAction(name="data_docs")] if self.docs_dir is not None else []
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=f"validate-{asset}", validation_definitions=[definition], actions=actions,
            result_format=RESULT_FORMAT))
        outcome = checkpoint.run(batch_parameters={"dataframe": frame},
                                 run_id=RunIdentifier(run_name=run_name))
        if self.docs_dir is not None:
            _prune_static_images(self.docs_dir)
        return next(iter(outcome.run_results.values()))


def _prune_static_images(docs_dir: Path) -> None:
    """GX copies ~3.4 MB of marketing images into every site; the pages use only the favicon."""
    images = docs_dir / "static" / "images"
    if images.is_dir():
        for path in images.iterdir():
            if path.is_file() and path.name != "favicon.ico":
                path.unlink()


# --------------------------------------------------------------------------------------------
# Deciding


def _rule_results(result) -> list[RuleResult]:
    rules = []
    for r in result.results:
        cfg = r.expectation_config
        meta = cfg.meta or {}
        res = r.result or {}
        info = r.exception_info or {}
        error = None
        if info.get("raised_exception"):
            error = info.get("exception_message") or "error"
        elif info and not {"raised_exception", "exception_message",
                           "exception_traceback"} >= set(info):
            # several metric errors, keyed by metric id
            errors = [v.get("exception_message") for v in info.values() if isinstance(v, dict)
                      and v.get("raised_exception")]
            error = "; ".join(str(e) for e in errors if e) or None
        rules.append(RuleResult(
            rule=meta.get("rule", cfg.type), column=meta.get("column", ""),
            level=meta.get("level", "table"), success=bool(r.success), expectation=cfg.type,
            unexpected_count=res.get("unexpected_count"), element_count=res.get("element_count"),
            missing_count=res.get("missing_count"),
            observed_value=res.get("observed_value"), limit=meta.get("limit"), error=error))
    return rules


def decide(spec: DatasetSpec, ds: str, result, rows_read: int, cfg: JobConfig,
           bounds: RowCountBounds, labels_result=None) -> ValidationReport:
    """The decision from the features batch's GX result and, when there is a labels partition,
    the labels batch's (its rules follow the features' in the report)."""
    rules = _rule_results(result)
    if labels_result is not None:
        rules += _rule_results(labels_result)
    rows = next((int(r.observed_value) for r in rules if r.rule == "row_count"
                 and r.observed_value is not None), rows_read)
    errors = [r for r in rules if r.error]
    failed = [r for r in rules if not r.success and r.level in ("schema", "table", "policy")]
    row_failed = [r for r in rules if not r.success and r.level == "row"]
    policy = next((r for r in rules if r.level == "policy"), None)
    bad = int(policy.unexpected_count or 0) if policy is not None else 0
    breakdown = ", ".join(f"{r.rule}:{r.column} {r.unexpected_count or 0:,}" for r in row_failed)
    report = ValidationReport(dataset=spec.name, ds=ds, status="passed", input_rows=rows,
                              passed_rows=rows, quarantined_rows=0, message="", rules=rules,
                              rows_read=rows_read, bounds=bounds)
    if errors or failed:
        first = errors[0] if errors else failed[0]
        msg = (_error_message(first) if errors
               else _failure_message(first, spec, rows, bad, breakdown, cfg, bounds))
        others = [f"{r.rule}:{r.column}" for r in (errors + failed) if r is not first]
        if others:
            more = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            msg += f" (+{len(others)} more: {more})"
        report.status, report.message = "failed", msg
        report.passed_rows = 0
        report.failed_rules = [f"{r.rule}:{r.column}" for r in errors + failed]
        return report
    if bad:
        report.status = "quarantined"
        report.quarantined_rows, report.passed_rows = bad, rows - bad
        report.failed_rules = [f"{r.rule}:{r.column}" for r in row_failed]
        report.message = (f"validation quarantined {bad:,} of {rows:,} rows "
                          f"({breakdown}); {rows - bad:,} passed")
    else:
        report.message = f"validation passed: {rows:,} rows"
    return report


def _fraction(value: float, limit: float) -> tuple[str, str]:
    digits = 2
    while digits < 6 and f"{value:.{digits}f}" == f"{limit:.{digits}f}":
        digits += 1
    return f"{value:.{digits}f}", f"{limit:.{digits}f}"


def _error_message(rule: RuleResult) -> str:
    return (f"validation failed: rule {rule.rule} on column '{rule.column}' could not be "
            f"evaluated ({rule.expectation}): {str(rule.error).splitlines()[0][:300]}")


def _failure_message(rule: RuleResult, spec: DatasetSpec, rows: int, bad: int, breakdown: str,
                     cfg: JobConfig, bounds: RowCountBounds) -> str:
    head = "validation failed: "
    if rule.rule == "missing_column":
        observed = set(rule.observed_value or [])
        missing = [c for c in rule.column.split(",") if c not in observed]
        return head + (f"missing column{'s' if len(missing) > 1 else ''} "
                       f"{', '.join(repr(c) for c in missing)} (dataset {spec.name})")
    if rule.rule == "wrong_type":
        expected = LABEL_TYPE if rule.column in spec.task_names else \
            SPARK_TYPE[spec.column(rule.column).dtype]
        return head + (f"column '{rule.column}' has type {rule.observed_value}, "
                       f"expected {expected}")
    if rule.rule == "row_count":
        policy = spec.row_count
        if rows == 0:
            return head + f"partition is empty (0 rows; row_count.min_rows {policy.min_rows:,})"
        if rows < policy.min_rows:
            return head + f"row count {rows:,} < row_count.min_rows {policy.min_rows:,}"
        side = "<" if rows < bounds.min_rows else ">"
        limit = bounds.min_rows if side == "<" else bounds.max_rows
        return head + (f"row count {rows:,} {side} {limit:,} (row_count: "
                       f"[{policy.min_ratio_to_median}, {policy.max_ratio_to_median}] x median "
                       f"{bounds.median:,.0f} of the "
                       f"{bounds.trailing} previous partition(s))")
    if rule.rule == "null_fraction":
        nulls = rows - round(float(rule.observed_value or 0.0) * rows)  # observed: non-null share
        value, limit = _fraction(nulls / rows if rows else 0.0, float(rule.limit or 0.0))
        return head + (f"column '{rule.column}' null fraction {value} > {limit} "
                       f"({nulls:,} of {rows:,} rows)")
    if rule.rule == "oov_fraction":
        # GX's ``mostly`` is over the non-null values
        oov = int(rule.unexpected_count or 0)
        nonnull = int(rule.element_count or rows) - int(rule.missing_count or 0)
        value, limit = _fraction(oov / nonnull if nonnull else 0.0, float(rule.limit or 0.0))
        return head + (f"column '{rule.column}' out-of-vocabulary fraction {value} > {limit} "
                       f"({oov:,} of {nonnull:,} non-null rows)")
    if rule.rule == "bad_row_fraction":
        if cfg.validation.on_bad_rows == "fail":
            return head + (f"{bad:,} of {rows:,} rows break row-level rules and "
                           f"validation.on_bad_rows is 'fail' ({breakdown})")
        value, limit = _fraction(bad / rows if rows else 0.0,
                                 cfg.validation.max_bad_row_fraction)
        return head + (f"bad row fraction {value} > validation.max_bad_row_fraction {limit} "
                       f"({bad:,} of {rows:,} rows: {breakdown})")
    return head + f"rule {rule.rule} on column '{rule.column}' ({rule.expectation})"


# --------------------------------------------------------------------------------------------
# Outputs


def write_quarantine(frame: DataFrame, spec: DatasetSpec, quarantine_dir: Path) -> None:
    """The rows as read (spec columns) + ``reason``, written to ``quarantine_dir`` (a staging
    directory of :func:`jobs.core.warehouse.replacing`)."""
    bad = frame.filter(F.col(REASON).isNotNull()).select(
        *spec.features_table_columns, F.col(REASON).alias("reason"))
    bad.coalesce(1).write.mode("overwrite").parquet(str(quarantine_dir))


def _reason_counts(quarantine: Table, ds: str) -> tuple[int, dict[str, int]]:
    """Rows written to quarantine, and rows per single rule (``rule:column``; a row breaking
    several rules counts under each), read from the files with pyarrow (no Spark job)."""
    table = quarantine.read_arrow(ds, columns=["reason"])
    counts: dict[str, int] = {}
    for item in table.column("reason").value_counts().to_pylist():
        for reason in str(item["values"]).split(";"):
            counts[reason] = counts.get(reason, 0) + int(item["counts"])
    return table.num_rows, dict(sorted(counts.items()))


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
