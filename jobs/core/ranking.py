"""Per-request ranking metrics (numpy, no Spark): how well each request's list is ordered.

Shared by evaluate (``jobs.evaluate.ranking``: means per model version x task x segment) and
compare (``jobs.compare.records``: paired deltas, user-clustered bootstrap).

Definitions, per request (one list: the logged impressions of one request, or of one request
within one segment value) ranked by the score, highest first:

- ties in the score are broken by the key columns, ascending (the impression logged first
  ranks first when keys grow with time): the order is a total one, so a value never depends on
  how Spark partitioned the rows;
- gain ``2^y - 1`` (``y`` in {0, 1}: 1 for a positive), discount ``1 / log2(rank + 1)``;
- ``ndcg@K`` = DCG@K / ideal DCG@K (the positives ranked first);
- ``map@K`` = sum over the positives ranked <= K of precision at their rank, divided by
  min(positives, K) (so a perfect top-K is 1);
- ``recall@K`` = positives ranked <= K / positives;
- ``hit_rate@K`` = 1 when a positive is ranked <= K;
- ``mrr`` = 1 / the rank of the first positive.

Requests without a positive have no value and are left out; a metric's value over a group is
the mean over its requests with at least one positive, and ``n`` counts those requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jobs.core import metric_registry

DEFAULT_KS = (5, 10)


def metric_names(ks=DEFAULT_KS) -> list[str]:
    """The ranking metrics' names, in display order (the registry's)."""
    return metric_registry.ranking_names(ks)


@dataclass(frozen=True)
class RequestValues:
    """Per list (one entry per distinct ``group`` code, in code order): the metrics' values
    (NaN where the list has no positive) and its positives."""

    groups: np.ndarray            # the distinct group codes
    positives: np.ndarray         # positives per list
    values: dict[str, np.ndarray]

    @property
    def judged(self) -> np.ndarray:
        return self.positives > 0


def list_order(group: np.ndarray, s: np.ndarray, tie: np.ndarray) -> np.ndarray:
    """Rows ordered by (group, score descending, tie ascending)."""
    return np.lexsort((tie, -np.asarray(s, dtype=np.float64), group))


def request_values(group: np.ndarray, y: np.ndarray, s: np.ndarray, tie: np.ndarray,
                   ks=DEFAULT_KS) -> RequestValues:
    """The ranking metrics of every list. ``group``: an integer code per row (the list it
    belongs to); ``y``: 0/1 labels; ``s``: scores; ``tie``: the key order (an integer rank of the
    rows' keys, ascending)."""
    group = np.asarray(group, dtype=np.int64)
    y = np.asarray(y) > 0
    if not len(group):
        empty = np.zeros(0)
        return RequestValues(np.zeros(0, np.int64), empty, {m: empty for m in metric_names(ks)})
    order = list_order(group, s, tie)
    g, hit = group[order], y[order].astype(np.float64)
    start = np.ones(len(g), dtype=bool)
    start[1:] = g[1:] != g[:-1]
    first = np.flatnonzero(start)
    lists = np.cumsum(start) - 1
    rank = np.arange(len(g)) - first[lists] + 1            # 1-based within its list
    positives = np.bincount(lists, weights=hit)
    n_lists = len(first)
    discount = 1.0 / np.log2(rank + 1.0)
    hits_so_far = np.cumsum(hit)
    hits_so_far -= np.concatenate([[0.0], hits_so_far[first[1:] - 1]])[lists]   # within list
    precision = hits_so_far / rank
    judged = positives > 0
    values: dict[str, np.ndarray] = {}

    def per_list(weights: np.ndarray) -> np.ndarray:
        return np.bincount(lists, weights=weights, minlength=n_lists)

    # the ideal DCG@K of a list with P positives: sum_{i <= min(P, K)} 1 / log2(i + 1)
    longest = int(max(ks))
    ideal_prefix = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(1, longest + 1) + 1.0))])
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in ks:
            top = rank <= k
            dcg = per_list(hit * discount * top)
            ideal = ideal_prefix[np.minimum(positives, k).astype(np.int64)]
            hits_k = per_list(hit * top)
            values[f"ndcg@{k}"] = np.where(judged, dcg / ideal, np.nan)
            values[f"map@{k}"] = np.where(judged, per_list(hit * precision * top)
                                          / np.minimum(positives, k), np.nan)
            values[f"recall@{k}"] = np.where(judged, hits_k / positives, np.nan)
            values[f"hit_rate@{k}"] = np.where(judged, (hits_k > 0).astype(np.float64), np.nan)
        first_hit = np.full(n_lists, np.inf)
        np.minimum.at(first_hit, lists[hit > 0], rank[hit > 0].astype(np.float64))
        values["mrr"] = np.where(judged, 1.0 / first_hit, np.nan)
    ordered = {m: values[m] for m in metric_names(ks)}
    return RequestValues(g[first], positives, ordered)


def tie_ranks(*key_columns: np.ndarray) -> np.ndarray:
    """An integer rank per row of the rows' keys, ascending (lexicographic over the key
    columns, the first column first)."""
    order = np.lexsort(tuple(np.asarray(k) for k in reversed(key_columns)))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank
