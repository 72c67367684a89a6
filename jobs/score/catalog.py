"""Catalog scoring: (user, item) candidates → per-task probabilities, a fused score, top-K per user.

Inputs (keys and sides from the spec's ``catalog`` section, no column named here):

- a users table (``user_key`` + the user-side features), an items table (``item_key`` + the
  item-side features): ``<wh>/<dataset>/catalog/{users,items}/ds=S/``, point-in-time snapshots
  of which day D reads the latest S <= D (:meth:`jobs.core.tables.Table.as_of`; the choice is
  in the manifest, and an unpartitioned table is read whole with a warning there);
- candidates: a ``(user_key, item_key)`` table for the ds (``<wh>/<dataset>/candidates/ds=D``,
  e.g. from a retrieval stage) or, when there is none, "all items": every user × the catalog's
  ``scoring.catalog.max_items_per_user`` top items by ``catalog.rank_by``.

Features on neither side are context and null in catalog mode (the encoder's fill / index 0),
exactly as in a joined row. A candidate whose user or item has no row in its table gets null
features on that side (a left join).

Two ways to compute the same numbers (``scoring.catalog.method``):

- ``factored`` (default): the first layer of every expert and gate is linear in the
  concatenated input, so its user-side and item-side parts are computed once per user and once
  per item (:class:`mmoe_model.factored.FactoredModel`) and added per pair; the rest of the
  network runs per pair. No feature join, no wide row through the JVM, no per-pair encoding;
  the top-K is taken inside the Python worker (one user's candidates are in one task), so only
  K rows per user leave it. For "all items" the pairs are never materialised: a worker crosses
  its batch of users with the (broadcast, precomputed) items. Exact to ~1e-8 vs row scoring.
- ``rows``: join the features on, score the joined rows (``score_frame``), rank with a window.
  The fallback for archs the factored path does not know (``single-task``), and the reference.
  Also what ``scoring.precision`` bf16 / int8 runs (the factored path splits the float32 first
  layer itself); the manifest's ``details.method`` and ``details.precision`` say so.

Limits: the items table (and, with a candidates table, the users table) is collected to the
driver and broadcast as Arrow; a few million rows of a handful of columns is fine, beyond that
use ``method: rows``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.core.config import JobConfig
from jobs.core.errors import ConfigError, InputError, MissingInputError
from jobs.core.spark import default_parallelism, session_conf, ship
from jobs.core.tables import DatasetTables, snapshot_details
from jobs.runtime.kernel import ShippedModel, arrow_schema, utc_us
from jobs.runtime.worker import worker_cached
from jobs.score.stage import ScoreResult, load_model, make_scorer, spread_partitions
from mmoe_model.factored import FactoredModel, factorable
from schemas.spec import DatasetSpec
from schemas.tables import predictions_struct

_SPARK_TYPE = {"long": T.LongType(), "double": T.DoubleType(), "string": T.StringType()}


def catalog_spec(spec: DatasetSpec):
    if spec.catalog is None:
        raise ConfigError(f"catalog mode needs a catalog section (user_key, item_key, rank_by) "
                          f"in the {spec.name} spec")
    return spec.catalog


def catalog_sides(spec: DatasetSpec, user_columns: list[str],
                  item_columns: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The user-side and item-side features: the spec's lists, else the feature columns each
    table has. Refuses a listed feature its table lacks, and a feature on both sides."""
    cat = catalog_spec(spec)
    sides = []
    for listed, columns, table in ((cat.user_features, user_columns, "users"),
                                   (cat.item_features, item_columns, "items")):
        if listed:
            missing = [c for c in listed if c not in columns]
            if missing:
                raise MissingInputError(f"catalog {table} table lacks {missing} "
                                        f"(catalog.{table[:-1]}_features of the {spec.name} spec)")
            sides.append(tuple(listed))
        else:
            sides.append(tuple(f for f in spec.feature_names if f in columns))
    both = set(sides[0]) & set(sides[1])
    if both:
        raise ConfigError(f"catalog: {sorted(both)} are in both the users and the items table; "
                          f"list catalog.user_features / item_features in the spec")
    for key, side, table in ((cat.user_key, sides[0], "users"), (cat.item_key, sides[1], "items")):
        if key in spec.feature_names and key not in side:
            raise ConfigError(f"catalog: the key {key!r} is a feature but not on the {table} side")
    return sides[0], sides[1]


def output_schema(spec: DatasetSpec) -> T.StructType:
    """``user_key, rank, item_key, score, p_<task>..., scored_at``."""
    cat = catalog_spec(spec)
    return T.StructType(
        [T.StructField(cat.user_key, _key_type(spec, cat.user_key)),
         T.StructField("rank", T.IntegerType()),
         T.StructField(cat.item_key, _key_type(spec, cat.item_key)),
         T.StructField("score", T.DoubleType())]
        + [T.StructField(c, T.DoubleType()) for c in spec.prediction_columns]
        + [T.StructField("scored_at", T.TimestampType())])


def _key_type(spec: DatasetSpec, name: str) -> T.DataType:
    return _SPARK_TYPE[spec.column(name).dtype]


def fusion_weights(spec: DatasetSpec, weights: dict[str, float]) -> np.ndarray:
    unknown = set(weights) - set(spec.task_names)
    if unknown:
        raise ConfigError(f"scoring.catalog.fusion_weights names unknown task(s) {sorted(unknown)}")
    return np.array([float(weights.get(t, 1.0)) for t in spec.task_names])


def fuse_numpy(probs: np.ndarray, weights: np.ndarray, how: str) -> np.ndarray:
    """``product``: Π p_t ** w_t; ``sum``: Σ w_t · p_t (over the last axis)."""
    if how == "sum":
        return probs @ weights
    return np.prod(probs ** weights, axis=-1)


def fuse_column(spec: DatasetSpec, weights: np.ndarray, how: str):
    """The same fusion as a Spark column over ``p_<task>``."""
    expr = F.lit(0.0 if how == "sum" else 1.0)
    for column, w in zip(spec.prediction_columns, weights):
        expr = (expr + F.lit(float(w)) * F.col(column)) if how == "sum" \
            else expr * F.pow(F.col(column), F.lit(float(w)))
    return expr


# --------------------------------------------------------------------------------------------
# Factored path: pure DataFrame → DataFrame transforms; the model work runs in Python workers


def _keyed(table: pa.Table, key: str) -> tuple[pa.Table, Any]:
    """One row per key (the first), with a pandas index from key to row."""
    table = table.filter(pc.is_valid(table.column(key)))
    index = pd.Index(table.column(key).to_numpy(zero_copy_only=False))
    if index.has_duplicates:
        keep = np.flatnonzero(~index.duplicated())
        table, index = table.take(pa.array(keep)), index[keep]
    return table, index


def _take(table: pa.Table, index, keys: np.ndarray, key: str) -> pa.Table:
    """The rows of ``keys`` (null features for keys the table lacks, as in a left join; the key
    column itself, which may be a feature, is the candidate's key)."""
    rows = index.get_indexer(keys)
    taken = table.take(pa.array(rows, mask=rows < 0, type=pa.int64()))
    position = taken.schema.get_field_index(key)
    return taken.set_column(position, key, pa.array(keys, type=taken.schema.field(key).type))


def _block(user_keys: np.ndarray, item_keys: np.ndarray, probs: np.ndarray, ranks: np.ndarray, weights: np.ndarray, fusion: str, schema: pa.Schema,
           scored_at_us: np.datetime64) -> pa.RecordBatch:
    scores = fuse_numpy(probs, weights, fusion)
    arrays = [pa.array(user_keys), pa.array(ranks.astype(np.int32)), pa.array(item_keys),
              pa.array(scores, type=pa.float64())]
    arrays += [pa.array(np.ascontiguousarray(probs[:, t]), type=pa.float64())
               for t in range(probs.shape[1])]
    arrays.append(pa.array(np.full(len(ranks), scored_at_us), type=pa.timestamp("us", tz="UTC")))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _ranked(user_idx: np.ndarray, item_keys: np.ndarray, scores: np.ndarray,
            k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Row order (user, score desc, item asc) and the 1-based rank of each kept row."""
    order = np.lexsort((item_keys, -scores, user_idx))
    users = user_idx[order]
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(users)]))
    ranks = np.arange(len(users)) - first + 1
    keep = ranks <= k if k else np.ones(len(users), dtype=bool)
    return order[keep], ranks[keep]


class _Job:
    """What every factored task closes over (picklable: broadcast handles and plain values)."""

    def __init__(self, spark: SparkSession, files: dict[str, bytes], artifact, spec: DatasetSpec,
                 cfg: JobConfig, sides: tuple[tuple[str, ...], tuple[str, ...]],
                 scored_at: dt.datetime, top_k: int | None) -> None:
        cat, catalog = catalog_spec(spec), cfg.scoring.catalog
        # torch only: the factored first layer is the torch model's, split (not an ONNX graph)
        self.shipped = ShippedModel(spark, files, artifact.sha256, cfg.scoring.threads_per_task)
        self.sha = artifact.sha256
        self.user_key, self.item_key = cat.user_key, cat.item_key
        self.user_cols, self.item_cols = sides
        self.weights = fusion_weights(spec, catalog.fusion_weights)
        self.fusion, self.top_k = catalog.fusion, top_k
        self.threads, self.chunk = cfg.scoring.threads_per_task, max(cfg.scoring.batch_size, 1024)
        self.schema = arrow_schema(output_schema(spec))
        self.scored_at_us = utc_us(scored_at)
        self.token = uuid.uuid4().hex  # names this job's broadcast tables in the worker cache

    def model(self):
        art = self.shipped.load()
        return worker_cached(("factored", self.sha, self.user_cols, self.item_cols),
                             lambda: FactoredModel(art, self.user_cols, self.item_cols))

    def emit(self, user_keys, item_keys, user_idx, probs) -> pa.RecordBatch:
        order, ranks = _ranked(user_idx, item_keys, fuse_numpy(probs, self.weights, self.fusion),
                               self.top_k)
        return _block(user_keys[order], item_keys[order], probs[order], ranks,
                      self.weights, self.fusion, self.schema, self.scored_at_us)


def recommend_grid(spark: SparkSession, users: DataFrame, items: pa.Table, files, artifact,
                   spec: DatasetSpec, cfg: JobConfig, scored_at: dt.datetime,
                   top_k: int | None) -> DataFrame:
    """Every user of ``users`` × every item of ``items`` (a small catalog, broadcast), factored;
    the ``top_k`` items per user (all, ranked, when None). Pure transform."""
    user_cols, item_cols = catalog_sides(spec, users.columns, items.column_names)
    job = _Job(spark, files, artifact, spec, cfg, (user_cols, item_cols), scored_at, top_k)
    items_bc = ship(spark, _keyed(items.select(
        list(dict.fromkeys([job.item_key, *item_cols]))), job.item_key)[0])

    def item_block(fm):
        table = items_bc.value
        table = table.take(pc.sort_indices(table, [(job.item_key, "ascending")]))
        keys = table.column(job.item_key).to_numpy(zero_copy_only=False)
        return keys, fm.side(table, "item") + fm.constant

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        fm = job.model()
        item_keys, item_pre = worker_cached(("items", job.token), lambda: item_block(fm))
        n_items = len(item_keys)
        per = max(1, job.chunk // max(n_items, 1))
        for batch in batches:
            batch = batch.filter(pc.is_valid(batch.column(job.user_key)))
            if not batch.num_rows or not n_items:
                continue
            user_pre = fm.side(batch, "user")
            keys = batch.column(job.user_key).to_numpy(zero_copy_only=False)
            for start in range(0, batch.num_rows, per):
                block = user_pre[start:start + per]
                with torch.inference_mode():
                    pre = (block.unsqueeze(1) + item_pre.unsqueeze(0)).reshape(-1, fm.width)
                probs = fm.probabilities(pre)
                u = np.repeat(np.arange(block.shape[0]), n_items)
                yield job.emit(np.repeat(keys[start:start + per], n_items),
                               np.tile(item_keys, block.shape[0]), u, probs)

    columns = list(dict.fromkeys([job.user_key, *user_cols]))
    return spread_partitions(spark, users.select(*columns)).mapInArrow(run, output_schema(spec))


def recommend_candidates(spark: SparkSession, candidates: DataFrame, users: pa.Table,
                         items: pa.Table, files, artifact, spec: DatasetSpec, cfg: JobConfig,
                         scored_at: dt.datetime, top_k: int | None) -> DataFrame:
    """The ``(user_key, item_key)`` pairs of ``candidates``, factored, with the user and item
    feature tables broadcast; the ``top_k`` items per user (all, ranked, when None). Candidates
    are clustered by user first (one narrow shuffle) so each user's top-K is taken in one task.
    Pure transform."""
    user_cols, item_cols = catalog_sides(spec, users.column_names, items.column_names)
    job = _Job(spark, files, artifact, spec, cfg, (user_cols, item_cols), scored_at, top_k)
    users_bc = ship(spark, _keyed(users.select(
        list(dict.fromkeys([job.user_key, *user_cols]))), job.user_key))
    items_bc = ship(spark, _keyed(items.select(
        list(dict.fromkeys([job.item_key, *item_cols]))), job.item_key))

    def score(fm, pairs: pa.Table) -> Iterator[pa.RecordBatch]:
        if not pairs.num_rows:
            return
        u = pairs.column(job.user_key).to_numpy(zero_copy_only=False)
        i = pairs.column(job.item_key).to_numpy(zero_copy_only=False)
        uu, u_inv = np.unique(u, return_inverse=True)
        iu, i_inv = np.unique(i, return_inverse=True)
        user_pre = fm.side(_take(*users_bc.value, uu, job.user_key), "user")
        item_pre = fm.side(_take(*items_bc.value, iu, job.item_key), "item") + fm.constant
        probs = []
        for start in range(0, len(u), job.chunk):
            with torch.inference_mode():
                pre = (user_pre[torch.from_numpy(u_inv[start:start + job.chunk])]
                       + item_pre[torch.from_numpy(i_inv[start:start + job.chunk])])
            probs.append(fm.probabilities(pre))
        yield job.emit(u, i, u_inv, np.concatenate(probs))

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        fm = job.model()
        carry: list[pa.RecordBatch] = []
        for batch in batches:
            if not batch.num_rows:
                continue
            # the partition is sorted by user: hold back the last user (it may continue)
            keys = batch.column(job.user_key).to_numpy(zero_copy_only=False)
            other = np.flatnonzero(keys != keys[-1])
            cut = int(other[-1]) + 1 if len(other) else 0
            if cut:
                yield from score(fm, pa.Table.from_batches(carry + [batch.slice(0, cut)]))
                carry = []
            carry.append(batch.slice(cut))
        if carry:
            yield from score(fm, pa.Table.from_batches(carry))

    user, item = job.user_key, job.item_key
    pairs = (candidates.select(user, item).where(F.col(user).isNotNull() & F.col(item).isNotNull())
             .repartition(default_parallelism(spark), user)
             .sortWithinPartitions(user, item))
    return pairs.mapInArrow(run, output_schema(spec))


# --------------------------------------------------------------------------------------------
# Row path: join the features on, score the joined rows, rank with a window


def joined_rows(pairs: DataFrame, users: DataFrame, items: DataFrame,
                spec: DatasetSpec) -> DataFrame:
    """Candidate pairs with the user and item features joined on (left joins) and every other
    feature null: the rows the model would see. The spec's row key (absent in catalog mode) is
    a hash of the pair."""
    cat = catalog_spec(spec)
    user_cols, item_cols = catalog_sides(spec, users.columns, items.columns)
    user, item = cat.user_key, cat.item_key
    frame = (pairs.select(user, item)
             .join(users.select(*dict.fromkeys([user, *user_cols])), on=user, how="left")
             .join(items.select(*dict.fromkeys([item, *item_cols])), on=item, how="left"))
    present = set(frame.columns)
    columns = [F.xxhash64(user, item).alias(k.name) for k in spec.keys if k.name not in present]
    columns += [F.col(c) for c in (user, item) if c not in spec.feature_names]
    for feat in spec.features:
        spark_type = _SPARK_TYPE[feat.dtype]
        columns.append(F.col(feat.name).cast(spark_type).alias(feat.name) if feat.name in present
                       else F.lit(None).cast(spark_type).alias(feat.name))
    return frame.select(*columns)


def grid_pairs(users: DataFrame, items: DataFrame, spec: DatasetSpec, max_items: int) -> DataFrame:
    """"All items": every user × the catalog's ``max_items`` top items by ``catalog.rank_by``
    (ties: lower item key)."""
    cat = catalog_spec(spec)
    top = top_items_frame(items, spec, max_items)
    return users.select(cat.user_key).crossJoin(F.broadcast(top.select(cat.item_key)))


def recommend_rows(spark: SparkSession, pairs: DataFrame, users: DataFrame, items: DataFrame,
                   files, artifact, spec: DatasetSpec, cfg: JobConfig, scored_at: dt.datetime,
                   top_k: int | None) -> DataFrame:
    """Row scoring of the joined candidates, fused, ranked per user (ties: lower item key)."""
    cat, catalog = catalog_spec(spec), cfg.scoring.catalog
    user, item = cat.user_key, cat.item_key
    rows = joined_rows(pairs, users, items, spec)
    pair_columns = (user, item)
    base = predictions_struct(spec)
    out_schema = T.StructType(base.fields[: len(spec.keys)]
                              + [T.StructField(user, _key_type(spec, user)),
                                 T.StructField(item, _key_type(spec, item))]
                              + base.fields[len(spec.keys):])
    shipped = ShippedModel.for_job(spark, files, artifact, cfg.scoring)
    scorer = make_scorer(shipped, spec, spec.feature_names, out_schema, scored_at, False,
                         extra_columns=pair_columns)
    scored = spread_partitions(spark, rows).mapInArrow(scorer, out_schema)
    weights = fusion_weights(spec, catalog.fusion_weights)
    fused = scored.withColumn("score", fuse_column(spec, weights, catalog.fusion))
    rank = F.row_number().over(Window.partitionBy(user).orderBy(F.col("score").desc(), item))
    ranked = fused.withColumn("rank", rank)
    if top_k:
        ranked = ranked.where(F.col("rank") <= top_k)
    return ranked.select(user, "rank", item, "score", *spec.prediction_columns, "scored_at")


# --------------------------------------------------------------------------------------------
# The job


def score_catalog(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, ds: str, model):
    """Score the ds's candidates (or users × the top catalog items) and write the top-K items
    per user to ``recommendations/ds=D/model_version=V``. ``model``: a directory, a registered
    version or ``@alias`` (see :func:`jobs.score.stage.load_model`)."""
    files, artifact, _ = load_model(cfg, spec, ds, model)
    catalog_spec(spec)
    catalog = cfg.scoring.catalog
    fusion_weights(spec, catalog.fusion_weights)  # refuse unknown tasks before any work
    tb = DatasetTables(cfg, spec.name, spark)
    tb.preflight(inputs=("users", "items", "candidates"), outputs=("recommendations",))
    wh, users_t, items_t, candidates_t = tb.wh, tb["users"], tb["items"], tb["candidates"]
    snapshots = {t.table: t.as_of(ds) for t in (users_t, items_t)}
    at_user, at_item = snapshots["users"].ds, snapshots["items"].ds
    has_candidates = candidates_t.exists(ds)
    method = catalog.method
    if method == "factored" and artifact.imported:
        raise InputError(f"{artifact.model_version} is an imported ONNX graph: the factored "
                         f"catalog method needs a trained model's layers; set "
                         f"scoring.catalog.method: rows")
    if method == "factored" and not factorable(artifact.model, artifact.spec):
        method = "rows"  # e.g. single-task: one input layer per task
    precision = cfg.scoring.precision
    if method == "factored" and precision != "fp32":
        # the factored path splits the float32 first layer itself (mmoe_model.factored):
        # a bf16 / int8 pass scores the joined rows through the converted model instead
        method = "rows"
    scored_at = dt.datetime.now(dt.timezone.utc)
    users_df = users_t.read(spark, at_user)
    version = artifact.model_version
    out = tb["recommendations"].where(ds, model_version=version)
    with session_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch":
                              str(cfg.scoring.batch_size)}), \
            wh.lock(spec.name, "recommendations", ds, artifact.model_version,
                    wait_seconds=cfg.locks.wait_seconds, poll_seconds=cfg.locks.poll_seconds), \
            tb["recommendations"].writing(spark, ds, model_version=version) as staged:
        if method == "factored" and has_candidates:
            recs = recommend_candidates(
                spark, candidates_t.read(spark, ds), users_t.read_arrow(at_user),
                items_t.read_arrow(at_item), files, artifact, spec, cfg, scored_at,
                catalog.top_k)
        elif method == "factored":
            top_items = top_items_frame(items_t.read(spark, at_item), spec,
                                   catalog.max_items_per_user)
            recs = recommend_grid(spark, users_df, top_items.toArrow(), files, artifact, spec,
                                  cfg, scored_at, catalog.top_k)
        else:
            items_df = items_t.read(spark, at_item)
            pairs = (candidates_t.read(spark, ds) if has_candidates
                     else grid_pairs(users_df, items_df, spec, catalog.max_items_per_user))
            recs = recommend_rows(spark, pairs, users_df, items_df, files, artifact, spec, cfg,
                                  scored_at, catalog.top_k)
        recs.write.mode("overwrite").parquet(str(staged.dir))
    written = staged.rows
    pairs_in = (candidates_t.count(ds) if has_candidates  # footers: no pass over the data
                else users_t.count(at_user) * min(items_t.count(at_item),
                                                  catalog.max_items_per_user))
    return ScoreResult(artifact.model_version, artifact.sha256, input_rows=pairs_in,
                       output_rows=written, quarantined_rows=0, output=out,
                       table="recommendations",
                       details={"top_k": catalog.top_k, "method": method,
                                "precision": precision,
                                "candidates": "table" if has_candidates else "all_items",
                                "max_items_per_user": catalog.max_items_per_user,
                                "fusion": catalog.fusion,
                                **snapshot_details(list(snapshots.values()))})


def top_items_frame(items: DataFrame, spec: DatasetSpec, max_items: int) -> DataFrame:
    """The catalog's ``max_items`` top items by ``catalog.rank_by`` (ties: lower item key)."""
    cat = catalog_spec(spec)
    return items.orderBy(F.col(cat.rank_by).desc(), F.col(cat.item_key)).limit(max_items)
