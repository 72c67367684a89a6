"""Stochastic list policies over a request's candidate pool, as inclusion probabilities.

A policy that shows ``k`` of a request's candidates is described here by each candidate's
inclusion probability ``pi`` (the chance it is in the shown list; the ``k`` probabilities of a
pool sum to ``k``, each within [0, 1]). The synthetic logger draws its lists from them
(:func:`systematic_sample`, whose inclusion probabilities are exactly ``pi``) and writes ``pi``
as each impression's ``propensity``; the counterfactual estimators of ``mmoe compare``
(:mod:`jobs.compare.counterfactual`) compute the target policies' ``pi`` with the same
functions. Pools are grouped arrays: ``group`` is each candidate's request index
``0..G-1`` and ``k[g]`` the list size of request ``g``.
"""

from __future__ import annotations

import numpy as np


def capped_inclusion(weights: np.ndarray, group: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Inclusion probabilities proportional to ``weights`` (>= 0) within each group, summing to
    ``k[g]``, capped at 1: a candidate whose share would exceed 1 is always shown and the rest
    of the list is shared by the others in proportion (the usual "pi-ps" capping, iterated
    until no share exceeds 1). A group whose weights are all zero shares its ``k`` evenly.

    weights, group: [n]; k: [G]; returns [n] float64."""
    weights = np.asarray(weights, dtype=np.float64)
    n_groups = len(k)
    k = np.asarray(k, dtype=np.float64)
    size = np.bincount(group, minlength=n_groups).astype(np.float64)
    if np.any(k > size):
        raise ValueError("a list cannot be longer than its pool")
    flat = np.bincount(group, weights, minlength=n_groups) <= 0
    weights = np.where(flat[group], 1.0, weights)      # all-zero pool: uniform
    fixed = np.zeros(len(weights), dtype=bool)
    pi = np.zeros(len(weights))
    for _ in range(int(k.max(initial=0)) + 1):
        free = np.where(fixed, 0.0, weights)
        mass = k - np.bincount(group, fixed, minlength=n_groups)
        total = np.bincount(group, free, minlength=n_groups)
        scale = np.divide(mass, total, out=np.zeros(n_groups), where=total > 0)
        pi = np.where(fixed, 1.0, free * scale[group])
        over = ~fixed & (pi > 1.0)
        if not over.any():
            break
        fixed |= over
    return np.minimum(pi, 1.0)


def mixed_with_uniform(pi: np.ndarray, group: np.ndarray, k: np.ndarray,
                       share: float) -> np.ndarray:
    """``(1 - share) pi + share k/M``: every candidate of a pool of M keeps at least
    ``share k / M`` (exploration); sums and caps are preserved."""
    size = np.bincount(group, minlength=len(k)).astype(np.float64)
    return (1.0 - share) * pi + share * (np.asarray(k, dtype=np.float64) / size)[group]


def systematic_sample(pi: np.ndarray, k: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Which candidates are shown: randomised systematic sampling (Madow) of each row of ``pi``
    ([R, M], row r summing to ``k[r]``): the pool in a random order, one uniform start ``u``
    and the points ``u, u+1, .., u+k-1`` on the cumulated ``pi``; candidate j is shown when a
    point falls in its interval, which has length ``pi_j <= 1``, so it is shown with probability
    exactly ``pi_j`` and no candidate twice. Returns a bool mask [R, M]."""
    rows, width = pi.shape
    order = np.argsort(rng.random((rows, width)), axis=1)
    cum = np.cumsum(np.take_along_axis(pi, order, axis=1), axis=1)
    k = np.asarray(k, dtype=np.int64)
    cum[:, -1] = k                               # the sum is k exactly (rounding)
    points = rng.random(rows)[:, None] + np.arange(width)[None, :]   # [R, M]; first k used
    used = np.arange(width)[None, :] < k[:, None]
    offset = np.arange(rows)[:, None] * (width + 1.0)          # rows apart on one axis
    hit = np.searchsorted((cum + offset).ravel(), (points + offset)[used], side="right")
    row = np.repeat(np.arange(rows), k)
    col = hit - row * width
    shown = np.zeros((rows, width), dtype=bool)
    shown[row, order[row, col]] = True
    return shown


__all__ = ["capped_inclusion", "mixed_with_uniform", "systematic_sample"]
