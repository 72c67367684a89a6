"""The validation rules of a features partition: ONE declarative list, derived from its spec.

Each :class:`Rule` is ``(rule, column, level)`` plus how to check it. The same list produces
both the Great Expectations suite (:func:`build_suite`) and, for row-level rules, the Spark SQL
condition that names the rules a row breaks in the quarantine ``reason``
(:func:`reason_expression`): the reason of a quarantined row (``rule:column``) and the rule GX
reports as failed are the same object, so they cannot drift apart. Nothing here names a column
by hand: every rule comes from a :class:`DatasetSpec` field.

Levels:

- ``schema`` — required columns present, each with the spec's Spark type (no Spark job: GX
  reads them from the DataFrame's schema);
- ``table``  — row count within bounds, null fraction per feature, OOV fraction of
  ``oov: bucket`` vocabularies. A failure fails the whole partition;
- ``row``    — ``null_key``, ``duplicate_key``, ``out_of_range`` (a dense value outside the
  spec's [min, max], NaN and ±inf included: they are outside every range), ``unknown_category``
  (of an ``oov: quarantine`` vocabulary), ``label_not_binary``. A failure sends rows to
  quarantine;
- ``policy`` — the share of rows breaking any row-level rule is within
  ``validation.max_bad_row_fraction`` (0 when ``on_bad_rows: fail``).

Two rules read columns the validation job derives once, in Spark, before GX runs (so that GX's
metrics stay single-pass aggregates over one cached frame, no window per expectation):
:data:`KEY_COPIES` (rows sharing the row's key, null when a key part is null) and :data:`REASON`
(the row-level rules the row breaks, null when none).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

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



@dataclass(frozen=True)
class RowCountBounds:
    """Bounds of the partition's row count; ``max_rows`` is None without trailing history."""

    min_rows: int
    max_rows: int | None
    median: float | None = None
    trailing: int = 0
    unreadable: tuple[str, ...] = ()  # previous partitions skipped: "ds=D: why"


def key_label(spec: DatasetSpec) -> str:
    """How rules name the key: ``impression_id`` or ``a+b`` for a compound key."""
    return "+".join(spec.key_names)


def vocabulary_values(feature: CategoricalFeature) -> list:
    """The vocabulary as values of the column's type (long columns compare as integers)."""
    if feature.vocabulary is None:
        raise ValueError(f"categorical {feature.name!r} has no vocabulary")
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


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _literal(value: Any) -> str:
    """A Spark SQL literal: strings escaped, floats as DOUBLE (``1.5D``), ints as-is."""
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, float):
        return f"{value!r}D"
    return str(int(value))


@dataclass(frozen=True)
class Rule:
    """One rule: GX checks it (``expectation``); a row-level rule also has the Spark SQL
    ``condition`` that is true for a row breaking it (its quarantine reason is ``reason``)."""

    rule: str
    column: str
    level: str
    expectation: Callable[[dict], Any]   # meta -> a GX expectation
    condition: str | None = None
    meta: tuple = ()

    @property
    def reason(self) -> str:
        return f"{self.rule}:{self.column}"

    def to_expectation(self):
        return self.expectation(_meta(self.rule, self.column, self.level, **dict(self.meta)))


def rules(spec: DatasetSpec, bounds: RowCountBounds, *, with_labels: bool,
          max_bad_row_fraction: float) -> list[Rule]:
    """Every rule of a features partition (joined with its labels when ``with_labels``)."""
    return (schema_rules(spec, with_labels) + table_rules(spec, bounds)
            + row_rules(spec, with_labels) + [policy_rule(max_bad_row_fraction)])


def _typed_columns(spec: DatasetSpec) -> list[tuple[str, str]]:
    return ([(k.name, k.dtype) for k in spec.keys] + [(f.name, f.dtype) for f in spec.features]
            + [(a.name, a.dtype) for a in spec.attributes])


def schema_rules(spec: DatasetSpec, with_labels: bool) -> list[Rule]:
    typed = _typed_columns(spec)
    labels = spec.task_names if with_labels else []
    required = [name for name, _ in typed] + labels
    out = [Rule("missing_column", ",".join(required), "schema",
                lambda meta: gxe.ExpectTableColumnsToMatchSet(
                    column_set=required, exact_match=False, meta=meta,
                    notes=f"every column of the {spec.name} spec is present"))]
    for name, type_ in [(n, SPARK_TYPE[d]) for n, d in typed] + [(t, LABEL_TYPE) for t in labels]:
        out.append(Rule("wrong_type", name, "schema",
                        lambda meta, name=name, type_=type_: gxe.ExpectColumnValuesToBeOfType(
                            column=name, type_=type_, meta=meta)))
    return out


def table_rules(spec: DatasetSpec, bounds: RowCountBounds) -> list[Rule]:
    out = [Rule("row_count", "*", "table",
                lambda meta: gxe.ExpectTableRowCountToBeBetween(
                    min_value=bounds.min_rows, max_value=bounds.max_rows, meta=meta,
                    notes=(f"at least row_count.min_rows={spec.row_count.min_rows}"
                           + ("" if bounds.median is None else
                              f"; within [{spec.row_count.min_ratio_to_median}, "
                              f"{spec.row_count.max_ratio_to_median}] x median "
                              f"{bounds.median:g} of {bounds.trailing} previous partition(s)"))),
                meta=(("median", bounds.median), ("trailing", bounds.trailing)))]
    for feat in spec.features:
        if feat.max_null_fraction < 1.0:
            # an aggregate expectation (no per-expectation query for sample values, unlike a
            # map expectation with ``mostly``); its observed value is the non-null share
            out.append(Rule("null_fraction", feat.name, "table",
                            lambda meta, f=feat: gxe.ExpectColumnProportionOfNonNullValuesToBeBetween(
                                column=f.name, min_value=1.0 - f.max_null_fraction, meta=meta),
                            meta=(("limit", feat.max_null_fraction),)))
    for feat in spec.categorical_features:
        if feat.vocabulary is not None and feat.oov == "bucket":
            out.append(Rule("oov_fraction", feat.name, "table",
                            lambda meta, f=feat: gxe.ExpectColumnValuesToBeInSet(
                                column=f.name, value_set=vocabulary_values(f),
                                mostly=1.0 - f.max_oov_fraction, meta=meta),
                            meta=(("limit", feat.max_oov_fraction),)))
    return out


def row_rules(spec: DatasetSpec, with_labels: bool) -> list[Rule]:
    """The row-level rules, in the order a row's reasons are listed."""
    out = []
    for key in spec.key_names:
        out.append(Rule("null_key", key, "row",
                        lambda meta, k=key: gxe.ExpectColumnValuesToNotBeNull(column=k, meta=meta),
                        condition=f"{_ident(key)} IS NULL"))
    out.append(Rule("duplicate_key", key_label(spec), "row",
                    lambda meta: gxe.ExpectColumnValuesToBeBetween(
                        column=KEY_COPIES, min_value=1, max_value=1, meta=meta,
                        notes=f"key ({key_label(spec)}) unique: {KEY_COPIES} counts the rows "
                              f"sharing a key"),
                    condition=f"{_ident(KEY_COPIES)} > 1"))
    for feat in spec.dense_features:
        lo, hi = dense_bounds(feat)
        col = _ident(feat.name)
        # Spark orders NaN above every number, so NaN (and ±inf) fail ``col <= hi``, as in GX
        out.append(Rule("out_of_range", feat.name, "row",
                        lambda meta, f=feat, lo=lo, hi=hi: gxe.ExpectColumnValuesToBeBetween(
                            column=f.name, min_value=lo, max_value=hi, meta=meta,
                            notes="finite (NaN and ±inf are out) and within the spec's [min, max]"),
                        condition=(f"({col} IS NOT NULL AND NOT ({col} >= {_literal(lo)} "
                                   f"AND {col} <= {_literal(hi)}))")))
    for feat in spec.categorical_features:
        if feat.vocabulary is not None and feat.oov == "quarantine":
            col = _ident(feat.name)
            values = ", ".join(_literal(v) for v in vocabulary_values(feat)) or "NULL"
            out.append(Rule("unknown_category", feat.name, "row",
                            lambda meta, f=feat: gxe.ExpectColumnValuesToBeInSet(
                                column=f.name, value_set=vocabulary_values(f), meta=meta),
                            condition=f"({col} IS NOT NULL AND NOT {col} IN ({values}))"))
    for task in spec.task_names if with_labels else []:
        col = _ident(task)
        out.append(Rule("label_not_binary", task, "row",
                        lambda meta, t=task: gxe.ExpectColumnValuesToBeInSet(
                            column=t, value_set=[0, 1], meta=meta),
                        condition=f"({col} IS NOT NULL AND NOT {col} IN (0, 1))"))
    return out


def policy_rule(max_bad_row_fraction: float) -> Rule:
    return Rule("bad_row_fraction", REASON, "policy",
                lambda meta: gxe.ExpectColumnValuesToBeNull(
                    column=REASON, mostly=1.0 - max_bad_row_fraction, meta=meta,
                    notes=f"{REASON} lists the row-level rules a row breaks; such rows are "
                          f"quarantined"),
                meta=(("limit", max_bad_row_fraction),))


def reason_expression(spec: DatasetSpec, with_labels: bool) -> str:
    """Spark SQL for ``_reason``: the reasons of the row-level rules a row breaks, ``;``-joined,
    NULL when none. SQL text, so that the whole column is one expression built in one JVM call."""
    reasons = ", ".join(f"IF({r.condition}, {_literal(r.reason)}, NULL)"
                        for r in row_rules(spec, with_labels))
    return f"NULLIF(concat_ws(';', {reasons}), '')"


def labels_rules(spec: DatasetSpec) -> list[Rule]:
    """The rules of a labels partition, checked on the labels table itself (its own GX batch):
    the key and task columns present with their types, every label in {0, 1}. Their reasons
    (``label_not_binary:<task>``) still reach the quarantine: the keys of bad-label rows are
    joined back onto the features (see ``jobs.validate.stage``)."""
    required = spec.key_names + spec.task_names
    typed = [(k.name, SPARK_TYPE[k.dtype]) for k in spec.keys] + \
        [(t, LABEL_TYPE) for t in spec.task_names]
    out = [Rule("missing_column", ",".join(required), "schema",
                lambda meta: gxe.ExpectTableColumnsToMatchSet(
                    column_set=required, exact_match=False, meta=meta,
                    notes=f"the keys and every task of the {spec.name} spec are present"))]
    for name, type_ in typed:
        out.append(Rule("wrong_type", name, "schema",
                        lambda meta, name=name, type_=type_: gxe.ExpectColumnValuesToBeOfType(
                            column=name, type_=type_, meta=meta)))
    return out + [r for r in row_rules(spec, with_labels=True) if r.rule == "label_not_binary"]


def build_labels_suite(spec: DatasetSpec, name: str | None = None) -> gx.ExpectationSuite:
    """The GX suite of one labels partition: one expectation per :func:`labels_rules` entry."""
    return gx.ExpectationSuite(
        name=name or f"{spec.name}.labels",
        expectations=[r.to_expectation() for r in labels_rules(spec)],
        meta={"dataset": spec.name, "derived_from": "schemas/specs/" + spec.name + ".yaml"})


def bad_label_condition(spec: DatasetSpec) -> str:
    """Spark SQL: true for a labels row with any label outside {0, 1}."""
    return " OR ".join(f"({r.condition})" for r in row_rules(spec, with_labels=True)
                       if r.rule == "label_not_binary")


def build_suite(spec: DatasetSpec, bounds: RowCountBounds, *, with_labels: bool,
                max_bad_row_fraction: float, name: str | None = None) -> gx.ExpectationSuite:
    """The GX suite of one features partition: one expectation per :func:`rules` entry."""
    return gx.ExpectationSuite(
        name=name or f"{spec.name}.features",
        expectations=[r.to_expectation() for r in rules(
            spec, bounds, with_labels=with_labels, max_bad_row_fraction=max_bad_row_fraction)],
        meta={"dataset": spec.name, "derived_from": "schemas/specs/" + spec.name + ".yaml"})
