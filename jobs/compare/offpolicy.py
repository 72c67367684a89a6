"""The counterfactual section of ``mmoe compare``: score every request's candidate pool with
both models in one pass (the models shipped and built once per Python worker as for ``mmoe
score``), sum per user on the executors
(:func:`jobs.compare.counterfactual.user_sums`), estimate on the driver
(:func:`jobs.compare.counterfactual.policy_values`) -> the ``policy_values`` rows.

It runs where the range's features carry ``propensity`` and a ``candidates`` partition holds
the pools; elsewhere the section says why and nothing is estimated. The truth is known for
synth's pools (``candidate_truth/ds=D/``, path layout), null otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import reduce

import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.compare.counterfactual import (
    ARMS,
    METHOD,
    SUMS_SCHEMA,
    SumsConfig,
    policy_values,
    user_sums_batches,
)
from jobs.core.config import JobConfig
from jobs.core.errors import InputError
from jobs.core.spark import default_parallelism
from jobs.core.tables import DatasetTables
from jobs.core.warehouse import parquet_files
from jobs.runtime.kernel import ShippedModel, arrow_schema
from jobs.score.stage import load_model, spread_partitions
from schemas.spec import DatasetSpec

PROPENSITY = "propensity"
TRUTH_TABLE = "candidate_truth"
ROWS_PER_PARTITION = 250_000   # pool rows per partition of the per-user sums (memory)

POLICY_VALUES_SCHEMA = pa.schema([
    ("baseline", pa.string()), ("candidate", pa.string()), ("task", pa.string()),
    ("estimator", pa.string()), ("value", pa.float64()), ("ci_low", pa.float64()),
    ("ci_high", pa.float64()), ("ess", pa.float64()), ("n", pa.int64()), ("truth", pa.float64()),
    # beyond the contract
    ("arm", pa.string()), ("model_version", pa.string()), ("policy", pa.string()),
    ("se", pa.float64()), ("verdict", pa.string()), ("users", pa.int64()),
    ("clipped", pa.int64()), ("method", pa.string()), ("reward_model", pa.string()),
    ("max_weight", pa.float64()), ("temperature", pa.float64()), ("start", pa.date32()),
    ("end", pa.date32()),
])


@dataclass
class Counterfactual:
    """What the section found: ``status`` ``estimated``, ``no_propensities`` or ``disabled``."""

    status: str
    reason: str = ""
    days: list[str] = field(default_factory=list)
    table: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=POLICY_VALUES_SCHEMA.names))
    truth: bool = False

    def details(self) -> dict:
        out = {"status": self.status, "days": self.days, "truth": self.truth}
        if self.reason:
            out["reason"] = self.reason
        diffs = self.table[self.table["arm"] == "difference"] if len(self.table) else self.table
        out["verdicts"] = {f"{r['policy']}/{r['task']}/{r['estimator']}": r["verdict"]
                           for r in diffs.to_dict("records")}
        return out


def logged_days(spark: SparkSession, spec: DatasetSpec, tb: DatasetTables,
                days: list[str]) -> list[str]:
    """The days with a candidates partition and features that carry a propensity."""
    if PROPENSITY not in spec.features_table_columns:
        return []
    out = []
    for day in days:
        if not (tb["candidates"].exists(day) and tb["features"].exists(day)):
            continue
        logged = tb["features"].read(spark, day, [PROPENSITY]).where(
            F.col(PROPENSITY).isNotNull()).limit(1).count()
        if logged:
            out.append(day)
    return out


def _pool_day(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, tb: DatasetTables,
              models: dict, day: str) -> tuple[DataFrame, bool]:
    """One day's pools: u, r, key, shown, propensity, y_*, <arm>_*, q_* (when known). Both
    models score each Arrow batch in the same pass (:func:`pool_scorer`), so the pool is read
    once and no scored frame is joined back."""
    keys, tasks = spec.key_names, spec.task_names
    request, user = spec.request_column, spec.user_column
    columns = list(dict.fromkeys(keys + [request, user, PROPENSITY] + spec.feature_names))
    pool = tb["candidates"].read(spark, day, columns)
    carried = list(dict.fromkeys(keys + [request, user, PROPENSITY]))
    shipped = {arm: ShippedModel.for_job(spark, files, artifact, cfg.scoring)
               for arm, (files, artifact) in models.items()}
    out_schema = T.StructType(
        [f for f in pool.schema.fields if f.name in carried]
        + [T.StructField(f"{arm}_{t}", T.DoubleType()) for arm in models for t in tasks])
    frame = spread_partitions(spark, pool).mapInArrow(
        pool_scorer(shipped, spec.feature_names, carried, out_schema), out_schema) \
        .withColumnRenamed(PROPENSITY, "_pool")
    shown = tb["features"].read(spark, day, keys + [PROPENSITY]).where(
        F.col(PROPENSITY).isNotNull()).select(
        *keys, F.col(PROPENSITY).alias("_logged"), F.lit(True).alias("_shown"))
    labels = tb["labels"].read(spark, day, keys + tasks).select(
        *keys, *(F.col(t).alias(f"y_{t}") for t in tasks))
    # the logged impressions are a small share of the pools: broadcast, the pools stay put
    frame = frame.join(F.broadcast(shown.join(labels, keys, "left")), keys, "left")
    truth_dir = tb.wh.partition(spec.name, TRUTH_TABLE, day)
    has_truth = bool(parquet_files(truth_dir))
    q = []
    if has_truth:
        frame = frame.join(spark.read.parquet(str(truth_dir)).select(
            *keys, *(F.col(f"q_{t}") for t in tasks)), keys, "left")
        q = [f"q_{t}" for t in tasks]
    # ties in a ranking go to the lower key (a single long key), else to the lower key hash
    key = F.col(keys[0]) if [k.dtype for k in spec.keys] == ["long"] else F.xxhash64(*keys)
    return frame.select(
        F.xxhash64(F.col(user)).alias("u"), F.xxhash64(F.lit(day), F.col(request)).alias("r"),
        key.cast("long").alias("key"), F.coalesce(F.col("_shown"), F.lit(False)).alias("shown"),
        F.coalesce(F.col("_logged"), F.col("_pool")).cast("double").alias(PROPENSITY),
        *(f"y_{t}" for t in tasks), *(f"{arm}_{t}" for arm in models for t in tasks), *q), \
        has_truth


def pool_scorer(models: dict, features: list[str], carried: list[str], out_schema: T.StructType):
    """The ``mapInArrow`` body: per Arrow batch, the carried columns and every model's
    ``p_<task>`` as ``<arm>_<task>`` (each model built once per Python worker)."""
    schema = arrow_schema(out_schema)

    def score(batches):
        loaded = {arm: m.load() for arm, m in models.items()}
        for batch in batches:
            arrays = [batch.column(c) for c in carried]
            inputs = batch.select(features)
            for artifact in loaded.values():
                probs = artifact.predict(inputs)
                arrays += [pa.array(probs[:, i], type=pa.float64()) for i in range(probs.shape[1])]
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)

    return score


def counterfactual_section(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec,
                           tb: DatasetTables, refs: dict, versions: dict[str, str],
                           start: str, end: str, days: list[str]) -> Counterfactual:
    """The ``policy_values`` rows of baseline and candidate over ``days`` (module docstring);
    ``refs``/``versions``: arm -> model reference / resolved version."""
    cf = cfg.compare.counterfactual
    if not cf.enabled:
        return Counterfactual("disabled", "compare.counterfactual.enabled is false")
    if not spec.request_column or not spec.user_column:
        return Counterfactual("no_propensities", f"the {spec.name} spec names no request and "
                                                 f"user columns: there are no pools to re-rank")
    logged = logged_days(spark, spec, tb, days)
    if not logged:
        return Counterfactual("no_propensities", f"no day of {start}..{end} has logged "
                                                 f"propensities with a candidates table, so no "
                                                 f"off-policy estimate is made")
    models = {}
    for arm in ARMS:
        files, artifact, _ = load_model(cfg, spec, end, refs[arm])
        if artifact.model_version != versions[arm]:
            raise InputError(f"{arm} resolves to {artifact.model_version} for scoring the pools "
                             f"but to {versions[arm]} for its predictions")
        models[arm] = (files, artifact)
    frames = [_pool_day(spark, cfg, spec, tb, models, day) for day in logged]
    truth = all(has for _, has in frames)
    pool = reduce(DataFrame.unionByName, [f if truth else f.drop(*[c for c in f.columns
                                                                 if c.startswith("q_")])
                                          for f, _ in frames])
    rows = sum(tb["candidates"].count(day) for day in logged)
    parts = max(default_parallelism(spark), math.ceil(rows / ROWS_PER_PARTITION))
    parents = {child: parent for parent, child in spec.conditional_tasks}
    sums_cfg = SumsConfig(tasks=tuple(spec.task_names), parents=parents,
                          policies=tuple(cf.policies), temperature=cf.temperature,
                          max_weight=cf.max_weight, reward_arm=cf.reward_model, truth=truth)
    sums = pool.repartition(parts, "u").mapInPandas(
        lambda batches: user_sums_batches(batches, sums_cfg), SUMS_SCHEMA).toPandas()
    table = policy_values(sums, cfg.compare.alpha, truth)
    table = table.assign(
        baseline=versions["baseline"], candidate=versions["candidate"],
        model_version=table["arm"].map(versions), method=METHOD, reward_model=cf.reward_model,
        max_weight=cf.max_weight, temperature=cf.temperature,
        start=pd.Timestamp(start).date(), end=pd.Timestamp(end).date())
    if not truth:
        table["truth"] = None
    arms = {"logged": 0, "baseline": 1, "candidate": 2, "difference": 3}
    policies = {p: i for i, p in enumerate(["logged", *cf.policies])}
    table = table.assign(_p=table["policy"].map(policies), _a=table["arm"].map(arms),
                         _t=table["task"].map({t: i for i, t in enumerate(spec.task_names)}))
    table = table.sort_values(["_p", "_t", "_a", "estimator"]).reset_index(drop=True)
    return Counterfactual("estimated", days=logged, table=table[POLICY_VALUES_SCHEMA.names],
                          truth=truth)


__all__ = ["Counterfactual", "POLICY_VALUES_SCHEMA", "counterfactual_section", "logged_days"]
