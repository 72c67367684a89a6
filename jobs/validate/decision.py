r"""The validation decision: GX's results flattened into :class:`RuleResult`\ s, and
:func:`decide` turning them into a :class:`ValidationReport` with its one-line wording (rule,
column, counts). Pure: no Spark, no files; the stage writes what it returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jobs.core.config import JobConfig
from jobs.core.manifest import RunRecord
from jobs.core.status import ValidationStatus
from jobs.core.warehouse import STATUS_FILE
from jobs.validate.drift import DriftRow
from jobs.validate.rules import LABEL_TYPE, SPARK_TYPE, RowCountBounds
from schemas.spec import DatasetSpec


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
    spark_jobs: int | None = 0  # None: unknown (Spark Connect has no status tracker)
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
    drift: list[DriftRow] = field(default_factory=list)
    drift_details: dict[str, Any] | None = None
    drift_history: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

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
                **({"drift": self.drift_details} if self.drift_details is not None else {}),
            })


def rule_results(result) -> list[RuleResult]:
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
    rules = rule_results(result)
    if labels_result is not None:
        rules += rule_results(labels_result)
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
