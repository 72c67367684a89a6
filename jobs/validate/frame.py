"""The frame GX validates and what is written from it: the partition read with its footers'
schema, schema problems, ``_key_copies`` / ``_reason`` (:func:`prepare_frame`), the bad-label
keys joined back, and the quarantine partition (rows + ``reason``) with its per-rule counts."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.core.tables import Table, arrow_to_spark
from jobs.validate.decision import rule_results
from jobs.validate.rules import (
    KEY_COPIES,
    LABEL_TYPE,
    REASON,
    SPARK_TYPE,
    _ident,
    bad_label_condition,
    reason_expression,
)
from schemas.spec import DatasetSpec


def read_partition(spark: SparkSession, source: Table, ds: str, schema: pa.Schema) -> DataFrame:
    """Read a partition with the schema its footers declare (no schema-inference job); fall back
    to Spark's own inference for types pyspark cannot map from arrow."""
    return source.read(spark, ds, schema=arrow_to_spark(schema))


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


def bad_label_keys(spec: DatasetSpec, labels: DataFrame, labels_result) -> DataFrame | None:
    """The keys whose labels break ``label_not_binary`` (one row per key, each task folded to
    an out-of-{0,1} value when the key has one), or None when the labels batch found none (no
    Spark job then). Few keys are collected and broadcast back; many stay a DataFrame."""
    if all(r.success and not r.unexpected_count for r in rule_results(labels_result)
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


def write_quarantine(frame: DataFrame, spec: DatasetSpec, quarantine_dir: Path) -> None:
    """The rows as read (spec columns) + ``reason``, written to ``quarantine_dir`` (a staging
    directory of :func:`jobs.core.warehouse.replacing`)."""
    bad = frame.filter(F.col(REASON).isNotNull()).select(
        *spec.features_table_columns, F.col(REASON).alias("reason"))
    bad.coalesce(1).write.mode("overwrite").parquet(str(quarantine_dir))


def reason_counts(quarantine: Table, ds: str) -> tuple[int, dict[str, int]]:
    """Rows written to quarantine, and rows per single rule (``rule:column``; a row breaking
    several rules counts under each), read from the files with pyarrow (no Spark job)."""
    table = quarantine.read_arrow(ds, columns=["reason"])
    counts: dict[str, int] = {}
    for item in table.column("reason").value_counts().to_pylist():
        for reason in str(item["values"]).split(";"):
            counts[reason] = counts.get(reason, 0) + int(item["counts"])
    return table.num_rows, dict(sorted(counts.items()))
