"""The project's one 64-bit hash: splitmix64 (Steele, Lea & Flood 2014; Vigna's reference
implementation), used for hashed id features, the training split, the bootstrap's user
clusters and evaluation's per-value hashing. Pure numpy, platform- and process-independent.
"""

from __future__ import annotations

import zlib
from typing import Iterable

import numpy as np

_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def splitmix64(values: np.ndarray) -> np.ndarray:
    """The splitmix64 output for state ``values``: ``z = values + 0x9E3779B97F4A7C15`` then the
    two xor-shift-multiply rounds. Element-wise over a uint64 (or int64, reinterpreted) array."""
    x = np.asarray(values)
    if x.dtype == np.int64:
        x = x.view(np.uint64)  # two's complement, no copy
    elif x.dtype != np.uint64:
        x = x.astype(np.int64).view(np.uint64)
    # uint64 arithmetic wraps modulo 2**64, which is exactly what the hash wants.
    with np.errstate(over="ignore"):
        z = x + _GOLDEN_GAMMA
        z ^= z >> _S30
        z *= _MIX1
        z ^= z >> _S27
        z *= _MIX2
        z ^= z >> _S31
    return z


def value_hash64(values: Iterable, integer: bool | None = None) -> np.ndarray:
    """A 64-bit hash per value: integers hashed directly, anything else through the CRC-32 of
    its string (``integer``: whether the values are integers; inferred from a numpy array)."""
    arr = np.asarray(values) if integer is None else None
    if integer or (arr is not None and arr.dtype.kind in "iu"):
        return splitmix64(np.asarray(values).astype(np.int64))
    return splitmix64(np.array([zlib.crc32(str(v).encode()) for v in values], dtype=np.int64))
