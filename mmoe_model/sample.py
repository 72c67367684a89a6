"""Small random frames that follow a dataset spec, for tests and benchmarks of the model library.

Not the synthetic data set (that is ``jobs/synth.py``): these frames only respect the spec's types
and ranges, include a few nulls and out-of-vocabulary values, and carry labels with a learnable
signal (a fixed random linear function of the encoded-ish inputs per task).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from schemas.spec import DatasetSpec


def sample_frame(spec: DatasetSpec, rows: int, seed: int = 0, null_fraction: float = 0.02,
                 oov_fraction: float = 0.01, with_labels: bool = True) -> pd.DataFrame:
    """Keys, features, attributes (and task columns when ``with_labels``) of ``rows`` rows."""
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {}
    for i, key in enumerate(spec.keys):
        ids = np.arange(rows, dtype=np.int64) + 1_000_000 * (i + 1) + seed * 10_000_000
        data[key.name] = ids if key.dtype == "long" else [f"k{v}" for v in ids]
    signal = np.zeros((rows, len(spec.tasks)))
    task_rng = np.random.default_rng(12345)
    for feature in spec.dense_features:
        lo = feature.min if feature.min is not None else -10.0
        hi = feature.max if feature.max is not None else 10.0
        if feature.normalize == "log1p_standard":
            x = np.expm1(rng.uniform(np.log1p(lo), np.log1p(min(hi, 1e6)), rows))
            z = np.log1p(x)
        else:
            x = rng.uniform(lo, hi, rows)
            z = x
        z = (z - z.mean()) / (z.std() + 1e-9)
        signal += z[:, None] * task_rng.normal(0, 0.6, len(spec.tasks))[None, :]
        if feature.dtype == "long":
            x = np.round(x)
        x = x.astype(np.float64)
        if feature.max_null_fraction > 0 and null_fraction > 0:
            x[rng.random(rows) < min(null_fraction, feature.max_null_fraction)] = np.nan
        data[feature.name] = x
    for feature in spec.categorical_features:
        if feature.vocabulary is not None:
            vocab = np.array(feature.vocabulary, dtype=object)
            pick = rng.integers(0, len(vocab), rows)
            values = vocab[pick].copy()
            effect = task_rng.normal(0, 0.5, (len(vocab), len(spec.tasks)))
            signal += effect[pick]
            values[rng.random(rows) < oov_fraction] = "__oov__"
            if feature.dtype == "long":
                ints = np.array([int(v) if v != "__oov__" else 10**6 for v in values],
                                dtype=np.float64)
                col = ints
            else:
                col = values
        else:
            col = rng.integers(0, 50, rows).astype(np.float64 if feature.dtype == "long"
                                                   else np.int64)
            if feature.dtype == "string":
                col = np.array([f"id{v}" for v in col], dtype=object)
        if feature.max_null_fraction > 0 and null_fraction > 0:
            mask = rng.random(rows) < min(null_fraction, feature.max_null_fraction)
            col = col.astype(object) if col.dtype == object else col
            col[mask] = None if col.dtype == object else np.nan
        data[feature.name] = col
    for attr in spec.attributes:
        data[attr.name] = (np.arange(rows, dtype=np.int64) if attr.dtype == "long"
                           else rng.random(rows) if attr.dtype == "double"
                           else np.array([f"a{v}" for v in range(rows)], dtype=object))
    frame = pd.DataFrame(data)
    if with_labels:
        p = 1.0 / (1.0 + np.exp(-(signal - 0.5)))
        for t, task in enumerate(spec.task_names):
            frame[task] = (rng.random(rows) < p[:, t]).astype(np.int32)
    return frame
