"""Random tables shaped by a spec, shared by the evaluate and compare tests."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from schemas.tables import features_arrow_schema


def random_features(spec, rng: np.random.Generator, n: int, users: int,
                    first_key: int = 0) -> pa.Table:
    """A features partition of ``n`` rows: keys ``first_key..``, ``users`` distinct users,
    categoricals drawn from their vocabularies, other numbers uniform."""
    cols = {}
    for field in features_arrow_schema(spec):
        name = field.name
        if name == "impression_id":
            cols[name] = np.arange(n, dtype=np.int64) + first_key
        elif name == "user_id":
            cols[name] = rng.integers(0, users, n)
        elif name in ("platform", "user_cohort", "item_category", "hour"):
            values = rng.choice(spec.column(name).vocabulary, n)
            cols[name] = values.astype(np.int64) if pa.types.is_integer(field.type) else values
        elif pa.types.is_integer(field.type):
            cols[name] = rng.integers(0, 1000, n)
        else:
            cols[name] = rng.random(n) * 10
    return pa.table(cols, schema=features_arrow_schema(spec))
