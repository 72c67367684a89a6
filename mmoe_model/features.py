"""Feature encoding: a frame of raw feature columns → ``(dense [B, D] float32, cats [B, C] int64)``.

This runs on the scoring hot path (once per Arrow batch on every executor), so every step is a
whole-column numpy operation: no per-row Python, and at most one scratch buffer per column.

Categorical indices (docs/DESIGN.md, "Categorical encoding"); index 0 of every embedding table is
null / out-of-vocabulary:

* vocabulary features: ``1 + position in the vocabulary``; values are compared as strings, so a
  long-typed column matches the vocabulary entry ``str(value)`` (``7`` matches ``"7"``, never
  ``"07"``).
* hash features: ``1 + splitmix64(value) mod (hash_buckets - 1)`` for long values (negative longs
  are taken as their two's-complement uint64); string values are first turned into a uint64 with
  ``pandas.util.hash_array`` (a fixed key, so stable across processes) and then mixed the same way.

Dense features: nulls → ``fill``, clip into ``[min, max]``, ``log1p`` for ``log1p_standard``, then
by the feature's ``encoding``:

* ``raw``: ``(x - mean) / std`` with the training-set statistics (``normalize: none`` skips it),
  one dense column;
* ``pwl``: piecewise-linear encoding over ``bins`` bins with edges ``b_0 <= ... <= b_bins`` (the
  training-set quantiles): column ``t`` is ``clip((x - b_t) / (b_{t+1} - b_t), 0, 1)`` (a bin of
  zero width gives ``x >= b_{t+1}``), ``bins`` dense columns;
* ``quantile``: ``1 + `` the index of the bin ``x`` falls in (``searchsorted`` of the inner
  edges, right side), a categorical index appended after the spec's categorical features;
  index 0 is never produced.

``encode`` accepts a pandas DataFrame or a pyarrow Table / RecordBatch. Passing Arrow directly is
cheaper (no pandas conversion) and exact for nullable long columns, which pandas turns into
float64 (exact only up to 2**53).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from mmoe_model.errors import ModelConfigError, ModelInputError
from mmoe_model.hashing import splitmix64  # noqa: F401  (re-exported: the encoder's hash)
from schemas.spec import CategoricalFeature, DatasetSpec, DenseFeature

Frame = Union[pd.DataFrame, pa.Table, pa.RecordBatch]
Stats = dict[str, dict[str, Any]]  # per dense feature: mean, std (+ edges when binned)



@dataclass(frozen=True)
class InputLayout:
    """What the model's input layer needs to know: the dense width and, per categorical index
    (the spec's categorical features, then its ``quantile``-encoded dense features), its
    embedding table size (including index 0) and embedding width.

    ``columns`` (from a spec only; not serialised, not compared): per feature ``(name, group,
    start, stop)``, the columns ``[start, stop)`` it fills in ``EmbeddingInput``'s output (dense
    columns first, then the embeddings), which field-split experts select from."""

    dense_dim: int
    embeddings: tuple[tuple[int, int], ...]
    columns: tuple[tuple[str, str | None, int, int], ...] = field(default=(), compare=False)

    @classmethod
    def from_spec(cls, spec: DatasetSpec) -> "InputLayout":
        quantile = [f for f in spec.dense_features if f.encoding == "quantile"]
        embedded = [(f.name, f.group, f.embedding_dim) for f in spec.categorical_features] + \
                   [(f.name, f.group, f.embedding_dim) for f in quantile]
        columns, start = [], 0
        for f in spec.dense_features:
            if f.width:
                columns.append((f.name, f.group, start, start + f.width))
                start += f.width
        for name, group, dim in embedded:
            columns.append((name, group, start, start + dim))
            start += dim
        return cls(
            dense_dim=sum(f.width for f in spec.dense_features),
            embeddings=tuple((f.cardinality, f.embedding_dim) for f in spec.categorical_features)
            + tuple((f.bins + 1, f.embedding_dim) for f in quantile),
            columns=tuple(columns),
        )

    def field_columns(self, fields: Sequence[str]) -> list[int]:
        """Input columns of the features named in ``fields`` (feature names or groups), in
        input order. Raises ModelConfigError for a name that matches nothing."""
        if not self.columns:
            raise ModelConfigError("this input layout has no feature names (build it from the "
                                   "spec) so field-split experts cannot select fields")
        picked: list[int] = []
        for name in fields:
            spans = [(a, b) for n, g, a, b in self.columns if name in (n, g)]
            if not spans:
                raise ModelConfigError(f"expert field {name!r} is neither a feature nor a "
                                       f"feature group of the spec")
            picked += [c for a, b in spans for c in range(a, b)]
        return sorted(set(picked))

    @property
    def num_categorical(self) -> int:
        return len(self.embeddings)

    @property
    def input_dim(self) -> int:
        """Width of ``EmbeddingInput``'s output: dense features + all embeddings."""
        return self.dense_dim + sum(dim for _, dim in self.embeddings)

    def to_dict(self) -> dict[str, Any]:
        return {"dense_dim": self.dense_dim, "embeddings": [list(e) for e in self.embeddings]}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "InputLayout":
        return cls(int(raw["dense_dim"]), tuple((int(c), int(d)) for c, d in raw["embeddings"]))


# --------------------------------------------------------------------------------------------
# Column access: one code path for pandas and Arrow inputs


def _column(frame: Frame, name: str) -> Any:
    try:
        if isinstance(frame, pd.DataFrame):
            return frame[name]
        col = frame.column(name)
    except KeyError:
        raise ModelInputError(f"input frame has no column {name!r}") from None
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col


def _float_values(col: Any) -> np.ndarray:
    """float64 values, nulls as NaN (no copy for a float64 numpy-backed pandas column)."""
    if isinstance(col, pd.Series):
        if isinstance(col.dtype, np.dtype) and col.dtype.kind in "fiub":
            return col.to_numpy(dtype=np.float64, copy=False)
        try:
            return col.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError) as exc:
            raise ModelInputError(f"column {col.name!r} is not numeric: {exc}") from None
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)
            or pa.types.is_null(col.type)):
        raise ModelInputError(f"dense column has non-numeric Arrow type {col.type}")
    return col.cast(pa.float64()).to_numpy(zero_copy_only=False)


def _int_or_object_values(col: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """``(values, null_mask)``: int64 values for integer columns (nulls set to 0), float64 for float
    columns (nulls NaN), object arrays for everything else. ``null_mask`` is None when the column
    cannot hold nulls."""
    if isinstance(col, pd.Series):
        dtype = col.dtype
        if isinstance(dtype, np.dtype):
            values = col.to_numpy()
            if dtype.kind in "iub":
                return values.astype(np.int64, copy=False), None
            if dtype.kind == "f":
                return values, np.isnan(values)
            return values, pd.isna(values)
        nulls = col.isna().to_numpy()
        if pd.api.types.is_integer_dtype(dtype):  # nullable Int64 and friends: exact
            return col.to_numpy(dtype=np.int64, na_value=0), nulls
        if pd.api.types.is_float_dtype(dtype):
            return col.to_numpy(dtype=np.float64, na_value=np.nan), nulls
        return col.to_numpy(dtype=object, na_value=None), nulls
    nulls = col.is_null().to_numpy(zero_copy_only=False) if col.null_count else None
    if pa.types.is_integer(col.type):
        return col.fill_null(0).cast(pa.int64()).to_numpy(), nulls
    if pa.types.is_floating(col.type):
        return col.cast(pa.float64()).to_numpy(zero_copy_only=False), nulls
    return col.to_numpy(zero_copy_only=False), nulls


def _long_from_objects(values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """An object array of Python ints / None (a long column built by hand) → ``(int64, nulls)``;
    None when the objects are not whole numbers (then they are compared as strings)."""
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind not in ("integer", "floating", "mixed-integer-float", "empty"):
        return None  # strings (or a mix): they are compared / hashed as strings
    try:
        floats = pd.array(values, dtype="Float64") if kind != "integer" else None
        arr = pd.array(values, dtype="Int64") if kind == "integer" else None
    except (TypeError, ValueError):
        return None
    if arr is not None:
        return arr.to_numpy(dtype=np.int64, na_value=0), np.asarray(arr.isna())
    ints, bad = _as_int64(floats.to_numpy(dtype=np.float64, na_value=np.nan), None)
    return ints, bad


def _as_int64(values: np.ndarray, nulls: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Float values (a long column that pandas widened because of nulls) → int64 plus a mask of
    the rows that are null or not a whole number (those can match no long value)."""
    bad = ~np.isfinite(values) if nulls is None else (nulls | ~np.isfinite(values))
    clean = np.where(bad, 0.0, values)
    ints = clean.astype(np.int64)
    bad |= ints != clean
    return ints, bad


# --------------------------------------------------------------------------------------------
# Categorical encoders


def _column_values(col: Any, is_long: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """A column's values and null mask; object columns of a long-typed feature become int64
    when every value is integral (shared by the vocabulary and hash encoders)."""
    values, nulls = _int_or_object_values(col)
    if values.dtype.kind == "O" and is_long:
        as_long = _long_from_objects(values)
        if as_long is not None:
            values, nulls = as_long
    return values, nulls


class _VocabularyEncoder:
    """1 + position in the vocabulary; null / OOV → 0."""

    def __init__(self, feature: CategoricalFeature) -> None:
        if feature.vocabulary is None:
            raise ModelConfigError(f"categorical {feature.name!r} has no vocabulary")
        vocab = list(feature.vocabulary)
        self.name = feature.name
        self.is_long = feature.dtype == "long"
        self.index = pd.Index(vocab, dtype=object)
        self.arrow_values = pa.array(vocab, type=pa.string())
        # Integer columns: the entries whose string form round-trips (str(int("7")) == "7") are
        # the only ones a long value can equal as a string; looked up with a sorted searchsorted.
        ints, positions = [], []
        for pos, v in enumerate(vocab):
            try:
                iv = int(v)
            except ValueError:
                continue
            if str(iv) == v and -(2**63) <= iv < 2**63:
                ints.append(iv)
                positions.append(pos)
        order = np.argsort(np.array(ints, dtype=np.int64), kind="stable")
        self.sorted_ints = np.array(ints, dtype=np.int64)[order]
        self.sorted_codes = np.array(positions, dtype=np.int64)[order] + 1

    def __call__(self, col: Any) -> np.ndarray:
        if not isinstance(col, pd.Series) and (pa.types.is_string(col.type)
                                               or pa.types.is_large_string(col.type)):
            found = pc.index_in(col, value_set=self.arrow_values)
            return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64) + 1
        values, nulls = _column_values(col, self.is_long)
        if values.dtype.kind == "O":
            # get_indexer returns -1 for anything not in the vocabulary, None/NaN included.
            return self.index.get_indexer(values).astype(np.int64) + 1
        bad = nulls
        if values.dtype.kind == "f":
            values, bad = _as_int64(values, nulls)
        return self._lookup_ints(values, bad)

    def _lookup_ints(self, values: np.ndarray, bad: np.ndarray | None) -> np.ndarray:
        if self.sorted_ints.size == 0:
            return np.zeros(values.shape[0], dtype=np.int64)
        pos = np.searchsorted(self.sorted_ints, values)
        np.minimum(pos, self.sorted_ints.size - 1, out=pos)
        hit = self.sorted_ints[pos] == values
        if bad is not None:
            hit &= ~bad
        return np.where(hit, self.sorted_codes[pos], 0)


class _HashEncoder:
    """1 + splitmix64(value) mod (buckets - 1); null → 0."""

    def __init__(self, feature: CategoricalFeature) -> None:
        if feature.hash_buckets is None or feature.hash_buckets < 2:
            raise ModelConfigError(f"categorical {feature.name!r} needs hash_buckets >= 2")
        self.name = feature.name
        self.is_long = feature.dtype == "long"
        self.modulus = np.uint64(feature.hash_buckets - 1)

    def __call__(self, col: Any) -> np.ndarray:
        values, nulls = _column_values(col, self.is_long)
        if values.dtype.kind == "f":
            values, nulls = _as_int64(values, nulls)
        elif values.dtype.kind == "O":
            # hash_array hashes str(value) for non-strings too; null rows are masked below.
            values = pd.util.hash_array(values.astype(object, copy=False))
        codes = (splitmix64(values) % self.modulus).astype(np.int64)
        codes += 1
        if nulls is not None:
            codes[nulls] = 0
        return codes


# --------------------------------------------------------------------------------------------
# Dense transform and the encoder


def _bounds(feature: DenseFeature) -> tuple[float, float]:
    lo = -np.inf if feature.min is None else feature.min
    hi = np.inf if feature.max is None else feature.max
    return lo, hi


def _pre_standardise(feature: DenseFeature, col: Any, out: np.ndarray) -> np.ndarray:
    """fill → clip → optional log1p, written into the float64 scratch ``out``."""
    values = _float_values(col)
    lo, hi = _bounds(feature)
    np.clip(values, lo, hi, out=out)  # NaN stays NaN through clip
    np.copyto(out, feature.fill, where=np.isnan(out))
    if feature.fill < lo or feature.fill > hi:  # a fill outside the bounds is clipped too
        np.clip(out, lo, hi, out=out)
    if feature.normalize == "log1p_standard":
        np.log1p(out, out=out)
    return out


def fit_stats(spec: DatasetSpec, frame: Frame) -> Stats:
    """Per dense feature ``{"mean", "std"}`` of the values after fill, clip and optional log1p
    (population std; a constant column gets std 1). ``normalize: none`` features get 0 / 1."""
    rows = len(frame) if isinstance(frame, pd.DataFrame) else frame.num_rows
    if rows == 0:
        raise ModelInputError("cannot fit normalisation statistics on an empty frame")
    scratch = np.empty(rows, dtype=np.float64)
    stats: Stats = {}
    for feature in spec.dense_features:
        if feature.normalize == "none" and feature.encoding == "raw":
            stats[feature.name] = {"mean": 0.0, "std": 1.0}
            continue
        x = _pre_standardise(feature, _column(frame, feature.name), scratch)
        mean, std = float(x.mean()), float(x.std())
        entry: dict[str, Any] = {"mean": mean, "std": std if std > 1e-12 else 1.0}
        if feature.normalize == "none":
            entry = {"mean": 0.0, "std": 1.0}
        if feature.encoding != "raw":
            # bins + 1 training-set quantiles; repeated values give zero-width bins.
            edges = np.quantile(x, np.linspace(0.0, 1.0, feature.bins + 1))
            entry["edges"] = [float(e) for e in np.maximum.accumulate(edges)]
        stats[feature.name] = entry
    return stats


def _pwl(x: np.ndarray, edges: np.ndarray, out: np.ndarray) -> None:
    """Piecewise-linear encoding of ``x`` [B] into ``out`` [B, bins] (see module doc)."""
    lo, hi = edges[:-1], edges[1:]
    width = hi - lo
    flat = width <= 0
    safe = np.where(flat, 1.0, width)
    enc = (x[:, None] - lo[None, :]) / safe[None, :]
    np.clip(enc, 0.0, 1.0, out=enc)
    if flat.any():
        enc[:, flat] = x[:, None] >= hi[None, flat]
    out[...] = enc


class FeatureEncoder:
    """Turns raw feature columns into the model's ``(dense, cats)`` tensors (see module doc)."""

    def __init__(self, spec: DatasetSpec, stats: Mapping[str, Mapping[str, float]]) -> None:
        self.spec = spec
        self.layout = InputLayout.from_spec(spec)
        self.stats: Stats = {}
        for feature in spec.dense_features:
            entry = stats.get(feature.name)
            if entry is None:
                raise ModelConfigError(f"normalisation stats missing for dense feature "
                                       f"{feature.name!r}")
            mean, std = float(entry["mean"]), float(entry["std"])
            if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
                raise ModelConfigError(f"bad normalisation stats for {feature.name!r}: "
                                       f"mean={mean}, std={std}")
            self.stats[feature.name] = {"mean": mean, "std": std}
            if feature.encoding != "raw":
                edges = np.asarray(entry.get("edges", []), dtype=np.float64)
                if (edges.shape != (feature.bins + 1,) or not np.isfinite(edges).all()
                        or (np.diff(edges) < 0).any()):
                    raise ModelConfigError(
                        f"{feature.name!r} ({feature.encoding}) needs {feature.bins + 1} finite "
                        f"non-decreasing bin edges, got {edges.size}")
                self.stats[feature.name]["edges"] = [float(e) for e in edges]
        self._dense = [(f, self.stats[f.name]["mean"], 1.0 / self.stats[f.name]["std"])
                       for f in spec.dense_features]
        self._edges = {f.name: np.asarray(self.stats[f.name]["edges"])
                       for f in spec.dense_features if f.encoding != "raw"}
        self._cats = [(_VocabularyEncoder(f) if f.vocabulary is not None else _HashEncoder(f))
                      for f in spec.categorical_features]

    @classmethod
    def fit(cls, spec: DatasetSpec, frame: Frame) -> "FeatureEncoder":
        return cls(spec, fit_stats(spec, frame))

    def encode(self, frame: Frame) -> tuple[torch.Tensor, torch.Tensor]:
        """``frame`` → ``(dense [B, D] float32, cats [B, C] int64)``.

        Both arrays are filled column by column in Fortran order, so each column write is
        contiguous; the tensors are views of them (column-strided, which the model's embedding
        lookups and concat read as cheaply as contiguous ones).
        """
        rows = len(frame) if isinstance(frame, pd.DataFrame) else frame.num_rows
        dense = np.empty((rows, self.layout.dense_dim), dtype=np.float32, order="F")
        cats = np.empty((rows, self.layout.num_categorical), dtype=np.int64, order="F")
        scratch = np.empty(rows, dtype=np.float64)
        j, q = 0, len(self._cats)
        for feature, mean, inv_std in self._dense:
            x = _pre_standardise(feature, _column(frame, feature.name), scratch)
            if feature.encoding == "pwl":
                _pwl(x, self._edges[feature.name], dense[:, j:j + feature.bins])
            elif feature.encoding == "quantile":
                inner = self._edges[feature.name][1:-1]
                cats[:, q] = np.searchsorted(inner, x, side="right") + 1
                q += 1
            else:
                if feature.normalize != "none":
                    x -= mean
                    x *= inv_std
                dense[:, j] = x
            j += feature.width
        for c, encoder in enumerate(self._cats):
            cats[:, c] = encoder(_column(frame, encoder.name))
        return torch.from_numpy(dense), torch.from_numpy(cats)
