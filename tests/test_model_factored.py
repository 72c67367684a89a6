"""Factored first layer (mmoe_model/factored.py) against the model on joined rows, in-process."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from mmoe_model.artifact import save_artifact
from mmoe_model.errors import ModelInputError
from mmoe_model.factored import FactoredModel, factorable
from mmoe_model.features import FeatureEncoder, InputLayout
from mmoe_model.models import ModelConfig, build_model
from mmoe_model.sample import sample_frame
from schemas import load_spec
from schemas.tables import features_arrow_schema

SPEC = load_spec("synth")
SCHEMA = features_arrow_schema(SPEC)
USER, ITEM = SPEC.catalog.user_features, SPEC.catalog.item_features


@pytest.fixture(scope="module")
def table():
    frame = sample_frame(SPEC, 1500, seed=5, null_fraction=0.15, oov_fraction=0.02)
    return pa.Table.from_pandas(frame[SCHEMA.names], schema=SCHEMA, preserve_index=False)


def _artifact(tmp_path, table, arch, **kw):
    torch.manual_seed(3)
    config = ModelConfig(arch=arch, num_experts=3, expert_hidden=kw.pop("expert_hidden", (16,)),
                         expert_dim=8, tower_hidden=(8,), **kw)
    model = build_model(config, InputLayout.from_spec(SPEC), len(SPEC.tasks)).eval()
    return save_artifact(tmp_path / arch, model, config, SPEC, FeatureEncoder.fit(SPEC, table))


def _joined(users: pa.Table, items: pa.Table) -> pa.Table:
    """Every (user, item) row as the model would see it joined: context features null."""
    u = pa.array(np.repeat(np.arange(users.num_rows), items.num_rows))
    i = pa.array(np.tile(np.arange(items.num_rows), users.num_rows))
    cols = {}
    for f in SPEC.features:
        if f.name in USER:
            cols[f.name] = users.column(f.name).take(u)
        elif f.name in ITEM:
            cols[f.name] = items.column(f.name).take(i)
        else:
            cols[f.name] = pa.nulls(len(u), type=SCHEMA.field(f.name).type)
    return pa.table(cols)


@pytest.mark.parametrize("arch,kw", [
    ("mmoe", {}), ("mmoe", {"num_levels": 2, "gate_temperature": 2.0, "expert_hidden": (16, 8)}),
    ("omoe", {}), ("ple", {"num_shared_experts": 2, "num_levels": 2}),
    ("ple", {"num_shared_experts": 0}), ("shared-bottom", {}),
])
def test_factored_pairs_equal_joined_rows(tmp_path, table, arch, kw):
    artifact = _artifact(tmp_path, table, arch, **kw)
    users = table.select(list(USER)).slice(0, 30)       # nulls in user_age, etc.
    items = table.select(list(ITEM)).slice(200, 25)     # nulls in item_price, OOV categories
    assert users.column("user_age").null_count and items.column("item_price").null_count
    fm = FactoredModel(artifact, USER, ITEM)
    got = fm.pairs(fm.side(users, "user"), fm.side(items, "item"))
    expected = artifact.predict(_joined(users, items)).reshape(30, 25, -1)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("temperature", [0.3, 3.0, 7.0])
@pytest.mark.parametrize("arch,kw", [
    ("mmoe", {}),                                               # per-task gates
    ("mmoe", {"num_levels": 2}),                                # + a level gate
    ("omoe", {}),                                               # one shared gate
    ("ple", {"num_shared_experts": 2, "num_levels": 2}),        # task and shared gates
], ids=["mmoe", "mmoe-levels", "omoe", "ple"])
def test_factored_gate_temperature_equals_joined_rows(tmp_path, table, arch, kw, temperature):
    """Sharpening (< 1) and flattening (> 1) temperatures on every kind of softmax gate the
    factored path rebuilds: the same probabilities as the model on joined rows."""
    artifact = _artifact(tmp_path, table, arch, gate_temperature=temperature, **kw)
    users = table.select(list(USER)).slice(0, 12)
    items = table.select(list(ITEM)).slice(300, 10)
    fm = FactoredModel(artifact, USER, ITEM)
    got = fm.pairs(fm.side(users, "user"), fm.side(items, "item"))
    expected = artifact.predict(_joined(users, items)).reshape(12, 10, -1)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_all_null_sides_equal_rows_of_nulls(tmp_path, table):
    artifact = _artifact(tmp_path, table, "mmoe")
    nulls = pa.table({c: pa.nulls(2, type=SCHEMA.field(c).type) for c in SCHEMA.names})
    fm = FactoredModel(artifact, USER, ITEM)
    got = fm.pairs(fm.side(nulls, "user"), fm.side(nulls, "item"))
    expected = artifact.predict(_joined(nulls.select(list(USER)), nulls.select(list(ITEM))))
    np.testing.assert_allclose(got.reshape(-1, 3), expected, atol=1e-6, rtol=0)


def test_single_task_is_not_factored_and_sides_are_checked(tmp_path, table):
    single = _artifact(tmp_path, table, "single-task")
    assert not factorable(single.model)
    with pytest.raises(ModelInputError, match="cannot be scored factored"):
        FactoredModel(single, USER, ITEM)
    mmoe = _artifact(tmp_path, table, "mmoe")
    assert factorable(mmoe.model)
    with pytest.raises(ModelInputError, match="both user- and item-side"):
        FactoredModel(mmoe, USER, ("user_id",))
    with pytest.raises(ModelInputError, match="not features"):
        FactoredModel(mmoe, ("no_such_column",), ITEM)


@pytest.mark.parametrize("gate", ["topk", "max", "constant"])
def test_non_softmax_gates_are_not_factored(tmp_path, table, gate):
    """The factored path reproduces softmax gates only; other gate kinds score joined rows."""
    artifact = _artifact(tmp_path, table, "mmoe", gate=gate, gate_k=2)
    assert not factorable(artifact.model)
    with pytest.raises(ModelInputError, match="cannot be scored factored"):
        FactoredModel(artifact, USER, ITEM)


def test_binned_numeric_encodings_are_not_factored(tmp_path, table):
    """Quantile / PWL encodings give a dense column several input entries: not factored."""
    import dataclasses

    mmoe = _artifact(tmp_path, table, "mmoe")
    dense = tuple(dataclasses.replace(f, encoding="pwl", bins=4) for f in SPEC.dense_features)
    binned = dataclasses.replace(SPEC, features=dense + SPEC.categorical_features)
    assert factorable(mmoe.model, SPEC) and not factorable(mmoe.model, binned)
