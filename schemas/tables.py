"""Table schemas derived from a :class:`DatasetSpec`: Spark ``StructType`` and Arrow schemas of the
features, labels, predictions, quarantine and metrics tables. The ``ds`` (and ``model_version``)
partition columns live in the directory names, not in these schemas."""

from __future__ import annotations

import pyarrow as pa
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from schemas.spec import DatasetSpec

_SPARK = {"long": T.LongType(), "string": T.StringType(), "double": T.DoubleType()}


def _typed_feature_columns(spec: DatasetSpec) -> list[tuple[str, str]]:
    cols = [(k.name, k.dtype) for k in spec.keys]
    cols += [(f.name, f.dtype) for f in spec.features]
    cols += [(a.name, a.dtype) for a in spec.attributes]
    return cols


def features_struct(spec: DatasetSpec) -> T.StructType:
    """Keys (non-null), features and attributes, in spec order."""
    keys = set(spec.key_names)
    return T.StructType([T.StructField(n, _SPARK[d], nullable=n not in keys)
                         for n, d in _typed_feature_columns(spec)])


def labels_struct(spec: DatasetSpec) -> T.StructType:
    """Keys + one 0/1 integer column per task."""
    fields = [T.StructField(k.name, _SPARK[k.dtype], nullable=False) for k in spec.keys]
    fields += [T.StructField(t, T.IntegerType(), nullable=False) for t in spec.task_names]
    return T.StructType(fields)


SCORED_AT = "scored_at"  # the predictions' scoring time (one value per run)


def predictions_struct(spec: DatasetSpec, with_gates: bool = False) -> T.StructType:
    """Keys + ``p_<task>`` doubles + ``scored_at`` (+ per-task gate weight arrays)."""
    fields = [T.StructField(k.name, _SPARK[k.dtype], nullable=False) for k in spec.keys]
    fields += [T.StructField(c, T.DoubleType(), nullable=False) for c in spec.prediction_columns]
    fields.append(T.StructField(SCORED_AT, T.TimestampType(), nullable=False))
    if with_gates:
        fields += [T.StructField(f"gate_{t}", T.ArrayType(T.FloatType()), nullable=True)
                   for t in spec.task_names]
    return T.StructType(fields)


def quarantine_struct(spec: DatasetSpec) -> T.StructType:
    """The rejected feature rows as they were read (a null key is a reason to be here, so keys
    are nullable), plus ``reason``."""
    fields = [T.StructField(f.name, f.dataType, nullable=True) for f in features_struct(spec).fields]
    return T.StructType(fields + [T.StructField("reason", T.StringType())])


METRICS_STRUCT = T.StructType([
    T.StructField("model_version", T.StringType(), nullable=False),
    T.StructField("task", T.StringType(), nullable=False),
    T.StructField("segment", T.StringType(), nullable=False),
    T.StructField("metric", T.StringType(), nullable=False),
    T.StructField("value", T.DoubleType(), nullable=True),
    T.StructField("n", T.LongType(), nullable=False),
])


def features_arrow_schema(spec: DatasetSpec) -> pa.Schema:
    """:func:`features_struct` as Arrow (the writers that bypass Spark use it)."""
    return to_arrow_schema(features_struct(spec))


def labels_arrow_schema(spec: DatasetSpec) -> pa.Schema:
    return to_arrow_schema(labels_struct(spec))


_DDL_ARROW = {"string": pa.string(), "byte": pa.int8(), "int": pa.int32(), "long": pa.int64(),
              "double": pa.float64(), "binary": pa.binary()}


def ddl_arrow_schema(ddl: str) -> pa.Schema:
    """The Arrow schema of a flat Spark DDL string (``"a string, n long, x double"``): the
    schemas ``applyInArrow`` / ``mapInArrow`` functions return."""
    return pa.schema([pa.field(name, _DDL_ARROW[kind])
                      for name, kind in (part.split() for part in ddl.split(","))])
