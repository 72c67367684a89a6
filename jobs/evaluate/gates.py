"""Gate diagnostics of predictions scored ``--with-gates`` (``gate_<task>``: the last gating
layer's weights over the experts, one array per row), as Spark aggregations: one pass.

Per task: the mean gate weight of each expert, the distribution of the gate entropy
(normalised by log E: 0 = all weight on one expert, 1 = uniform), expert utilisation (the share
of rows on which each expert carries the largest weight), and two flags:

- **collapsed**: more than :data:`COLLAPSE_SHARE` of the task's gate mass on one expert;
- **dead experts**: experts whose mean weight is below :data:`DEAD_SHARE` and that are never
  the largest.
"""

from __future__ import annotations

import math

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs.core.metric_registry import GATES

COLLAPSE_SHARE = 0.9
DEAD_SHARE = 0.01
ENTROPY_BINS = 20


def row_entropy(gate: Column) -> Column:
    """-sum w log w of one row's gate weights (nats); null for a null array."""
    return F.aggregate(gate, F.lit(0.0), lambda acc, w: acc - F.when(w > 0, w * F.log(w)).otherwise(0.0))


def gate_diagnostics(frame: DataFrame, tasks: list[str]) -> dict:
    cols = [t for t in tasks if f"gate_{t}" in frame.columns]
    sizes = frame.select(*(F.max(F.size(f"gate_{t}")).alias(t) for t in cols)).first()
    experts = {t: int(sizes[t] or 0) for t in cols}
    aggs: list[Column] = []
    for t in cols:
        g, e = F.col(f"gate_{t}"), experts[t]
        if e < 1:
            continue
        ent = row_entropy(g) / (math.log(e) if e > 1 else 1.0)
        b = F.least(F.floor(ent * ENTROPY_BINS), F.lit(ENTROPY_BINS - 1))
        top = F.array_position(g, F.array_max(g)) - 1
        aggs += [F.count(g).alias(f"{t}|rows"), F.avg(ent).alias(f"{t}|entropy")]
        aggs += [F.avg(g[i]).alias(f"{t}|mean|{i}") for i in range(e)]
        aggs += [F.sum(F.when(top == i, 1).otherwise(0)).alias(f"{t}|top|{i}") for i in range(e)]
        aggs += [F.sum(F.when(b == k, 1).otherwise(0)).alias(f"{t}|hist|{k}") for k in range(ENTROPY_BINS)]
    row = frame.agg(*aggs).first().asDict() if aggs else {}
    return summarise(row, experts)


def summarise(row: dict, experts: dict[str, int]) -> dict:
    """Per task: means, utilisation, entropy histogram and flags (pure)."""
    out, flags = {}, {}
    for t, e in experts.items():
        rows = int(row.get(f"{t}|rows") or 0)
        if not e or not rows:
            continue
        mean = [float(row[f"{t}|mean|{i}"] or 0.0) for i in range(e)]
        total = sum(mean) or 1.0
        share = [m / total for m in mean]
        top = [int(row[f"{t}|top|{i}"]) / rows for i in range(e)]
        dead = [i for i in range(e) if share[i] < DEAD_SHARE and top[i] == 0]
        out[t] = {"experts": e, "rows": rows, "mean_weight": mean, "utilisation": top,
                  "entropy_mean": float(row[f"{t}|entropy"]),
                  "entropy_hist": [int(row[f"{t}|hist|{k}"]) for k in range(ENTROPY_BINS)],
                  "max_share": max(share), "collapsed": max(share) > COLLAPSE_SHARE,
                  "dead_experts": dead}
        flags[t] = {"collapsed": max(share) > COLLAPSE_SHARE, "dead_experts": dead}
    return {"tasks": out, "flags": flags}


def gate_sizes(frame: DataFrame, tasks: list[str]) -> dict[str, int]:
    """Experts per task (length of the first non-null gate array; 0 without gates)."""
    cols = [t for t in tasks if f"gate_{t}" in frame.columns]
    if not cols:
        return {}
    row = frame.select(*(F.max(F.size(f"gate_{t}")).alias(t) for t in cols)).first()
    return {t: int(row[t] or 0) for t in cols if (row[t] or 0) > 0}


def gate_metric_rows(frame: DataFrame, tasks: list[str], experts: dict[str, int]) -> DataFrame | None:
    """Metrics-table rows (segment ``all``) per model_version x task of ``frame`` (``model_version``
    + ``gate_<task>`` arrays): ``gate_entropy`` = mean over rows of the gate entropy / log E
    (0: every row on one expert, 1: uniform), ``gate_max_share`` = the share of the task's gate
    mass on its most used expert (> 0.9 flags a collapsed gate). ``n`` = rows with gates."""
    parts = []
    for t, e in experts.items():
        g = F.col(f"gate_{t}")
        norm = math.log(e) if e > 1 else 1.0
        means = [F.avg(g[i]) for i in range(e)]
        agg = frame.where(g.isNotNull()).groupBy("model_version").agg(
            F.count(F.lit(1)).alias("n"), F.avg(row_entropy(g) / norm).alias("entropy"),
            F.array(*means).alias("means"))
        share = F.array_max("means") / F.aggregate("means", F.lit(0.0), lambda a, x: a + x)
        computed = {"gate_entropy": F.col("entropy"), "gate_max_share": share}
        parts.append(agg.select(
            "model_version", F.lit(t).alias("task"), F.lit("all").alias("segment"), "n",
            F.explode(F.array(*(F.struct(F.lit(name).alias("metric"), computed[name].alias("value"))
                                for name in GATES))).alias("m")))
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out.select("model_version", "task", "segment", F.col("m.metric").alias("metric"),
                      F.col("m.value").cast("double").alias("value"), F.col("n").cast("long").alias("n"))
