"""Dataset specs: loading, validation errors, and the schemas derived from them."""

from __future__ import annotations

import copy

import pyarrow as pa
import pytest
import yaml
from pyspark.sql import types as T

from schemas import SpecError, available_specs, load_spec, parse_spec
from schemas.spec import SPEC_DIR
from schemas.tables import (
    features_arrow_schema,
    features_struct,
    labels_arrow_schema,
    labels_struct,
    predictions_struct,
    quarantine_struct,
)


def test_shipped_specs_load():
    assert set(available_specs()) >= {"census-group1", "census-group2", "synth"}
    for name in available_specs():
        spec = load_spec(name)
        assert spec.name == name
        assert len(spec.tasks) >= 2


def test_census_groups_never_use_labels_or_weights_as_features():
    g1, g2 = load_spec("census-group1"), load_spec("census-group2")
    assert g1.task_names == ["income", "never_married"]
    assert g2.task_names == ["education", "never_married"]
    for spec in (g1, g2):
        feats = set(spec.feature_names)
        assert not feats & {"instance_weight", "marital_stat", "income_50k"}
        assert not feats & {"det_hh_fam_stat", "det_hh_summ"}  # leak marital status
        assert "instance_weight" in [a.name for a in spec.attributes]
    assert "education" in g1.feature_names and "education" not in g2.feature_names


def test_synth_has_three_tasks_and_segments():
    spec = load_spec("synth")
    assert len(spec.tasks) >= 3
    assert spec.user_column == "user_id"
    assert set(spec.segments) <= set(spec.features_table_columns)


@pytest.mark.parametrize("name", ["census-group1", "synth"])
def test_spark_and_arrow_schemas_agree_with_the_spec(spark, name, tmp_path):
    spec = load_spec(name)
    struct = features_struct(spec)
    assert struct.fieldNames() == spec.features_table_columns
    for key in spec.key_names:
        assert not struct[key].nullable
    for feat in spec.dense_features:
        assert struct[feat.name].dataType == T.DoubleType()
    # Arrow schema written by pyarrow reads back in Spark as exactly the Spark schema.
    arrow = features_arrow_schema(spec)
    assert arrow.names == struct.fieldNames()
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([], schema=arrow), tmp_path / "f.parquet")
    read_back = spark.read.parquet(str(tmp_path))
    assert [(f.name, f.dataType) for f in read_back.schema] == [(f.name, f.dataType) for f in struct]
    labels = labels_struct(spec)
    assert labels.fieldNames() == spec.key_names + spec.task_names
    assert all(labels[t].dataType == T.IntegerType() for t in spec.task_names)
    assert labels_arrow_schema(spec).names == labels.fieldNames()
    preds = predictions_struct(spec)
    assert preds.fieldNames() == spec.key_names + [f"p_{t}" for t in spec.task_names] + ["scored_at"]
    assert quarantine_struct(spec).fieldNames()[-1] == "reason"


def test_categorical_cardinality_reserves_index_zero():
    spec = load_spec("synth")
    platform = spec.column("platform")
    assert platform.cardinality == len(platform.vocabulary) + 1
    assert spec.column("user_id").cardinality == spec.column("user_id").hash_buckets


def _synth_raw() -> dict:
    return yaml.safe_load((SPEC_DIR / "synth.yaml").read_text())


def _mutate(path: list, value):
    raw = _synth_raw()
    node = raw
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return raw


@pytest.mark.parametrize("raw, message", [
    (_mutate(["features", 0, "kind"], "sparse"), "kind must be 'dense' or 'categorical'"),
    (_mutate(["features", 6, "min"], 5e5), "min 500000.0 > max"),
    (_mutate(["features", 2, "hash_buckets"], 10), "exactly one of vocabulary, hash_buckets"),
    (_mutate(["features", 3, "vocabulary"], ["ios", "ios"]), "duplicate vocabulary"),
    (_mutate(["features", 1, "name"], "user_id"), "defined twice"),
    (_mutate(["segments"], ["nope"]), "segment column 'nope'"),
    (_mutate(["features", 1, "name"], "ds"), "reserved"),
    (_mutate(["features", 1, "name"], "Item-ID"), "snake_case"),
    (_mutate(["tasks"], []), "at least one task"),
    (_mutate(["features", 6, "max_null_fraction"], 1.5), "within [0, 1]"),
    (_mutate(["features", 6, "colour"], "red"), "unknown field(s) ['colour']"),
    (_mutate(["user_column"], "nobody"), "user_column 'nobody'"),
])
def test_invalid_specs_are_refused_with_a_clear_message(raw, message):
    with pytest.raises(SpecError) as info:
        parse_spec(raw, origin="bad.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("bad.yaml: ")


def test_missing_required_field_and_unknown_dataset():
    raw = _synth_raw()
    del raw["keys"]
    with pytest.raises(SpecError, match="missing required field 'keys'"):
        parse_spec(raw)
    with pytest.raises(SpecError, match="unknown dataset 'nope'; known: census-group1"):
        load_spec("nope")


def test_parse_is_pure_and_repeatable():
    raw = _synth_raw()
    a, b = parse_spec(copy.deepcopy(raw)), parse_spec(copy.deepcopy(raw))
    assert a == b
    assert load_spec("synth") == a


def test_numeric_encoding_and_group_fields_parse_and_round_trip():
    from mmoe_model.artifact import spec_to_dict

    raw = {"name": "enc", "keys": [{"name": "id"}], "tasks": [{"name": "t"}],
           "features": [{"name": "a", "kind": "dense", "encoding": "pwl", "bins": 8,
                         "group": "money"},
                        {"name": "b", "kind": "dense", "encoding": "quantile",
                         "embedding_dim": 3},
                        {"name": "c", "kind": "dense"},
                        {"name": "d", "kind": "categorical", "hash_buckets": 5,
                         "group": "money"}]}
    spec = parse_spec(raw)
    a, b, c = spec.dense_features
    assert (a.encoding, a.bins, a.group, a.width) == ("pwl", 8, "money", 8)
    assert (b.encoding, b.bins, b.embedding_dim, b.width) == ("quantile", 16, 3, 0)
    assert (c.encoding, c.width, c.group) == ("raw", 1, None)
    assert spec.categorical_features[0].group == "money"
    assert parse_spec(spec_to_dict(spec)) == spec
    for bad, message in (({"encoding": "log"}, "encoding must be one of"),
                         ({"bins": 4096}, r"bins must be an integer within \[2, 1024\]"),
                         ({"group": 3}, "group must match")):
        broken = copy.deepcopy(raw)
        broken["features"][2].update(bad)
        with pytest.raises(SpecError, match=message):
            parse_spec(broken)
