"""FeatureEncoder: categorical indices, hashing and normalisation against hand-computed oracles."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from mmoe_model.artifact import spec_to_dict
from mmoe_model.errors import ModelConfigError, ModelInputError
from mmoe_model.features import FeatureEncoder, InputLayout, fit_stats, splitmix64
from schemas.spec import load_spec, parse_spec

TINY = {
    "name": "tiny",
    "keys": [{"name": "id", "dtype": "long"}],
    "tasks": [{"name": "a"}, {"name": "b"}],
    "features": [
        {"name": "color", "kind": "categorical", "vocabulary": ["red", "green", "blue"],
         "embedding_dim": 3, "max_null_fraction": 0.5},
        {"name": "hour", "kind": "categorical", "dtype": "long",
         "vocabulary": ["0", "1", "2", "07"], "embedding_dim": 2, "max_null_fraction": 0.5},
        {"name": "user", "kind": "categorical", "dtype": "long", "hash_buckets": 16,
         "embedding_dim": 4, "max_null_fraction": 0.5},
        {"name": "tag", "kind": "categorical", "hash_buckets": 8, "embedding_dim": 2,
         "max_null_fraction": 0.5},
        {"name": "price", "kind": "dense", "min": 0, "max": 100, "fill": 5,
         "normalize": "log1p_standard", "max_null_fraction": 0.5},
        {"name": "age", "kind": "dense", "min": 10, "max": 90, "fill": 30,
         "max_null_fraction": 0.5},
        {"name": "raw", "kind": "dense", "normalize": "none"},
    ],
}
MASK64 = (1 << 64) - 1


def py_splitmix64(x: int) -> int:
    """Independent oracle: Vigna's splitmix64 next() on state x, in Python integers."""
    z = (x + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


@pytest.fixture(scope="module")
def spec():
    return parse_spec(TINY)


def frame() -> pd.DataFrame:
    return pd.DataFrame({
        "id": [1, 2, 3, 4],
        "color": ["red", "blue", None, "purple"],
        "hour": [0, 2, 7, 5],            # 7 must not match "07"
        "user": [1.0, -5.0, np.nan, 2.0**40],
        "tag": ["x", None, "y", "x"],
        "price": [np.nan, -3.0, 200.0, 50.0],
        "age": [20.0, np.nan, 5.0, 95.0],
        "raw": [1.5, -2.0, 0.0, 3.0],
    })


STATS = {"price": {"mean": 2.0, "std": 0.5}, "age": {"mean": 40.0, "std": 20.0},
         "raw": {"mean": 0.0, "std": 1.0}}


def test_splitmix64_matches_reference_vector_and_python_oracle():
    # First output of Vigna's splitmix64 seeded with 1234567 (published test vector).
    assert int(splitmix64(np.array([1234567], dtype=np.uint64))[0]) == 6457827717110365317
    values = np.array([0, 1, -1, 2**62, -(2**63)], dtype=np.int64)
    got = [int(v) for v in splitmix64(values)]
    assert got == [py_splitmix64(int(v) & MASK64) for v in values]


def test_categorical_indices(spec):
    dense, cats = FeatureEncoder(spec, STATS).encode(frame())
    assert cats.dtype == torch.int64 and tuple(cats.shape) == (4, 4)
    assert cats[:, 0].tolist() == [1, 3, 0, 0]           # red, blue, null, OOV
    assert cats[:, 1].tolist() == [1, 3, 0, 0]           # "0", "2", 7 != "07", 5 OOV
    users = [1, -5, None, 2**40]
    expected = [0 if u is None else 1 + py_splitmix64(u & MASK64) % 15 for u in users]
    assert cats[:, 2].tolist() == expected
    h = pd.util.hash_array(np.array(["x", "y"], dtype=object))
    hx, hy = (1 + py_splitmix64(int(v)) % 7 for v in h)
    assert cats[:, 3].tolist() == [hx, 0, hy, hx]
    assert int(cats.max()) < 16 and int(cats.min()) >= 0


def test_long_vocabulary_with_nulls_as_float_and_nullable_ints(spec):
    enc = FeatureEncoder(spec, STATS)
    f = frame()
    f["hour"] = [1.0, np.nan, 2.0, 1.5]                  # pandas widens nullable longs
    assert enc.encode(f)[1][:, 1].tolist() == [2, 0, 3, 0]
    f["hour"] = pd.array([1, None, 0, 2], dtype="Int64")
    assert enc.encode(f)[1][:, 1].tolist() == [2, 0, 1, 3]
    f["hour"] = ["1", None, "07", "7"]                   # strings compare as strings
    assert enc.encode(f)[1][:, 1].tolist() == [2, 0, 4, 0]
    f["hour"] = np.array([1, None, 0, 9], dtype=object)  # Python ints in an object column
    assert enc.encode(f)[1][:, 1].tolist() == [2, 0, 1, 0]


def test_hash_of_a_long_column_does_not_depend_on_its_pandas_dtype(spec):
    enc = FeatureEncoder(spec, STATS)
    f = frame()
    expected = enc.encode(f)[1][:, 2]
    for column in (np.array([1, -5, None, 2**40], dtype=object),
                   pd.array([1, -5, None, 2**40], dtype="Int64")):
        assert torch.equal(enc.encode(f.assign(user=column))[1][:, 2], expected)


def test_dense_normalisation_matches_hand_computation(spec):
    dense, _ = FeatureEncoder(spec, STATS).encode(frame())
    assert dense.dtype == torch.float32 and tuple(dense.shape) == (4, 3)
    # price: null → fill 5; -3 → 0; 200 → 100; then log1p, then (x - 2) / 0.5
    price = [(math.log1p(v) - 2.0) / 0.5 for v in (5.0, 0.0, 100.0, 50.0)]
    age = [(v - 40.0) / 20.0 for v in (20.0, 30.0, 10.0, 90.0)]
    raw = [1.5, -2.0, 0.0, 3.0]                           # normalize: none
    np.testing.assert_allclose(dense.numpy(), np.array([price, age, raw]).T, rtol=1e-6)


def test_fit_stats_are_mean_and_std_after_fill_clip_log1p(spec):
    f = frame()
    stats = fit_stats(spec, f)
    price = np.log1p([5.0, 0.0, 100.0, 50.0])
    age = np.array([20.0, 30.0, 10.0, 90.0])
    assert stats["price"]["mean"] == pytest.approx(price.mean())
    assert stats["price"]["std"] == pytest.approx(price.std())
    assert stats["age"]["mean"] == pytest.approx(age.mean())
    assert stats["raw"] == {"mean": 0.0, "std": 1.0}
    dense, _ = FeatureEncoder.fit(spec, f).encode(f)
    np.testing.assert_allclose(dense[:, :2].mean(0).numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(dense[:, :2].numpy().std(0), 1.0, rtol=1e-5)
    constant = f.assign(age=7.0)
    assert fit_stats(spec, constant)["age"]["std"] == 1.0   # clipped to 10 everywhere


def test_arrow_input_equals_pandas_input(spec):
    f = frame()
    enc = FeatureEncoder(spec, STATS)
    table = pa.Table.from_pandas(f.assign(hour=pd.array([0, 2, None, 5], dtype="Int64")),
                                 preserve_index=False)
    d1, c1 = enc.encode(f.assign(hour=pd.array([0, 2, None, 5], dtype="Int64")))
    for batch in (table, table.to_batches()[0]):
        d2, c2 = enc.encode(batch)
        assert torch.equal(c1, c2)
        assert torch.equal(d1, d2)


def test_does_not_modify_the_input_frame(spec):
    f = frame()
    before = f.copy()
    FeatureEncoder(spec, STATS).encode(f)
    pd.testing.assert_frame_equal(f, before)


def test_errors_name_the_column(spec):
    enc = FeatureEncoder(spec, STATS)
    with pytest.raises(ModelInputError, match="'age'"):
        enc.encode(frame().drop(columns=["age"]))
    with pytest.raises(ModelConfigError, match="'raw'"):
        FeatureEncoder(spec, {"price": STATS["price"], "age": STATS["age"]})
    with pytest.raises(ModelInputError, match="empty"):
        fit_stats(spec, frame().iloc[:0])


def test_input_layout_from_specs(spec):
    layout = InputLayout.from_spec(spec)
    assert layout.dense_dim == 3
    assert layout.embeddings == ((4, 3), (5, 2), (16, 4), (8, 2))
    assert layout.input_dim == 3 + 3 + 2 + 4 + 2
    assert InputLayout.from_dict(layout.to_dict()) == layout
    for name in ("synth", "census-group1", "census-group2"):
        other = load_spec(name)
        assert parse_spec(spec_to_dict(other)) == other     # what artifacts embed
    synth = InputLayout.from_spec(load_spec("synth"))
    assert synth.embeddings[0] == (4096, 8) and synth.embeddings[3] == (4, 2)
