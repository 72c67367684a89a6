"""The Great Expectations suite of a features partition, derived from its dataset spec.

Nothing here names a column by hand: every expectation comes from a :class:`DatasetSpec` field.
Each expectation carries ``meta`` = ``{"rule", "column", "level"}``, which the validation job
uses to decide and to word its one-line messages:

- ``schema`` — required columns present, each with the spec's Spark type (no Spark job: GX
  reads them from the DataFrame's schema);
- ``table``  — row count within bounds, null fraction per feature, OOV fraction of
  ``oov: bucket`` vocabularies. A failure fails the whole partition;
- ``row``    — null key, duplicate key, dense value not finite or outside [min, max], unknown
  category of an ``oov: quarantine`` vocabulary, label not in {0, 1}. A failure means some
  rows go to quarantine;
- ``policy`` — the share of rows breaking any row-level rule is within
  ``validation.max_bad_row_fraction`` (0 when ``on_bad_rows: fail``).

Two expectations read columns the validation job derives once, in Spark, before GX runs (so
that GX's metrics stay single-pass aggregates over one cached frame, no window per expectation):
:data:`KEY_COPIES` (rows sharing the row's key, null when a key part is null) and
:data:`REASON` (the row-level rules the row breaks, null when none).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import great_expectations as gx
import great_expectations.expectations as gxe

from schemas.spec import CategoricalFeature, DatasetSpec, DenseFeature

KEY_COPIES = "_key_copies"
REASON = "_reason"

# Spark type class names (pyspark.sql.types) GX's ExpectColumnValuesToBeOfType compares against.
SPARK_TYPE = {"long": "LongType", "double": "DoubleType", "string": "StringType"}
LABEL_TYPE = "IntegerType"
# Bounds that make "between" mean "finite" where the spec leaves a side open.
FINITE_MIN, FINITE_MAX = -sys.float_info.max, sys.float_info.max

LEVELS = ("schema", "table", "row", "policy")


@dataclass(frozen=True)
class RowCountBounds:
    """Bounds of the partition's row count; ``max_rows`` is None without trailing history."""

    min_rows: int
    max_rows: int | None
    median: float | None = None
    trailing: int = 0


def key_label(spec: DatasetSpec) -> str:
    """How rules name the key: ``impression_id`` or ``a+b`` for a compound key."""
    return "+".join(spec.key_names)


def vocabulary_values(feature: CategoricalFeature) -> list:
    """The vocabulary as values of the column's type (long columns compare as integers)."""
    assert feature.vocabulary is not None
    if feature.dtype == "long":
        return [int(v) for v in feature.vocabulary if _is_int(v)]
    return list(feature.vocabulary)


def dense_bounds(feature: DenseFeature) -> tuple[float, float]:
    """[min, max] of a dense feature; an open side becomes the largest finite double, so NaN and
    ±inf are always out (Spark orders NaN above every number)."""
    lo = FINITE_MIN if feature.min is None else float(feature.min)
    hi = FINITE_MAX if feature.max is None else float(feature.max)
    return lo, hi


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def _meta(rule: str, column: str, level: str, **more) -> dict:
    return {"rule": rule, "column": column, "level": level, **more}


def build_suite(spec: DatasetSpec, bounds: RowCountBounds, *, with_labels: bool,
                max_bad_row_fraction: float, name: str | None = None) -> gx.ExpectationSuite:
    """The suite for one features partition (joined with its labels when ``with_labels``)."""
    return gx.ExpectationSuite(
        name=name or f"{spec.name}.features",
        expectations=expectations(spec, bounds, with_labels=with_labels,
                                  max_bad_row_fraction=max_bad_row_fraction),
        meta={"dataset": spec.name, "derived_from": "schemas/specs/" + spec.name + ".yaml"})


def expectations(spec: DatasetSpec, bounds: RowCountBounds, *, with_labels: bool,
                 max_bad_row_fraction: float) -> list:
    out: list = []
    typed = [(k.name, k.dtype) for k in spec.keys]
    typed += [(f.name, f.dtype) for f in spec.features]
    typed += [(a.name, a.dtype) for a in spec.attributes]
    labels = spec.task_names if with_labels else []

    # -- schema
    required = [name for name, _ in typed] + labels
    out.append(gxe.ExpectTableColumnsToMatchSet(
        column_set=required, exact_match=False,
        meta=_meta("missing_column", ",".join(required), "schema"),
        notes=f"every column of the {spec.name} spec is present"))
    for name, dtype in typed:
        out.append(gxe.ExpectColumnValuesToBeOfType(
            column=name, type_=SPARK_TYPE[dtype], meta=_meta("wrong_type", name, "schema")))
    for task in labels:
        out.append(gxe.ExpectColumnValuesToBeOfType(
            column=task, type_=LABEL_TYPE, meta=_meta("wrong_type", task, "schema")))

    # -- table
    out.append(gxe.ExpectTableRowCountToBeBetween(
        min_value=bounds.min_rows, max_value=bounds.max_rows,
        meta=_meta("row_count", "*", "table", median=bounds.median, trailing=bounds.trailing),
        notes=(f"at least row_count.min_rows={spec.row_count.min_rows}"
               + ("" if bounds.median is None else
                  f"; within [{spec.row_count.min_ratio_to_median}, "
                  f"{spec.row_count.max_ratio_to_median}] x median {bounds.median:g} "
                  f"of {bounds.trailing} previous partition(s)"))))
    for feat in spec.features:
        if feat.max_null_fraction < 1.0:
            # an aggregate expectation (no per-expectation query for sample values, unlike a
            # map expectation with ``mostly``); its observed value is the non-null share
            out.append(gxe.ExpectColumnProportionOfNonNullValuesToBeBetween(
                column=feat.name, min_value=1.0 - feat.max_null_fraction,
                meta=_meta("null_fraction", feat.name, "table", limit=feat.max_null_fraction)))
    for feat in spec.categorical_features:
        if feat.vocabulary is not None and feat.oov == "bucket":
            out.append(gxe.ExpectColumnValuesToBeInSet(
                column=feat.name, value_set=vocabulary_values(feat),
                mostly=1.0 - feat.max_oov_fraction,
                meta=_meta("oov_fraction", feat.name, "table", limit=feat.max_oov_fraction)))

    # -- row
    for key in spec.key_names:
        out.append(gxe.ExpectColumnValuesToNotBeNull(
            column=key, meta=_meta("null_key", key, "row")))
    out.append(gxe.ExpectColumnValuesToBeBetween(
        column=KEY_COPIES, min_value=1, max_value=1,
        meta=_meta("duplicate_key", key_label(spec), "row"),
        notes=f"key ({key_label(spec)}) unique: {KEY_COPIES} counts the rows sharing a key"))
    for feat in spec.dense_features:
        lo, hi = dense_bounds(feat)
        out.append(gxe.ExpectColumnValuesToBeBetween(
            column=feat.name, min_value=lo, max_value=hi,
            meta=_meta("out_of_range", feat.name, "row"),
            notes="finite (NaN and ±inf are out) and within the spec's [min, max]"))
    for feat in spec.categorical_features:
        if feat.vocabulary is not None and feat.oov == "quarantine":
            out.append(gxe.ExpectColumnValuesToBeInSet(
                column=feat.name, value_set=vocabulary_values(feat),
                meta=_meta("unknown_category", feat.name, "row")))
    for task in labels:
        out.append(gxe.ExpectColumnValuesToBeInSet(
            column=task, value_set=[0, 1], meta=_meta("label_not_binary", task, "row")))

    # -- policy
    out.append(gxe.ExpectColumnValuesToBeNull(
        column=REASON, mostly=1.0 - max_bad_row_fraction,
        meta=_meta("bad_row_fraction", REASON, "policy", limit=max_bad_row_fraction),
        notes=f"{REASON} lists the row-level rules a row breaks; such rows are quarantined"))
    return out
