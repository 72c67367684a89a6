"""Per-request ranking metrics of scored predictions, in Spark: the metrics table's ``ndcg@K``,
``map@K``, ``recall@K``, ``hit_rate@K`` and ``mrr`` rows (definitions: ``jobs.core.ranking``).

Plan: one shuffle by the request key, so each request's rows of every model version meet in one
partition whatever partitioning the input had; per partition numpy sorts each list once per
task and segment level and emits, per (model_version, task, segment, metric), the sum of the
per-request values and the number of requests with a positive; Spark adds those partial sums.
The value is their ratio, ``n`` the requests.

Segments: a list is the rows of one request with one segment value. A request whose segment
column is constant (a user's platform) is one list in its segment; a request that mixes values
is ranked within each value separately (per impression: each impression counts in its own
segment).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.core.ranking import request_values, tie_ranks
from jobs.evaluate.metrics import shuffle_partitions
from schemas.tables import METRICS_STRUCT

_PARTIAL = "model_version string, task string, segment string, metric string, total double, n long"


def _values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A column as numpy: numbers without a Python object per row, strings as str."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return np.asarray(column.to_pylist(), dtype=str)
    return column.to_numpy(zero_copy_only=False)


def _codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    values = _values(column)
    uniq, codes = np.unique(values, return_inverse=True)
    return codes.reshape(-1).astype(np.int64), uniq


def _partition_sums(batches: Iterator[pa.RecordBatch], tasks: list[str], segments: list[str],
                    keys: list[str], ks: tuple[int, ...]) -> Iterator[pa.RecordBatch]:
    batches = list(batches)
    if not batches:
        return
    table = pa.Table.from_batches(batches)
    if table.num_rows == 0:
        return
    mv, mv_names = _codes(table.column("__mv"))
    request, requests = _codes(table.column("__r"))
    tie = tie_ranks(*(_values(table.column(f"__k{i}")) for i in range(len(keys))))
    levels = [(np.zeros(table.num_rows, dtype=np.int64), np.array(["all"]), None)]
    for i, column in enumerate(segments):
        code, values = _codes(table.column(f"__seg{i}"))
        levels.append((code, values, column))
    out: dict[str, list] = {f: [] for f in ("model_version", "task", "segment", "metric", "total", "n")}
    for ti, task in enumerate(tasks):
        y = table.column(f"__y{ti}").to_numpy(zero_copy_only=False)
        s = table.column(f"__s{ti}").to_numpy(zero_copy_only=False)
        ok = ~(np.isnan(y.astype(np.float64)) | np.isnan(s.astype(np.float64)))
        for seg_code, seg_values, column in levels:
            outer = mv * len(seg_values) + seg_code          # (model version, segment value)
            group = outer * len(requests) + request
            lists = request_values(group[ok], y[ok], s[ok], tie[ok], ks)
            judged = lists.judged
            owner = lists.groups[judged] // len(requests)
            owners, where = np.unique(owner, return_inverse=True)
            counts = np.bincount(where, minlength=len(owners))
            for name, v in lists.values.items():
                totals = np.bincount(where, weights=v[judged], minlength=len(owners))
                for o, total, n in zip(owners, totals, counts):
                    out["model_version"].append(str(mv_names[o // len(seg_values)]))
                    out["task"].append(task)
                    value = seg_values[o % len(seg_values)]
                    out["segment"].append("all" if column is None else f"{column}={value}")
                    out["metric"].append(name)
                    out["total"].append(float(total))
                    out["n"].append(int(n))
    yield from pa.Table.from_pydict(out).to_batches()


def ranking_metrics(scored: DataFrame, tasks: list[str], segments: list[str], request: str,
                    keys: list[str], ks=(5, 10)) -> DataFrame:
    """The ranking rows (``METRICS_STRUCT``) of a wide scored frame (``model_version``, the
    request column, the keys, the segment columns, per task ``t`` a label ``t`` and a score
    ``p_t``). Rows whose label or score is null / NaN are left out of that task; rows without
    a request are left out."""
    cols = [F.col("model_version").cast("string").alias("__mv"), F.col(request).alias("__r")]
    cols += [F.col(k).alias(f"__k{i}") for i, k in enumerate(keys)]
    cols += [F.coalesce(F.col(c).cast("string"), F.lit("null")).alias(f"__seg{i}")
             for i, c in enumerate(segments)]
    for i, t in enumerate(tasks):
        cols += [F.coalesce(F.col(t).cast("double"), F.lit(float("nan"))).alias(f"__y{i}"),
                 F.coalesce(F.col(f"p_{t}").cast("double"), F.lit(float("nan"))).alias(f"__s{i}")]
    rows = scored.where(F.col(request).isNotNull() & F.col("model_version").isNotNull()).select(*cols)
    parts = shuffle_partitions(scored)
    partials = rows.repartition(parts, "__r").mapInArrow(
        partial(_partition_sums, tasks=list(tasks), segments=list(segments), keys=list(keys),
                ks=tuple(ks)), _PARTIAL)
    summed = partials.groupBy("model_version", "task", "segment", "metric").agg(
        F.sum("total").alias("total"), F.sum("n").alias("n"))
    return summed.select(
        "model_version", "task", "segment", "metric",
        F.when(F.col("n") > 0, F.col("total") / F.col("n")).cast("double").alias("value"),
        F.col("n").cast("long").alias("n")).select(*(F.col(f.name) for f in METRICS_STRUCT))
