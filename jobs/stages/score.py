"""Score stage: the validated rows of a ds → ``predictions/ds=D/model_version=V``.

Read (the artifact, verified; the validation status; the features partition, all through
jobs/warehouse.py) → transform (:func:`score_frame` / :func:`score_fragments`, the model on
Arrow batches) → write (:func:`jobs.warehouse.replacing`: staged, then swapped in whole).

How the model reaches the executors: the artifact's files (a few hundred KB) are broadcast once;
each Python worker verifies their SHA-256 manifest and builds the model once, caching it by
checksum for every later batch and task (workers are reused). Batches arrive as Arrow record
batches through ``mapInArrow``; the encoder turns their columns into tensors with numpy, with no
per-row Python. The output partition is staged and swapped in, so a rerun replaces exactly its
(ds, model_version) partition and a crash never leaves half of one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.config import JobConfig
from jobs.errors import ConfigError, MissingInputError, NotValidated
from jobs.manifest import RunRecord
from jobs.faults import active_faults, after_first_batch
from jobs.spark import session_conf
from jobs.warehouse import (
    Warehouse, count_rows, discard_hidden, parquet_files, read_table, replacing,
)
from schemas.spec import DatasetSpec
from schemas.tables import predictions_struct

_WORKER_MODELS: dict[str, Any] = {}  # sha256 -> ModelArtifact, one per Python worker process


def load_artifact(model_dir: Path):
    """Read and verify an artifact on the driver (fails fast before any Spark work)."""
    from mmoe_model.artifact import ModelArtifact, read_artifact_files

    if not Path(model_dir).is_dir():
        raise MissingInputError(f"--model {model_dir} is not an artifact directory")
    files = read_artifact_files(model_dir)
    return files, ModelArtifact.from_files(files)


def _worker_artifact(files: dict[str, bytes], sha256: str):
    artifact = _WORKER_MODELS.get(sha256)
    if artifact is None:
        from mmoe_model.artifact import ModelArtifact

        artifact = ModelArtifact.from_files(files)  # verifies every checksum on the executor
        _WORKER_MODELS.clear()  # keep one model per worker: a new version evicts the old one
        _WORKER_MODELS[sha256] = artifact
    return artifact


def _set_threads(threads_per_task: int) -> None:
    import torch
    from pyspark import TaskContext

    ctx = TaskContext.get()
    threads = threads_per_task or (ctx.cpus() if ctx is not None else 1)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def score_batch(artifact, batch: pa.RecordBatch, input_columns: list[str], keys: list[str],
                num_tasks: int, arrow_schema: pa.Schema, scored_at_us: np.datetime64,
                with_gates: bool) -> pa.RecordBatch:
    """keys + p_<task> (+ scored_at, gate_<task>) for one Arrow batch; columnar end to end."""
    frame = batch.select(input_columns)  # Arrow straight to the encoder, no pandas
    if with_gates:
        probs, gates = artifact.predict(frame, with_gates=True)
    else:
        probs, gates = artifact.predict(frame), None
    arrays = [batch.column(k) for k in keys]
    arrays += [pa.array(probs[:, i], type=pa.float64()) for i in range(num_tasks)]
    arrays.append(pa.array(np.full(batch.num_rows, scored_at_us), type=pa.timestamp("us", tz="UTC")))
    if with_gates:
        arrays += [_gate_array(gates[:, i, :], batch.num_rows) for i in range(num_tasks)]
    return pa.RecordBatch.from_arrays(arrays, schema=arrow_schema)


def _utc_us(scored_at: dt.datetime) -> np.datetime64:
    return np.datetime64(scored_at.astimezone(dt.timezone.utc).replace(tzinfo=None), "us")


def make_scorer(spark: SparkSession, files: dict[str, bytes], sha256: str, spec: DatasetSpec,
                input_columns: list[str], out_schema: T.StructType, scored_at: dt.datetime,
                with_gates: bool, threads_per_task: int,
                extra_columns: tuple[str, ...] = ()) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function handed to ``mapInArrow``. It closes over the broadcast handle only."""
    broadcast = spark.sparkContext.broadcast(files)
    keys = spec.key_names + list(extra_columns)
    num_tasks = len(spec.tasks)
    arrow_schema = _arrow_schema(out_schema)
    scored_at_us = _utc_us(scored_at)

    faults = active_faults()  # off by default (jobs/faults.py)

    def score_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        artifact = _worker_artifact(broadcast.value, sha256)
        _set_threads(threads_per_task)
        done = 0
        for batch in batches:
            if batch.num_rows:
                yield score_batch(artifact, batch, input_columns, keys, num_tasks, arrow_schema,
                                  scored_at_us, with_gates)
                done += 1
                if done == 1:
                    after_first_batch(faults)

    return score_batches


def _gate_array(gates: np.ndarray, rows: int) -> pa.Array:
    """[B, E] gate weights → a list<float> column (null for archs without gates)."""
    if gates.size == 0:
        return pa.nulls(rows, type=pa.list_(pa.float32()))
    flat = pa.array(np.ascontiguousarray(gates, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, rows * gates.shape[1] + 1, gates.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


def _arrow_schema(schema: T.StructType) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(schema)


def score_frame(spark: SparkSession, frame: DataFrame, files: dict[str, bytes], artifact,
                spec: DatasetSpec, cfg: JobConfig, scored_at: dt.datetime,
                with_gates: bool = False) -> DataFrame:
    """Pure transform: keys + features → keys + p_<task> + scored_at (+ gate_<task>)."""
    out_schema = predictions_struct(spec, with_gates=with_gates)
    scorer = make_scorer(spark, files, artifact.sha256, spec, spec.feature_names, out_schema,
                         scored_at, with_gates, cfg.scoring.threads_per_task)
    needed = list(dict.fromkeys(spec.key_names + spec.feature_names))
    return frame.select(*needed).mapInArrow(scorer, out_schema)


# --------------------------------------------------------------------------------------------
# Direct path: Spark schedules, the Python workers read and write parquet themselves.
#
# Measured on 2 cores (docs/performance.md): through mapInArrow, Spark's conversion of rows to
# Arrow for ~27 columns costs about 3x the model itself. When the input is a parquet partition
# the executors can open, each task instead reads one row group with pyarrow (columnar, no row
# conversion), scores it and writes one parquet file into a staging directory; the driver then
# swaps the staging directory in for the partition, so a rerun still replaces it whole.


def parquet_fragments(directory: Path) -> list[tuple[str, int]]:
    """(file, row group) pairs of a partition directory: the unit of parallel work."""
    import pyarrow.parquet as pq

    fragments = []
    for path in parquet_files(directory):
        fragments += [(str(path), rg) for rg in range(pq.ParquetFile(path).metadata.num_row_groups)]
    return fragments


def quarantined_keys(cfg: JobConfig, spec: DatasetSpec, ds: str) -> np.ndarray | None:
    """The keys validation quarantined for ``ds`` (single-key specs), or None when none were."""
    directory = Warehouse(cfg.warehouse).partition(spec.name, "quarantine", ds)
    if not parquet_files(directory):
        return None
    keys = read_table(directory, columns=spec.key_names).column(0)
    return keys.drop_null().unique().to_numpy(zero_copy_only=False)


def score_fragments(spark: SparkSession, fragments: list[tuple[str, int]], files: dict[str, bytes],
                    artifact, spec: DatasetSpec, cfg: JobConfig, staging: Path,
                    scored_at: dt.datetime, with_gates: bool,
                    excluded: np.ndarray | None) -> int:
    """Score every fragment into ``staging/part-NNNNN.parquet``; returns the rows written.
    Rows with a null key or a key in ``excluded`` (the quarantine) are left out. Direct scoring
    needs a single key column (``_direct_reader_applies``)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    sc = spark.sparkContext
    files_bc = sc.broadcast(files)
    excluded_bc = sc.broadcast(excluded)
    sha256, keys, features = artifact.sha256, spec.key_names, spec.feature_names
    columns = list(dict.fromkeys(keys + features))
    arrow_schema = _arrow_schema(predictions_struct(spec, with_gates=with_gates))
    num_tasks, batch_size = len(spec.tasks), cfg.scoring.batch_size
    threads, scored_at_us, out_dir = cfg.scoring.threads_per_task, _utc_us(scored_at), str(staging)

    faults = active_faults()  # off by default (jobs/faults.py)

    def run(items: Iterator[tuple[int, tuple[str, int]]]) -> Iterator[int]:
        import os

        from pyspark import TaskContext

        model = _worker_artifact(files_bc.value, sha256)
        _set_threads(threads)
        skip = excluded_bc.value
        skip_set = None if skip is None else pa.array(skip)
        ctx = TaskContext.get()
        attempt = f"{ctx.stageId()}-{ctx.attemptNumber()}" if ctx is not None else "0"
        done = 0
        for index, (path, row_group) in items:
            written = 0
            # Streamed batch by batch: worker memory stays flat whatever the row group's size.
            batches = pq.ParquetFile(path).iter_batches(batch_size=batch_size, row_groups=[row_group],
                                                        columns=columns)
            # Each attempt writes a hidden file and renames it into place when complete: a
            # worker killed mid-file leaves hidden debris, never a visible partial part file.
            final = f"{out_dir}/part-{index:05d}.parquet"
            partial = f"{out_dir}/.part-{index:05d}-{attempt}.parquet.tmp"
            with pq.ParquetWriter(partial, arrow_schema) as writer:
                for batch in batches:
                    keep = pc.is_valid(batch.column(keys[0]))
                    if skip_set is not None:
                        keep = pc.and_(keep, pc.invert(pc.is_in(batch.column(keys[0]), value_set=skip_set)))
                    batch = batch.filter(keep)
                    if batch.num_rows:
                        writer.write_batch(score_batch(model, batch, features, keys, num_tasks,
                                                       arrow_schema, scored_at_us, with_gates))
                        written += batch.num_rows
                        done += 1
                        if done == 1:
                            after_first_batch(faults)
            os.replace(partial, final)
            yield written

    staging.mkdir(parents=True, exist_ok=True)
    work = sc.parallelize(list(enumerate(fragments)), max(len(fragments), 1))
    written = sum(work.mapPartitions(run).collect())
    discard_hidden(staging)  # partial files of failed attempts
    return written


def _direct_reader_applies(cfg: JobConfig, spec: DatasetSpec, features_dir: Path) -> bool:
    return (cfg.scoring.reader == "direct" and len(spec.keys) == 1
            and features_dir.is_dir() and bool(parquet_fragments(features_dir)))


def spread_partitions(spark: SparkSession, frame: DataFrame) -> DataFrame:
    """Give every core work: a single big file would otherwise be one task on one core."""
    parallelism = spark.sparkContext.defaultParallelism
    if frame.rdd.getNumPartitions() < parallelism:
        return frame.repartition(parallelism)
    return frame


@dataclass
class ScoreResult:
    """What a score (or catalog) run produced."""

    model_version: str
    model_sha256: str
    input_rows: int            # rows that passed validation (catalog: candidate pairs)
    output_rows: int           # rows written
    quarantined_rows: int
    output: Path
    details: dict[str, Any] = field(default_factory=dict)
    table: str = "predictions"

    def record(self) -> RunRecord:
        return RunRecord(input_rows=self.input_rows, output_rows=self.output_rows,
                         quarantined_rows=self.quarantined_rows, model_version=self.model_version,
                         model_sha256=self.model_sha256, outputs={self.table: str(self.output)},
                         details=dict(self.details))


def score_partition(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, ds: str,
                    model_dir: Path, with_gates: bool = False) -> ScoreResult:
    """Score the rows of ``ds`` that passed validation into its predictions partition."""
    files, artifact = load_artifact(model_dir)
    artifact.check_spec(spec)
    model = {"model_version": artifact.model_version, "model_sha256": artifact.sha256}
    try:
        rows, status, inline = _validated_rows(spark, cfg, spec, ds)  # refuses an unvalidated ds
    except NotValidated as exc:
        raise NotValidated(str(exc), details=model) from None
    scored_at = dt.datetime.now(dt.timezone.utc)  # one stamp for the whole run
    wh = Warehouse(cfg.warehouse)
    features_dir = wh.partition(spec.name, "features", ds)
    out = wh.partition(spec.name, "predictions", ds, model_version=artifact.model_version)
    details: dict[str, Any] = {"with_gates": with_gates}
    if inline is not None:
        details["inline_validation"] = inline
    with replacing(out) as staging:
        if _direct_reader_applies(cfg, spec, features_dir):
            written = score_fragments(
                spark, parquet_fragments(features_dir), files, artifact, spec, cfg, staging,
                scored_at, with_gates, quarantined_keys(cfg, spec, ds))
            details["reader"] = "direct"
        else:
            with session_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch":
                                      str(cfg.scoring.batch_size)}):
                predictions = score_frame(spark, spread_partitions(spark, rows), files,
                                          artifact, spec, cfg, scored_at, with_gates)
                predictions.write.mode("overwrite").parquet(str(staging))
            written = count_rows(staging)
            details["reader"] = "spark"
    return ScoreResult(artifact.model_version, artifact.sha256,
                       input_rows=int(status.get("passed_rows", 0)), output_rows=written,
                       quarantined_rows=int(status.get("quarantined_rows", 0)), output=out,
                       details=details)


def _validated_rows(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec,
                    ds: str) -> tuple[DataFrame, dict[str, Any], dict[str, int] | None]:
    """The rows that passed validation and their status; validates first when configured to
    (``scoring.validate_inline``) and the ds was never validated."""
    from jobs.stages.validate import passed_rows, read_status, validate_partition

    inline = None
    try:
        rows = passed_rows(spark, cfg, spec, ds)
    except NotValidated:
        if not cfg.scoring.validate_inline:
            raise
        report = validate_partition(spark, cfg, spec, ds)
        inline = {"input_rows": report.input_rows, "quarantined_rows": report.quarantined_rows}
        rows = passed_rows(spark, cfg, spec, ds)
    return rows, read_status(cfg, spec, ds) or {}, inline


# --------------------------------------------------------------------------------------------
# Catalog mode


def catalog_candidates(users: DataFrame, items: DataFrame, spec: DatasetSpec,
                       max_items_per_user: int) -> DataFrame:
    """Users × the catalog's ``max_items_per_user`` top items by the spec's ``catalog.rank_by``.

    Columns the catalog does not know (context features such as the hour) are null: the model's
    encoder maps them to its null handling (``fill`` for dense, index 0 for categoricals).
    """
    catalog = _catalog_spec(spec)
    user, item = catalog.user_key, catalog.item_key
    top_items = (items.orderBy(F.col(catalog.rank_by).desc(), F.col(item))
                 .limit(max_items_per_user))
    pairs = users.crossJoin(F.broadcast(top_items))
    present = set(pairs.columns)
    columns = []
    for key in spec.keys:
        if key.name not in present:  # a synthetic key per (user, item) pair
            columns.append(F.xxhash64(user, item).alias(key.name))
    for feat in spec.features:
        spark_type = "double" if feat.kind == "dense" else ("bigint" if feat.dtype == "long" else "string")
        if feat.name in present:
            columns.append(F.col(feat.name).cast(spark_type).alias(feat.name))
        else:
            columns.append(F.lit(None).cast(spark_type).alias(feat.name))
    return pairs.select(*columns)


def _catalog_spec(spec: DatasetSpec):
    if spec.catalog is None:
        raise ConfigError(f"catalog mode needs a catalog section (user_key, item_key, rank_by) "
                          f"in the {spec.name} spec")
    return spec.catalog


def fuse(probabilities: dict[str, Any], weights: dict[str, float]):
    """Weighted product of task probabilities, as a Spark column: Π p_t ** w_t (w default 1)."""
    expr = F.lit(1.0)
    for task, column in probabilities.items():
        expr = expr * F.pow(column, F.lit(float(weights.get(task, 1.0))))
    return expr


def top_k_per_user(scored: DataFrame, spec: DatasetSpec, weights: dict[str, float],
                   k: int) -> DataFrame:
    """Pure transform: fused score, then the ``k`` best items per user (ties: lower item id)."""
    from pyspark.sql import Window

    user, item = _catalog_spec(spec).user_key, _catalog_spec(spec).item_key
    fused = scored.withColumn(
        "score", fuse({t: F.col(spec.prediction_column(t)) for t in spec.task_names}, weights))
    rank = F.row_number().over(Window.partitionBy(user).orderBy(F.col("score").desc(), item))
    return (fused.withColumn("rank", rank).where(F.col("rank") <= k)
            .select(user, "rank", item, "score", *spec.prediction_columns, "scored_at"))


def score_catalog(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, ds: str,
                  model_dir: Path) -> ScoreResult:
    """Score users × catalog items and write the top-K items per user to ``recommendations``."""
    files, artifact = load_artifact(model_dir)
    artifact.check_spec(spec)
    catalog_spec = _catalog_spec(spec)
    wh = Warehouse(cfg.warehouse)
    users_dir, items_dir = wh.catalog(spec.name, "users"), wh.catalog(spec.name, "items")
    if not parquet_files(users_dir) or not parquet_files(items_dir):
        raise MissingInputError(f"catalog mode needs {users_dir} and {items_dir} "
                                f"(written by `mmoe data synth`)")
    catalog = cfg.scoring.catalog
    unknown = set(catalog.fusion_weights) - set(spec.task_names)
    if unknown:
        raise MissingInputError(f"scoring.catalog.fusion_weights names unknown task(s) {sorted(unknown)}")
    candidates = catalog_candidates(spark.read.parquet(str(users_dir)),
                                    spark.read.parquet(str(items_dir)), spec,
                                    catalog.max_items_per_user)
    pair_columns = (catalog_spec.user_key, catalog_spec.item_key)
    base = predictions_struct(spec)
    out_schema = T.StructType(base.fields[: len(spec.keys)]
                              + [T.StructField(c, T.LongType()) for c in pair_columns]
                              + base.fields[len(spec.keys):])
    scorer = make_scorer(spark, files, artifact.sha256, spec, spec.feature_names, out_schema,
                         dt.datetime.now(dt.timezone.utc), False, cfg.scoring.threads_per_task,
                         extra_columns=pair_columns)
    out = wh.partition(spec.name, "recommendations", ds, model_version=artifact.model_version)
    with session_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch":
                              str(cfg.scoring.batch_size)}), replacing(out) as staging:
        scored = spread_partitions(spark, candidates).mapInArrow(scorer, out_schema)
        top_k_per_user(scored, spec, catalog.fusion_weights, catalog.top_k) \
            .write.mode("overwrite").parquet(str(staging))
        written = count_rows(staging)
    # users x min(items, cap) candidates, from the parquet footers: no second pass over the join
    pairs = count_rows(users_dir) * min(count_rows(items_dir), catalog.max_items_per_user)
    return ScoreResult(artifact.model_version, artifact.sha256, input_rows=pairs,
                       output_rows=written, quarantined_rows=0, output=out,
                       table="recommendations",
                       details={"top_k": catalog.top_k,
                                "max_items_per_user": catalog.max_items_per_user})
