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
from pyspark.sql import types as T

from jobs.config import JobConfig
from jobs.errors import MissingInputError, NotValidated
from jobs.manifest import RunRecord
from jobs.faults import active_faults, after_first_batch
from jobs.spark import session_conf
from jobs.warehouse import (
    SCORE_STAMP, Warehouse, count_rows, discard_hidden, fingerprint, parquet_files, read_table,
    replacing, write_json,
)
from jobs.worker import set_threads as _set_threads
from jobs.worker import worker_artifact as _worker_artifact
from schemas.spec import DatasetSpec
from schemas.tables import predictions_struct


def load_artifact(model_dir: Path):
    """Read and verify an artifact on the driver (fails fast before any Spark work)."""
    from mmoe_model.artifact import ModelArtifact, read_artifact_files

    if not Path(model_dir).is_dir():
        raise MissingInputError(f"--model {model_dir} is not an artifact directory")
    files = read_artifact_files(model_dir)
    return files, ModelArtifact.from_files(files)


def load_model(cfg: JobConfig, spec: DatasetSpec, ds: str, model) -> tuple[dict, Any, Any]:
    """(files, verified artifact, ModelChoice) for ``model`` on ``ds``; refuses a model trained
    on a spec that differs from the dataset's."""
    from jobs.registry import ModelChoice, directory_choice, resolve_model
    from mmoe_model.artifact import ModelArtifact

    if isinstance(model, ModelChoice):
        choice = model
    elif isinstance(model, Path):  # the old behaviour: a directory, nothing else
        if not model.is_dir():
            raise MissingInputError(f"--model {model} is not an artifact directory")
        choice = directory_choice(model)
    else:
        choice = resolve_model(cfg, spec.name, ds, model)
    artifact = ModelArtifact.from_files(choice.files)  # verifies every checksum again
    artifact.check_spec(spec)
    return choice.files, artifact, choice


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

    pipelined = cfg.scoring.pipeline
    faults = active_faults()  # off by default (jobs/faults.py)

    def run(items: Iterator[tuple[int, tuple[str, int]]]) -> Iterator[int]:
        import os

        from pyspark import TaskContext

        model = _worker_artifact(files_bc.value, sha256)
        _set_threads(threads)
        skip = excluded_bc.value
        skip_set = None if skip is None else pa.array(skip)

        def kept(batch: pa.RecordBatch) -> pa.RecordBatch:
            keep = pc.is_valid(batch.column(keys[0]))
            if skip_set is not None:
                keep = pc.and_(keep, pc.invert(pc.is_in(batch.column(keys[0]), value_set=skip_set)))
            return batch.filter(keep)

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
            with pq.ParquetWriter(partial, arrow_schema) as writer, \
                    _Pipeline(writer.write_batch, pipelined) as pipe:
                for batch in pipe.read_ahead(batches):
                    batch = kept(batch)
                    if batch.num_rows:
                        pipe.write(score_batch(model, batch, features, keys, num_tasks,
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


class _Pipeline:
    """Overlap reading, scoring and writing inside one Python worker: the next batch is read by
    a helper thread while this one is scored, and scored batches are written by another (pyarrow's
    parquet reader and writer and torch's kernels release the GIL). Order is kept (one reader,
    one writer); at most ``depth`` scored batches wait for the writer, so memory stays bounded; an
    error in either helper is raised here. ``enabled=False`` runs everything in line."""

    def __init__(self, write: Callable[[pa.RecordBatch], None], enabled: bool = True,
                 depth: int = 2) -> None:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self._write, self.enabled, self.depth = write, enabled, depth
        self._reader = ThreadPoolExecutor(1, "mmoe-read") if enabled else None
        self._writer = ThreadPoolExecutor(1, "mmoe-write") if enabled else None
        self._pending: Any = deque()

    def read_ahead(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        if not self.enabled:
            yield from batches
            return
        end = object()
        future = self._reader.submit(next, batches, end)
        while True:
            batch = future.result()
            if batch is end:
                return
            future = self._reader.submit(next, batches, end)  # read the next one meanwhile
            yield batch

    def write(self, batch: pa.RecordBatch) -> None:
        if not self.enabled:
            self._write(batch)
            return
        self._pending.append(self._writer.submit(self._write, batch))
        while len(self._pending) > self.depth:
            self._pending.popleft().result()

    def __enter__(self) -> "_Pipeline":
        return self

    def __exit__(self, exc_type, *rest) -> None:
        try:
            while self._pending:  # everything written (and any write error raised) before close
                future = self._pending.popleft()
                if exc_type is None:
                    future.result()
                else:
                    future.cancel()
        finally:
            for pool in (self._reader, self._writer):
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)


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
                    model, with_gates: bool = False) -> ScoreResult:
    """Score the rows of ``ds`` that passed validation into its predictions partition.

    ``model``: an artifact directory (Path), a registered version or ``@alias`` (str), or a
    :class:`jobs.registry.ModelChoice`. The write holds the partition's lock (dataset,
    predictions, ds, model_version) and leaves a stamp (``_scored.json``: model checksum,
    features fingerprint) in the partition, which a backfill reads to skip up-to-date days."""
    files, artifact, choice = load_model(cfg, spec, ds, model)
    model_fields = {"model_version": artifact.model_version, "model_sha256": artifact.sha256}
    try:
        rows, status, inline = _validated_rows(spark, cfg, spec, ds)  # refuses an unvalidated ds
    except NotValidated as exc:
        raise NotValidated(str(exc), details=model_fields) from None
    wh = Warehouse(cfg.warehouse)
    features_dir = wh.partition(spec.name, "features", ds)
    out = wh.partition(spec.name, "predictions", ds, model_version=artifact.model_version)
    details: dict[str, Any] = {"with_gates": with_gates, **choice.details()}
    if inline is not None:
        details["inline_validation"] = inline
    with wh.lock(spec.name, "predictions", ds, artifact.model_version,
                 wait_seconds=cfg.locks.wait_seconds, poll_seconds=cfg.locks.poll_seconds), \
            replacing(out) as staging:
        scored_at = dt.datetime.now(dt.timezone.utc)  # one stamp for the whole run
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
        write_json(staging / SCORE_STAMP, {
            "model_version": artifact.model_version, "model_sha256": artifact.sha256,
            "features_fingerprint": fingerprint(features_dir), "with_gates": with_gates,
            "rows": written, "scored_at": scored_at.isoformat()})
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
# Catalog mode lives in jobs/stages/catalog.py (factored and row scoring of candidate pairs).


def score_catalog(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, ds: str,
                  model) -> ScoreResult:
    """See :func:`jobs.stages.catalog.score_catalog`; ``model`` as for :func:`score_partition`."""
    from jobs.stages.catalog import score_catalog as run

    return run(spark, cfg, spec, ds, model)
