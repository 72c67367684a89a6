"""Compare stage (``mmoe compare``): two model versions' predictions over a ds range, paired row
by row, joined with labels -> the ``ab_reports`` rows, an HTML report and a Markdown summary.

read (through ``jobs.core.warehouse``) -> pure DataFrame transforms (:func:`pair_arms`,
:func:`labelled_pairs`, :func:`stack_tasks`) -> one ``applyInArrow`` per (task, scope) running
``jobs.compare.records.group_records`` on the executors (no row reaches the driver; what comes back is a
few records per task x scope x segment x metric) -> adjusted p-values, verdicts and the decision
on the driver -> write (through ``jobs.core.warehouse.replacing``).

Beside the logged-traffic rows (neither adjusted with them nor part of the decision): the two
versions' catalog recommendations paired by user (:mod:`jobs.compare.recommendations`, segment
``recommendations``) where both wrote some, and the counterfactual section
(:mod:`jobs.compare.offpolicy`: each model on the lists it would show, off-policy, into the
``policy_values`` table) where the features carry propensities and a candidates table the pools.

Scopes: ``all`` (the whole range, ``day`` null in the table) and each day of the range. With a
one-day range the day's rows are the pooled rows (same tests, same adjusted p-values).

Limits: one (task, scope) group is processed in one Python worker, so the pooled scope of a task
(all paired rows of the range) must fit in one Python worker's memory (~200 bytes a row
with its sort and rank arrays: 10M rows ≈ 2 GB).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import reduce

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.compare.records import (
    RECORD_SCHEMA,
    Decision,
    decide,
    finish_report,
    group_records_arrow,
)
from jobs.compare.offpolicy import POLICY_VALUES_SCHEMA, Counterfactual, counterfactual_section
from jobs.compare.recommendations import recommendation_section
from jobs.compare.report import render_html, render_markdown
from jobs.core import metric_registry
from jobs.core.config import JobConfig
from jobs.core.drift_table import version_drift
from jobs.core.errors import InputError, MissingInputError
from jobs.core.manifest import RunRecord
from jobs.core.modelref import ModelRef
from jobs.core.registry import describe_model, version_of
from jobs.core.slices import SEP, compare_slices, slice_columns
from jobs.core.tables import DatasetTables, Table
from jobs.core.warehouse import (
    date_range,
    read_footers,
    replacing,
    report_id,
)
from jobs.evaluate.gates import gate_diagnostics
from schemas.spec import DatasetSpec

DAY = "day"
AB_SCHEMA = pa.schema([
    ("baseline", pa.string()), ("candidate", pa.string()), ("task", pa.string()),
    ("segment", pa.string()), ("metric", pa.string()), ("baseline_value", pa.float64()),
    ("candidate_value", pa.float64()), ("delta", pa.float64()), ("ci_low", pa.float64()),
    ("ci_high", pa.float64()), ("p_value", pa.float64()), ("p_value_adjusted", pa.float64()),
    ("verdict", pa.string()), ("n", pa.int64()), ("day", pa.date32()),
    # beyond the contract
    ("method", pa.string()), ("se", pa.float64()), ("start", pa.date32()), ("end", pa.date32()),
    # ci_low / ci_high are the verdict's interval, at the adjusted level ci_level
    # (jobs.compare.stats.adjusted_levels); the unadjusted 95 % interval of the row alone:
    ("ci_level", pa.float64()), ("ci_low_raw", pa.float64()), ("ci_high_raw", pa.float64()),
])


@dataclass
class Pairing:
    """Row accounting of the pairing (keys + day)."""

    baseline_rows: int
    candidate_rows: int
    paired_rows: int
    baseline_only_rows: int
    candidate_only_rows: int
    paired_without_labels: int

    @property
    def labelled_rows(self) -> int:
        return self.paired_rows - self.paired_without_labels


@dataclass
class CompareResult:
    dataset: str
    baseline: str
    candidate: str
    start: str
    end: str
    segments: list[str]
    days: list[str]
    pairing: Pairing
    report: pd.DataFrame               # AB_SCHEMA rows (pooled and per day)
    plots: dict[str, dict]             # task -> histograms of both arms (pooled, segment all)
    decision: Decision
    gates: dict | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    prediction_drift: dict[str, list[dict]] = field(default_factory=dict)  # arm -> drift rows
    tasks: list[str] = field(default_factory=list)       # the spec's task order
    versions: dict[str, dict] = field(default_factory=dict)  # arm -> registry.describe_model
    counterfactual: Counterfactual | None = None          # the policy_values section
    recommendations: pd.DataFrame | None = None           # AB_SCHEMA rows, segment recommendations
    recommendation_days: list[str] = field(default_factory=list)

    def record(self):
        return RunRecord(
            input_rows=self.pairing.baseline_rows + self.pairing.candidate_rows,
            output_rows=len(self.report),
            quarantined_rows=0,
            model_version=f"{self.baseline},{self.candidate}",
            outputs=dict(self.outputs),
            details={"pairing": {**self.pairing.__dict__, "labelled_rows": self.pairing.labelled_rows},
                     "decision": self.decision.as_dict(), "segments": self.segments,
                     "days": self.days, "start": self.start, "end": self.end,
                     "counterfactual": None if self.counterfactual is None
                     else self.counterfactual.details(),
                     "recommendations": {"days": self.recommendation_days,
                                         "rows": 0 if self.recommendations is None
                                         else len(self.recommendations)},
                     "gates": None if self.gates is None else {
                         arm: g.get("flags") for arm, g in self.gates.items()}})


# --------------------------------------------------------------------------------------------
# Pure transforms


def pair_arms(base: DataFrame, cand: DataFrame, labels: DataFrame, keys: list[str],
              tasks: list[str]) -> DataFrame:
    """Full outer join of both arms on keys + day, left join of labels; ``_in_b``, ``_in_c``,
    ``_labelled`` say where a row was found; scores as ``b_<task>`` / ``c_<task>``, labels as
    ``y_<task>``."""
    on = keys + [DAY]
    b = base.select(*on, *(F.col(f"p_{t}").alias(f"b_{t}") for t in tasks), F.lit(True).alias("_in_b"))
    c = cand.select(*on, *(F.col(f"p_{t}").alias(f"c_{t}") for t in tasks), F.lit(True).alias("_in_c"))
    y = labels.select(*on, *(F.col(t).alias(f"y_{t}") for t in tasks), F.lit(True).alias("_labelled"))
    paired = b.join(c, on, "full_outer").join(y, on, "left")
    return paired.select(*on, *(c for c in paired.columns if c not in on and not c.startswith("_")),
                         *(F.coalesce(F.col(f), F.lit(False)).alias(f)
                           for f in ("_in_b", "_in_c", "_labelled")))


def pairing_counts(paired: DataFrame) -> Pairing:
    counts = {(r["_in_b"], r["_in_c"], r["_labelled"]): r["count"]
              for r in paired.groupBy("_in_b", "_in_c", "_labelled").count().collect()}

    def total(pred) -> int:
        return int(sum(v for k, v in counts.items() if pred(*k)))

    return Pairing(
        baseline_rows=total(lambda b, c, y: b), candidate_rows=total(lambda b, c, y: c),
        paired_rows=total(lambda b, c, y: b and c),
        baseline_only_rows=total(lambda b, c, y: b and not c),
        candidate_only_rows=total(lambda b, c, y: c and not b),
        paired_without_labels=total(lambda b, c, y: b and c and not y))


def _slice_value(name: str):
    """A row's value of a slice: the column's value as a string ("null" for none); for crossed
    columns the whole row segment name (``platform=ios & user_cohort=new``)."""
    values = [F.coalesce(F.col(c).cast("string"), F.lit("null")) for c in slice_columns(name)]
    if len(values) == 1:
        return values[0]
    return F.concat_ws(SEP, *(F.concat(F.lit(f"{c}="), v) for c, v in zip(slice_columns(name), values)))


def labelled_pairs(paired: DataFrame, features: DataFrame | None, keys: list[str],
                   user: str | None, segments: list[str], request: str | None = None) -> DataFrame:
    """Rows in both arms with labels, plus ``u`` (a 64-bit user hash: the bootstrap cluster; a
    row without a user is its own cluster), each slice's value as a string (``seg0..``) and, with a
    ``request`` column, ``r`` (a 64-bit hash of the day and request: one ranked list) and
    ``k0..`` (the keys: the ranking's tie-break)."""
    rows = paired.where(F.col("_in_b") & F.col("_in_c") & F.col("_labelled"))
    on = keys + [DAY]
    if features is not None:
        rows = rows.join(features, on, "left")
    own = F.xxhash64(*(F.col(k) for k in on))
    u = own if user is None else F.when(F.col(user).isNull(), own).otherwise(F.xxhash64(F.col(user)))
    segs = [_slice_value(s).alias(f"seg{i}") for i, s in enumerate(segments)]
    lists = []
    if request is not None:
        r = F.when(F.col(request).isNotNull(), F.xxhash64(F.col(DAY), F.col(request)))
        lists = [r.alias("r"), *(F.col(k).alias(f"k{i}") for i, k in enumerate(keys))]
    return rows.select(F.col(DAY).cast("string").alias(DAY), u.alias("u"), *segs, *lists,
                       *(c for c in rows.columns if c[:2] in ("b_", "c_", "y_")))


AMONG = "\x1f"   # task name of a conditional group: child AMONG parent=1 (see conditional_name)


def conditional_name(parent: str, child: str) -> str:
    """The stacked task of ``child`` among ``parent``'s positives; its records come back as
    task ``child``, segment ``<parent>=1`` (:func:`conditional_records`)."""
    return f"{child}{AMONG}{parent}=1"


def stack_tasks(rows: DataFrame, tasks: list[str], segments: list[str], per_day: bool,
                conditional: list[tuple[str, str]] = ()) -> DataFrame:
    """One row per (input row, task, scope): task, scope (``all`` or the day), u, y, b, c, seg*
    (and r, k* when ``rows`` has them). For each conditional (parent, child): the joint task
    ``<parent>_and_<child>`` (label both, score the product) and the child among the parent's
    positives (:func:`conditional_name`). Rows whose label or either score is null / NaN are
    left out of that task."""
    scopes = [F.lit("all")] + ([F.col(DAY)] if per_day else [])

    def item(name, y, b, c, sc):
        return F.struct(F.lit(name).alias("task"), sc.alias("scope"), y.cast("int").alias("y"),
                        b.cast("double").alias("b"), c.cast("double").alias("c"))

    def arm(prefix, t):
        return F.col(f"{prefix}_{t}").cast("double")

    items = [item(t, F.col(f"y_{t}"), arm("b", t), arm("c", t), sc) for t in tasks for sc in scopes]
    for parent, child in conditional:
        both = (F.col(f"y_{parent}") > 0) & (F.col(f"y_{child}") > 0)
        items += [item(DatasetSpec.joint_task(parent, child), both, arm("b", parent) * arm("b", child),
                       arm("c", parent) * arm("c", child), sc) for sc in scopes]
        among = F.when(F.col(f"y_{parent}") > 0, F.col(f"y_{child}"))
        items += [item(conditional_name(parent, child), among, arm("b", child), arm("c", child), sc)
                  for sc in scopes]
    segs = [f"seg{i}" for i in range(len(segments))]
    extra = [c for c in rows.columns if c == "r" or (c[:1] == "k" and c[1:].isdigit())]
    out = rows.select("u", *segs, *extra, F.explode(F.array(*items)).alias("x")) \
        .select("x.*", "u", *segs, *extra)
    return out.where(F.col("y").isNotNull() & F.col("b").isNotNull() & F.col("c").isNotNull()
                     & ~F.isnan("b") & ~F.isnan("c"))


def conditional_records(records: pd.DataFrame) -> pd.DataFrame:
    """A conditional group's records as task ``child``, segment ``<parent>=1`` (its segment
    ``all``; its per-segment-column rows are dropped: one conditional slice per task)."""
    is_cond = records["task"].str.contains(AMONG, regex=False)
    cond = records[is_cond & (records["segment"] == "all") & (records["metric"] != "plot")].copy()
    split = cond["task"].str.split(AMONG, n=1, regex=False)
    cond["task"], cond["segment"] = split.str[0], split.str[1]
    return pd.concat([records[~is_cond], cond], ignore_index=True)


def compute_records(stacked: DataFrame, segments: list[str], replicates: int, seed: int,
                    alpha: float, ks=()) -> DataFrame:
    def fn(table):
        return group_records_arrow(table, segments, replicates, seed, alpha, ks)

    return stacked.groupBy("task", "scope").applyInArrow(fn, RECORD_SCHEMA)


# --------------------------------------------------------------------------------------------
# Reading


def _versions_days(tb: DatasetTables, version: str, days: list[str]) -> list[str]:
    return [d for d in days if version in tb["predictions"].sub_partitions(d, "model_version")]


def _read_days(spark: SparkSession, source: Table, days: list[str], columns: list[str],
               **more: str) -> DataFrame:
    frames = [source.read(spark, day, columns, **more).withColumn(DAY, F.lit(day).cast("date"))
              for day in days]
    return reduce(DataFrame.unionByName, frames)


def _gate_columns(files_by_arm: dict[str, list[str]], tasks: list[str]) -> list[str]:
    """gate_<task> columns present in every prediction file of both arms."""
    present = None
    for files in files_by_arm.values():
        names = set(read_footers(files)[0].names)
        present = names if present is None else present & names
    return [f"gate_{t}" for t in tasks if f"gate_{t}" in (present or set())]


# --------------------------------------------------------------------------------------------
# The stage


def _paired_records(spark, cfg: JobConfig, spec: DatasetSpec, tb: DatasetTables, paired: DataFrame,
                    baseline: str, candidate: str, start: str, end: str, days: list[str],
                    segments: list[str], arm_days: dict, label_days: dict):
    """Row accounting, refusals, then the per-group statistics of the paired, labelled rows."""
    keys, tasks, user = spec.key_names, spec.task_names, spec.user_column
    pairing = pairing_counts(paired)
    if pairing.paired_rows == 0:
        raise MissingInputError(
            f"baseline {baseline} ({pairing.baseline_rows} rows) and candidate {candidate} "
            f"({pairing.candidate_rows} rows) share no rows in {start}..{end} (joined on "
            f"{', '.join(keys)} and day)", details={"pairing": pairing.__dict__})
    if pairing.labelled_rows == 0:
        raise MissingInputError(
            f"none of the {pairing.paired_rows} rows shared by {baseline} and {candidate} in "
            f"{start}..{end} has labels", details={"pairing": pairing.__dict__})

    request = spec.request_column
    feature_cols = list(dict.fromkeys([c for s in segments for c in slice_columns(s)]
                                      + [c for c in (user, request) if c]))
    features = None
    if feature_cols:
        feature_days = [d for d in days if tb["features"].exists(d)]
        if not feature_days:
            raise MissingInputError(f"no features for {spec.name} in {start}..{end}; compare needs "
                                    f"{feature_cols} from them")
        features = _read_days(spark, tb["features"], feature_days,
                              keys + [c for c in feature_cols if c not in keys])
    rows = labelled_pairs(paired, features, keys, user, segments, request)
    labelled_days = sorted(set(arm_days[baseline]) & set(arm_days[candidate]) & set(label_days))
    per_day = len(labelled_days) > 1
    stacked = stack_tasks(rows, tasks, segments, per_day, spec.conditional_tasks)
    c = cfg.compare
    ks = cfg.evaluation.ranking_ks if request else ()
    records = conditional_records(
        compute_records(stacked, segments, c.replicates, c.seed, c.alpha, ks).toPandas())
    return records, pairing, per_day, labelled_days


def compare_models(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec,
                   baseline: ModelRef | str, candidate: ModelRef | str, start: str, end: str,
                   segments: list[str] | None = None) -> CompareResult:
    """Compare ``candidate`` with ``baseline`` over ``start..end`` (see the module docstring);
    each is any model reference (a version, ``@alias`` in force on ``end``, an artifact
    directory). Writes the ab_reports rows, the HTML report and the summary; raises InputError /
    MissingInputError with one line when there is nothing to compare."""
    refs = {"baseline": ModelRef.parse(baseline, "--baseline"),
            "candidate": ModelRef.parse(candidate, "--candidate")}
    baseline = version_of(cfg, spec.name, end, refs["baseline"])
    candidate = version_of(cfg, spec.name, end, refs["candidate"])
    if baseline == candidate:
        raise InputError(f"--baseline and --candidate are the same version {baseline!r}: "
                         f"nothing to compare")
    days = date_range(start, end)
    tb = DatasetTables(cfg, spec.name, spark)
    tb.preflight(inputs=("predictions", "labels", "features"),
                 outputs=("ab_reports", "policy_values"))
    segments = compare_slices(cfg, spec, segments)
    keys, tasks = spec.key_names, spec.task_names
    arm_days = {v: _versions_days(tb, v, days) for v in (baseline, candidate)}
    for role, v in (("baseline", baseline), ("candidate", candidate)):
        if not arm_days[v]:
            present = sorted({m for d in days
                              for m in tb["predictions"].sub_partitions(d, "model_version")})
            raise MissingInputError(
                f"{role} {v} has no predictions for {spec.name} in {start}..{end} "
                f"(versions with predictions there: {', '.join(present) or 'none'})")
    predictions = tb["predictions"]
    gate_cols = _gate_columns({v: [f for d in arm_days[v]
                                   for f in predictions.files(d, model_version=v)]
                               for v in (baseline, candidate)}, tasks)
    pred_cols = keys + spec.prediction_columns
    base = _read_days(spark, predictions, arm_days[baseline], pred_cols + gate_cols,
                      model_version=baseline)
    cand = _read_days(spark, predictions, arm_days[candidate], pred_cols + gate_cols,
                      model_version=candidate)
    label_days = [d for d in days if tb["labels"].exists(d)]
    if not label_days:
        raise MissingInputError(f"no labels for {spec.name} in {start}..{end}")
    labels = _read_days(spark, tb["labels"], label_days, keys + tasks)

    # the joins run once: the row accounting fills the cache the statistics then read
    paired = pair_arms(base, cand, labels, keys, tasks).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        records, pairing, per_day, labelled_days = _paired_records(
            spark, cfg, spec, tb, paired, baseline, candidate, start, end, days, segments,
            arm_days, label_days)
    finally:
        paired.unpersist()
    c = cfg.compare
    plots = {r["task"]: json.loads(r["payload"]) for r in
             records[(records["metric"] == "plot") & (records["scope"] == "all")].to_dict("records")}
    report = finish_report(records, c.adjustment, c.alpha, c.min_slice_rows, c.min_slice_requests)
    if not per_day and labelled_days:  # a one-day range: its day rows are the pooled rows
        report = pd.concat([report, report.assign(scope=labelled_days[0])], ignore_index=True)
    decision = decide(report, c.decision_metrics, c.guardrail_list(), tasks, c.gate_list())
    shown = spec.reported_tasks
    table = ab_table(report, baseline, candidate, start, end, shown)

    gates = None
    if gate_cols:
        gates = {role: gate_diagnostics(frame, tasks) for role, frame in
                 (("baseline", base), ("candidate", cand))}

    drift = {arm: version_drift(tb["drift"], v, days)
             for arm, v in (("baseline", baseline), ("candidate", candidate))}
    rec, rec_days = recommendation_section(spark, cfg, spec, tb, baseline, candidate, days)
    rec_table = None if rec.empty else ab_table(rec, baseline, candidate, start, end,
                                                [*shown, "all"])
    counterfactual = counterfactual_section(
        spark, cfg, spec, tb, refs, {"baseline": baseline, "candidate": candidate}, start, end,
        days)
    result = CompareResult(spec.name, baseline, candidate, start, end, segments, days, pairing,
                           table, plots, decision, gates, prediction_drift=drift, tasks=shown,
                           versions={arm: describe_model(cfg, spec.name, end, ref)
                                     for arm, ref in refs.items()},
                           counterfactual=counterfactual, recommendations=rec_table,
                           recommendation_days=rec_days)
    with tb.wh.ab_report_lock(spec.name, baseline, candidate, start, end,
                              wait_seconds=cfg.locks.wait_seconds,
                              poll_seconds=cfg.locks.poll_seconds):
        _write(spark, tb, result)
    return result


def ab_table(report: pd.DataFrame, baseline: str, candidate: str, start: str, end: str,
             tasks: list[str] = ()) -> pd.DataFrame:
    """The ab_reports rows: by day (the whole range first), task in the spec's order, segment
    (``all`` first), metric in the registry's order."""
    out = report.copy()
    out["baseline"], out["candidate"] = baseline, candidate
    out["day"] = [None if s == "all" else pd.Timestamp(s).date() for s in out["scope"]]
    out["start"], out["end"] = pd.Timestamp(start).date(), pd.Timestamp(end).date()
    out["n"] = out["n"].astype("int64")
    out = out.assign(_d=out["day"].map(lambda d: "" if d is None else str(d)),
                     _t=out["task"].map({t: i for i, t in enumerate(tasks)}).fillna(len(tasks)),
                     _m=out["metric"].map(metric_registry.rank), _s=out["segment"] != "all")
    out = out.sort_values(["_d", "_t", "_s", "segment", "_m"]).reset_index(drop=True)
    return out[[f.name for f in AB_SCHEMA]]


def _write(spark: SparkSession, tb: DatasetTables, result: CompareResult) -> None:
    args = (result.dataset, result.baseline, result.candidate, result.start, result.end)
    report = report_id(*args[1:])
    with tb["ab_reports"].writing(spark, None, report=report) as staged:
        staged.dir.mkdir(parents=True)
        rows = result.report if result.recommendations is None else pd.concat(
            [result.report, result.recommendations], ignore_index=True)
        pq.write_table(pa.Table.from_pandas(rows, schema=AB_SCHEMA, preserve_index=False),
                       staged.dir / "part-00000.parquet")
    target = tb["ab_reports"].where(None, report=report)
    values = result.counterfactual.table if result.counterfactual is not None else None
    if values is not None and len(values):
        with tb["policy_values"].writing(spark, None, report=report) as staged:
            staged.dir.mkdir(parents=True)
            pq.write_table(pa.Table.from_pandas(values, schema=POLICY_VALUES_SCHEMA,
                                                preserve_index=False),
                           staged.dir / "part-00000.parquet")
        result.outputs["policy_values"] = str(tb["policy_values"].where(None, report=report))
    elif tb["policy_values"].exists(None, report=report):   # a rerun without propensities
        tb["policy_values"].remove(None, report=report)
    docs = tb.wh.ab_report_docs(*args)
    with replacing(docs) as staging:
        staging.mkdir(parents=True)
        (staging / "report.html").write_text(render_html(result))
        (staging / "summary.md").write_text(render_markdown(result))
    result.outputs.update({"ab_reports": str(target), "html": str(docs / "report.html"),
                           "summary": str(docs / "summary.md")})
