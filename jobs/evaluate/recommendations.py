"""The recommendations written for a day (``mmoe score --catalog``), evaluated: top-K accuracy
against the interactions logged on the day, and what a catalog owner asks beside it.

Per task ``t`` (users who have a list and at least one logged positive of ``t``; their count is
``n``), over the list's top K (rank 1 first):

- ``recall@K`` = positives in the top K / the user's positives, ``precision@K`` = ... / K,
  ``hit_rate@K`` = 1 when one is there, ``ndcg@K`` = sum 1/log2(rank + 1) over the top K's
  positives / the ideal (min(positives, K) positives ranked first). A positive is a logged
  (user, item) with label ``t`` > 0 on the day; an item logged twice counts once.

Beyond accuracy (task ``all``), over the whole lists: ``coverage`` (distinct recommended items
/ the catalog's items, ``n`` the catalog), ``exposure_gini`` (Gini coefficient of every catalog
item's recommendation count, never-recommended items as 0), ``popularity_bias`` (mean
popularity percentile of the recommended rows, by the spec's ``catalog.rank_by``, 1 = the most
popular), ``diversity`` (per list, the share of item pairs whose ``catalog.category`` differ,
mean over lists of two or more), ``novelty`` (mean self-information of the recommended rows,
-log2((users shown the item that day + 1) / (users logged that day + 1))).

All rows go to the metrics table with segment ``recommendations``, one set per model version.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from functools import reduce

import numpy as np
from pyspark.sql import DataFrame, Row, SparkSession, Window
from pyspark.sql import functions as F

from jobs.core.config import JobConfig
from jobs.core.metric_registry import RECOMMENDATION_AT_K
from jobs.core.errors import InputError, MissingInputError
from jobs.core.tables import DatasetTables, snapshot_details
from jobs.core.warehouse import parse_date
from schemas.spec import DatasetSpec
from schemas.tables import METRICS_STRUCT

SEGMENT = "recommendations"
CATALOG_TASK = "all"


@dataclass
class JudgedLists:
    """The recommendations of some versions for a day and what they are judged on."""

    lists: DataFrame      # model_version, user, item, rank
    logs: DataFrame       # user, item, one 0/1 column per task (the judged day's interactions)
    items: DataFrame      # item, popularity[, category] (the catalog as of the lists' day)
    logged: str           # the judged day
    ks: list[int]
    details: dict


def judged_day(cfg: JobConfig, ds: str) -> str:
    """The day whose interactions judge the lists of ``ds``: ds +
    ``evaluation.recommendations_label_offset_days``."""
    offset = cfg.evaluation.recommendations_label_offset_days
    return (parse_date(ds, "ds") + dt.timedelta(days=offset)).isoformat()


def judged_lists(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, ds: str,
                 versions: list[str]) -> JudgedLists:
    """Read the lists of ``versions`` for ``ds`` and the interactions of ds +
    ``evaluation.recommendations_label_offset_days``; a missing input is a one-line
    MissingInputError."""
    cat = spec.catalog
    if cat is None:
        raise InputError(f"the {spec.name} spec has no catalog section: there are no "
                         f"recommendations to evaluate")
    tb = DatasetTables(cfg, spec.name, spark)
    tb.preflight(inputs=("recommendations", "items", "features", "labels"))
    offset = cfg.evaluation.recommendations_label_offset_days
    logged = judged_day(cfg, ds)
    recs_t = tb["recommendations"]
    for v in versions:
        if not recs_t.exists(ds, model_version=v):
            raise MissingInputError(f"no recommendations of model_version {v} for {spec.name} "
                                    f"ds={ds} ({recs_t.where(ds, model_version=v)}); write them "
                                    f"with mmoe score --catalog")
    for name in ("features", "labels"):
        if not tb[name].exists(logged):
            raise MissingInputError(f"no {name} for {spec.name} ds={logged} (the day the "
                                    f"recommendations of {ds} are judged on: ds + "
                                    f"evaluation.recommendations_label_offset_days={offset})")
    user, item, keys, tasks = cat.user_key, cat.item_key, spec.key_names, spec.task_names
    lists = reduce(DataFrame.unionByName, [
        recs_t.read(spark, ds, [user, item, "rank"], model_version=v)
        .withColumn("model_version", F.lit(v)) for v in versions])
    logs = (tb["features"].read(spark, logged, list(dict.fromkeys(keys + [user, item])))
            .join(tb["labels"].read(spark, logged, keys + tasks), keys, "inner")
            .select(user, item, *tasks))
    snapshot = tb["items"].as_of(ds)  # the catalog as it was when the lists were made
    items = tb["items"].read(spark, snapshot.ds, [c for c in dict.fromkeys(
        [item, cat.rank_by, cat.category]) if c is not None])
    ks = sorted(set(cfg.evaluation.ranking_ks) | {cfg.scoring.catalog.top_k})
    return JudgedLists(lists, logs, items, logged, ks,
                       {"recommendations_judged_on": logged, "recommendation_ks": ks,
                        **snapshot_details([snapshot])})


def recommendation_metrics(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, ds: str,
                           versions: list[str]) -> tuple[list[Row], int, dict]:
    """The metrics of the recommendations written for ``ds`` by ``versions`` against the
    interactions logged on ds + ``evaluation.recommendations_label_offset_days``; returns the
    METRICS_STRUCT rows (a few per version and task, collected), the recommendation rows read
    and what the manifest says about them."""
    cat = spec.catalog
    judged = judged_lists(spark, cfg, spec, ds, versions)
    user, item, tasks = cat.user_key, cat.item_key, spec.task_names
    lists = judged.lists.persist()   # read by every task's join and every catalog figure
    try:
        rows = accuracy_rows(lists, judged.logs, tasks, user, item, judged.ks).unionByName(
            catalog_rows(spark, lists, judged.items, judged.logs, user, item, cat.rank_by,
                         cat.category)).collect()
        read = lists.count()
    finally:
        lists.unpersist()
    return rows, read, judged.details


def _ideal_dcg(k_max: int) -> list[float]:
    """ideal[i] = sum_{r <= i} 1 / log2(r + 1): the ideal DCG of i positives ranked first."""
    out, total = [0.0], 0.0
    for r in range(1, k_max + 1):
        total += 1.0 / math.log2(r + 1)
        out.append(total)
    return out


def user_accuracy(lists: DataFrame, logs: DataFrame, task: str, user: str, item: str,
                  ks: list[int]) -> tuple[DataFrame, list[str]]:
    """Per (model_version, user with a list and a positive of ``task``) the top-K accuracy
    figures (module docstring), and their names in display order."""
    ks = sorted(set(ks))
    ideal = F.array(*(F.lit(x) for x in _ideal_dcg(max(ks))))
    positives = logs.where(F.col(task) > 0).select(user, item).distinct()
    counts = positives.groupBy(user).agg(F.count(F.lit(1)).alias("_p"))
    hits = lists.join(positives, [user, item], "inner").groupBy("model_version", user).agg(
        *(F.sum((F.col("rank") <= k).cast("long")).alias(f"_h{k}") for k in ks),
        *(F.sum(F.when(F.col("rank") <= k, 1.0 / F.log2(F.col("rank") + 1.0))
                .otherwise(0.0)).alias(f"_d{k}") for k in ks))
    judged = (lists.select("model_version", user).distinct().join(counts, user, "inner")
              .join(hits, ["model_version", user], "left").na.fill(0))
    per_user = {}
    for k in ks:
        h, p = F.col(f"_h{k}").cast("double"), F.col("_p").cast("double")
        ideal_k = F.element_at(ideal, (F.least(F.col("_p"), F.lit(k)) + 1).cast("int"))
        per_user.update({f"recall@{k}": h / p, f"ndcg@{k}": F.col(f"_d{k}") / ideal_k,
                         f"hit_rate@{k}": (F.col(f"_h{k}") > 0).cast("double"),
                         f"precision@{k}": h / k})
    names = [f"{family}@{k}" for family in RECOMMENDATION_AT_K for k in ks]
    return judged.select("model_version", user, *(per_user[m].alias(m) for m in names)), names


def accuracy_rows(lists: DataFrame, logs: DataFrame, tasks: list[str], user: str, item: str,
                  ks: list[int]) -> DataFrame:
    """``lists``: model_version, user, item, rank; ``logs``: user, item, one 0/1 column per task.
    -> METRICS_STRUCT rows of recall / ndcg / hit_rate / precision @K per task."""
    out = []
    for t in tasks:
        values, names = user_accuracy(lists, logs, t, user, item, ks)
        means = values.groupBy("model_version").agg(
            F.count(F.lit(1)).alias("n"), *(F.avg(c).alias(c) for c in names))
        out.append(_long(means, t, names))
    return reduce(DataFrame.unionByName, out)


def catalog_rows(spark: SparkSession, lists: DataFrame, items: DataFrame, logs: DataFrame,
                 user: str, item: str, popularity: str, category: str | None) -> DataFrame:
    """coverage, exposure_gini, popularity_bias, diversity (with a category column), novelty
    per model version (module docstring). ``items``: item, popularity[, category]."""
    catalog_items = items.select(item).distinct().count()
    # percent_rank over the whole (small, broadcastable) catalog: one partition, on purpose
    percentile = items.select(item, F.percent_rank().over(
        Window.orderBy(F.col(popularity).asc_nulls_first())).alias("_pct"))
    shown_users = logs.select(user).distinct().count()
    shown = logs.select(user, item).distinct().groupBy(item).agg(F.count(F.lit(1)).alias("_u"))
    rows = (lists.join(percentile, item, "left").join(shown, item, "left")
            .withColumn("_info", -F.log2((F.coalesce(F.col("_u"), F.lit(0)) + 1.0)
                                         / F.lit(shown_users + 1.0))))
    per_version = rows.groupBy("model_version").agg(
        F.count(F.lit(1)).alias("_rows"), F.countDistinct(item).alias("_items"),
        F.avg("_pct").alias("popularity_bias"), F.avg("_info").alias("novelty")).collect()
    exposure = {}
    for r in lists.groupBy("model_version", item).count().collect():
        exposure.setdefault(r["model_version"], []).append(r["count"])
    out = []
    for r in per_version:
        v = r["model_version"]
        out += [(v, CATALOG_TASK, SEGMENT, "coverage", r["_items"] / catalog_items, catalog_items),
                (v, CATALOG_TASK, SEGMENT, "exposure_gini",
                 gini(exposure[v] + [0] * (catalog_items - len(exposure[v]))), catalog_items),
                (v, CATALOG_TASK, SEGMENT, "popularity_bias", r["popularity_bias"], r["_rows"]),
                (v, CATALOG_TASK, SEGMENT, "novelty", r["novelty"], r["_rows"])]
    frame = spark.createDataFrame(out, METRICS_STRUCT)
    if category is not None:
        frame = frame.unionByName(_diversity(lists.join(items.select(item, category), item, "left"),
                                             user, category))
    return frame


def gini(counts) -> float:
    """Gini coefficient of non-negative counts (0: equal exposure, -> 1: all on one item)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return float("nan")
    return float((2.0 * np.sum(np.arange(1, n + 1) * x)) / (n * total) - (n + 1.0) / n)


def _diversity(lists: DataFrame, user: str, category: str) -> DataFrame:
    cat = F.coalesce(F.col(category).cast("string"), F.lit("\x00null"))
    per_cat = lists.groupBy("model_version", user, cat.alias("_c")).agg(F.count(F.lit(1)).alias("_k"))
    per_list = per_cat.groupBy("model_version", user).agg(
        F.sum("_k").alias("_l"), F.sum(F.col("_k") * (F.col("_k") - 1)).alias("_same"))
    values = per_list.where(F.col("_l") >= 2).select(
        "model_version", (1.0 - F.col("_same") / (F.col("_l") * (F.col("_l") - 1))).alias("diversity"))
    means = values.groupBy("model_version").agg(F.count(F.lit(1)).alias("n"),
                                                 F.avg("diversity").alias("diversity"))
    return _long(means, CATALOG_TASK, ["diversity"])


def _long(means: DataFrame, task: str, names: list[str]) -> DataFrame:
    """A wide (model_version, n, metric columns) frame as METRICS_STRUCT rows."""
    stacked = F.explode(F.array(*(F.struct(F.lit(m).alias("metric"), F.col(m).cast("double")
                                           .alias("value")) for m in names))).alias("x")
    return means.select("model_version", "n", stacked).select(
        F.col("model_version").cast("string"), F.lit(task).alias("task"),
        F.lit(SEGMENT).alias("segment"), F.col("x.metric"), F.col("x.value"),
        F.col("n").cast("long")).select(*(F.col(f.name).cast(f.dataType) for f in METRICS_STRUCT))
