"""Evaluate stage: predictions x labels (x features for segments / users) of a ds -> the metrics
table ``<wh>/<dataset>/metrics/ds=D/`` (model_version, task, segment, metric, value, n).

Read (partitions and footer counts through jobs/core/warehouse.py) → transform
(:func:`jobs.evaluate.metrics.compute_metrics`) → write (:func:`jobs.core.warehouse.replacing`): the
new content (the evaluated versions' rows plus, when only some versions are evaluated, the rows
of the other versions already there) is staged, then swapped in. Spark never reads and
overwrites the same files in one plan, and a rerun never duplicates rows.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.core import metric_registry
from jobs.core.config import JobConfig
from jobs.core.errors import MissingInputError
from jobs.core.manifest import RunRecord
from jobs.core.modelref import ModelRef
from jobs.core.registry import version_of
from jobs.core.slices import segment_columns
from jobs.core.tables import DatasetTables, Table
from jobs.core.warehouse import (
    parse_date,
    spark_paths,
)
from jobs.evaluate.gates import gate_metric_rows, gate_sizes
from jobs.evaluate.metrics import compute_metrics
from jobs.evaluate.ranking import ranking_metrics
from jobs.evaluate.recommendations import SEGMENT as RECOMMENDATIONS
from jobs.evaluate.recommendations import recommendation_metrics
from schemas.spec import DatasetSpec
from schemas.tables import METRICS_STRUCT


def available_versions(tb: DatasetTables, ds: str) -> list[str]:
    """The model versions that have predictions for ``ds``."""
    return tb["predictions"].sub_partitions(ds, "model_version")


def _select_versions(cfg: JobConfig, tb: DatasetTables, spec: DatasetSpec, ds: str,
                     requested: "list[ModelRef | str] | None") -> list[str]:
    """The versions to evaluate: those requested (any model reference, resolved on ``ds``), or
    every version with predictions on ``ds``."""
    root = tb["predictions"].where(ds)
    present = available_versions(tb, ds)
    if requested:
        versions = list(dict.fromkeys(
            version_of(cfg, spec.name, ds, ModelRef.parse(v, "--model-version")) for v in requested))
        missing = [v for v in versions if v not in present]
        if missing:
            raise MissingInputError(
                f"no predictions for model_version {', '.join(missing)} on ds={ds} under {root} "
                f"(present: {', '.join(present) or 'none'})")
        return versions
    if not present:
        raise MissingInputError(f"no predictions for ds={ds}: {root} has no model_version=V partition")
    return present


def evaluate_recommendations(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, ds: str,
                             model_versions: "list[ModelRef | str] | None" = None) -> EvaluateResult:
    """``mmoe evaluate --recommendations``: the recommendations written for ``ds`` (by the
    requested versions, default every version that wrote some) evaluated
    (``jobs.evaluate.recommendations``), into the metrics partition of ``ds`` as segment
    ``recommendations``; the partition's other rows are kept."""
    tb = DatasetTables(cfg, spec.name, spark)
    tb.preflight(outputs=("metrics",), columns={"metrics": METRICS_STRUCT.names})
    ds = parse_date(ds, "ds").isoformat()
    present = tb["recommendations"].sub_partitions(ds, "model_version")
    versions = (list(dict.fromkeys(version_of(cfg, spec.name, ds, ModelRef.parse(v, "--model-version"))
                                   for v in model_versions)) if model_versions else present)
    if not versions:
        raise MissingInputError(f"no recommendations for {spec.name} ds={ds} "
                                f"({tb['recommendations'].where(ds)}); write them with "
                                f"mmoe score --catalog")
    rows, read, details = recommendation_metrics(spark, cfg, spec, ds, versions)
    target = tb["metrics"]
    with tb.wh.lock(spec.name, "metrics", ds, wait_seconds=cfg.locks.wait_seconds,
                    poll_seconds=cfg.locks.poll_seconds):
        written, kept = _replace_partition(spark, target, ds,
                                           spark.createDataFrame(rows, METRICS_STRUCT), versions,
                                           recommendations=True)
    figures: dict[str, dict[str, float]] = {v: {} for v in versions}
    for r in rows:  # version -> "task/metric" -> value (the demo's table reads it)
        figures[r["model_version"]][f"{r['task']}/{r['metric']}"] = r["value"]
    return EvaluateResult(
        versions=versions, input_rows=read, output_rows=written,
        output=target.where(ds), metrics=target.read(spark, ds),
        details={**details, "segment": RECOMMENDATIONS, "kept_rows": kept,
                 "recommendations": figures})


def _labels_missing(spec: DatasetSpec, ds: str, path: Path, wait_days: int) -> MissingInputError:
    deadline = parse_date(ds, "ds") + dt.timedelta(days=wait_days)
    today = dt.date.today()  # only to tell whether the deadline has passed
    state = ("the deadline has passed, so they are late" if today > deadline
             else f"the deadline has not passed yet (today is {today.isoformat()})")
    return MissingInputError(
        f"labels for {spec.name} ds={ds} are missing ({path}); they are expected by "
        f"{deadline.isoformat()} (ds + evaluation.label_wait_days={wait_days}): {state}")


@dataclass
class EvaluateResult:
    versions: list[str]
    input_rows: int          # prediction rows read (all evaluated versions)
    output_rows: int         # metric rows written for the evaluated versions
    output: str              # the partition's directory, or catalog table (partition)
    metrics: DataFrame       # the partition as written, every version in it
    details: dict[str, Any] = field(default_factory=dict)

    def record(self) -> RunRecord:
        return RunRecord(input_rows=self.input_rows, output_rows=self.output_rows,
                         model_version=",".join(self.versions),
                         outputs={"metrics": str(self.output)}, details=dict(self.details))


def evaluate_partition(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, ds: str,
                       model_versions: list[str] | None = None) -> EvaluateResult:
    """Compute and write the metrics of ``ds`` for the requested (default: all) model versions;
    the result's ``metrics`` is the partition as written (all versions in it)."""
    tb = DatasetTables(cfg, spec.name, spark)
    tb.preflight(inputs=("predictions", "labels", "features"), outputs=("metrics",),
                 columns={"metrics": METRICS_STRUCT.names})
    predictions_t = tb["predictions"]
    ds = parse_date(ds, "ds").isoformat()
    versions = _select_versions(cfg, tb, spec, ds, model_versions)
    segments = segment_columns(cfg, spec)
    user, request = spec.user_column, spec.request_column
    keys, tasks = spec.key_names, spec.task_names

    labels_t, features_t = tb["labels"], tb["features"]
    if not labels_t.exists(ds):
        raise _labels_missing(spec, ds, labels_t.where(ds), cfg.evaluation.label_wait_days)
    feature_columns = list(dict.fromkeys(segments + [c for c in (user, request) if c]))
    if feature_columns and not features_t.exists(ds):
        raise MissingInputError(f"features for {spec.name} ds={ds} are missing "
                                f"({features_t.where(ds)}); "
                                f"evaluation needs {feature_columns} from them")

    # gate_<task> arrays (predictions scored --with-gates) feed gate_entropy / gate_max_share
    gate_cols = {v: [c for c in (f"gate_{t}" for t in tasks)
                     if c in predictions_t.schema(ds, model_version=v).names] for v in versions}
    all_gates = sorted({c for cols in gate_cols.values() for c in cols})
    frames = [predictions_t.read(spark, ds, keys + spec.prediction_columns + gate_cols[v],
                                 model_version=v)
              .select(*keys, *spec.prediction_columns,
                      *(F.col(c) if c in gate_cols[v] else F.lit(None).cast("array<float>").alias(c)
                        for c in all_gates))
              .withColumn("model_version", F.lit(v))
              for v in versions]
    predictions = reduce(DataFrame.unionByName, frames)
    # Row counts from the parquet footers: no Spark pass over the largest input just to count it.
    read_rows = {v: predictions_t.count(ds, model_version=v)
                 for v in versions}

    scored = predictions.join(labels_t.read(spark, ds, keys + tasks), keys, "inner")
    if feature_columns:
        features = features_t.read(spark, ds, keys + [c for c in feature_columns if c not in keys])
        scored = scored.join(features, keys, "inner")
    scored = scored.persist(StorageLevel.MEMORY_AND_DISK)  # read by each metric family below
    try:
        return _evaluate_scored(spark, cfg, spec, tb, ds, versions, segments, scored,
                                predictions, read_rows, all_gates)
    finally:
        scored.unpersist()


def _evaluate_scored(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, tb: DatasetTables,
                     ds: str, versions: list[str], segments: list[str], scored: DataFrame,
                     predictions: DataFrame, read_rows: dict[str, int],
                     all_gates: list[str]) -> EvaluateResult:
    """The metrics of the joined, persisted rows, written under the partition lock."""
    tasks, user, wh = spec.task_names, spec.user_column, tb.wh
    metrics = task_metrics(scored, spec, segments, cfg.evaluation.ranking_ks)
    if all_gates:
        gate_rows = gate_metric_rows(predictions, tasks, gate_sizes(predictions, tasks))
        if gate_rows is not None:
            metrics = metrics.unionByName(gate_rows.select(
                *(F.col(f.name).cast(f.dataType) for f in METRICS_STRUCT.fields)))

    target = tb["metrics"]
    # The lock covers reading the other versions' rows too: two evaluations of one ds (for
    # different versions) must not each keep what the other is about to replace.
    with wh.lock(spec.name, "metrics", ds, wait_seconds=cfg.locks.wait_seconds,
                 poll_seconds=cfg.locks.poll_seconds):
        rows_written, kept = _replace_partition(spark, target, ds, metrics, versions)

    shown = metric_registry.names("size", "quality")
    summary = (target.read(spark, ds)
               .where(F.col("model_version").isin(versions) & (F.col("segment") == "all")
                      & F.col("metric").isin(*shown))
               .collect())
    pooled: dict[str, dict[str, dict[str, float]]] = {v: {t: {} for t in tasks} for v in versions}
    for r in summary:
        pooled[r["model_version"]].setdefault(r["task"], {})[r["metric"]] = r["value"]
    auc = {v: {t: m["auc"] for t, m in by_task.items() if "auc" in m}
           for v, by_task in pooled.items()}
    matched = {v: max([int(m.get("count", 0)) for m in by_task.values()] or [0])
               for v, by_task in pooled.items()}
    return EvaluateResult(
        versions=versions, input_rows=int(sum(read_rows.values())), output_rows=rows_written,
        output=target.where(ds), metrics=target.read(spark, ds), details={
            "auc": auc,                    # model_version -> task -> AUC over segment 'all'
            # model_version -> task -> metric -> value, segment 'all', the size and quality
            # metrics in the registry's order (what the summary table shows)
            "pooled": {v: {t: {m: by_task[t][m] for m in shown if m in by_task[t]}
                           for t in by_task} for v, by_task in pooled.items()},
            "segments": segments,
            "user_column": user,
            "ranking": ranking_note(spec, cfg.evaluation.ranking_ks),
            "joint_tasks": spec.reported_tasks[len(tasks):],
            "matched_rows": matched,
            "unmatched_prediction_rows": {v: int(read_rows.get(v, 0)) - matched[v]
                                          for v in versions},
            "kept_rows_of_other_versions": kept,
        })


def with_joint_tasks(scored: DataFrame, spec: DatasetSpec) -> tuple[DataFrame, list[str]]:
    """Every task plus, for each conditional (parent, child) of the spec, the joint task
    ``<parent>_and_<child>``: label both happened, score ``p_parent * p_child``."""
    for parent, child in spec.conditional_tasks:
        name = spec.joint_task(parent, child)
        label = F.when(F.col(parent).isNull() | F.col(child).isNull(), F.lit(None)) \
            .otherwise(((F.col(parent) > 0) & (F.col(child) > 0)).cast("int"))
        scored = scored.withColumn(name, label).withColumn(
            f"p_{name}", F.col(f"p_{parent}").cast("double") * F.col(f"p_{child}").cast("double"))
    return scored, spec.reported_tasks


def task_metrics(scored: DataFrame, spec: DatasetSpec, segments: list[str],
                 ks: list[int]) -> DataFrame:
    """The pointwise metrics (``compute_metrics``) and, when the spec names a request column,
    the per-request ranking metrics of every task and joint task over every segment; plus, for
    each conditional task, both families over the parent's positives as segment
    ``<parent>=1``."""
    user, request, keys = spec.user_column, spec.request_column, spec.key_names
    extended, tasks = with_joint_tasks(scored, spec)

    def families(frame: DataFrame, which: list[str], segs: list[str]) -> DataFrame:
        out = compute_metrics(frame, which, segs, user)
        if request is not None:
            out = out.unionByName(ranking_metrics(frame, which, segs, request, keys, ks))
        return out

    metrics = families(extended, tasks, segments)
    for parent, child in spec.conditional_tasks:
        among = families(extended.where(F.col(parent) > 0), [child], [])
        metrics = metrics.unionByName(among.withColumn("segment", F.lit(f"{parent}=1")))
    return metrics


def ranking_note(spec: DatasetSpec, ks: list[int]) -> str:
    if spec.request_column is None:
        return (f"none: the {spec.name} spec names no request_column, so there is no list per "
                f"request to rank (pointwise metrics only)")
    return f"per request ({spec.request_column}), K = {', '.join(map(str, ks))}"


def _replace_partition(spark: SparkSession, target: Table, ds: str, metrics: DataFrame,
                       versions: list[str], recommendations: bool = False) -> tuple[int, int]:
    """Write ``metrics`` plus the rows already in ``target`` that it does not replace (other
    versions, and the evaluated versions' other family: segment ``recommendations`` rows for
    a prediction evaluation, the rest for a recommendations one) to a staging directory, then
    swap it in. Returns (rows written for the evaluated versions and family, rows kept)."""
    family = F.col("segment") == RECOMMENDATIONS
    mine = F.col("model_version").isin(versions) & (family if recommendations else ~family)
    # Always a union with a frame in METRICS_STRUCT's order, every field nullable (as Spark
    # reads any parquet file back): empty on the first run, the other versions' rows on a
    # rerun. So the written schema (column order, nullability) is the same on both.
    others = spark.createDataFrame([], T.StructType(
        [T.StructField(f.name, f.dataType, nullable=True) for f in METRICS_STRUCT]))
    if target.exists(ds):
        others = (target.read(spark, ds, METRICS_STRUCT.fieldNames(), schema=METRICS_STRUCT)
                  .where(~mine))
    content = others.unionByName(metrics)
    with target.writing(spark, ds) as staged:
        content.repartition(1).write.mode("overwrite").parquet(str(staged.dir))
        written = spark.read.schema(METRICS_STRUCT).parquet(*spark_paths(staged.dir))
        counts = {r["mine"]: r["count"] for r in written.groupBy(
            mine.alias("mine")).count().collect()}
        if not counts.get(True) and not recommendations:
            raise MissingInputError(
                f"no prediction row of model_version {', '.join(versions)} on ds={ds} "
                f"matched a label row (inner join on the keys): nothing to evaluate")
    return int(counts.get(True, 0)), int(counts.get(False, 0))
