"""The executor kernel: how the model reaches the Python workers and the one loop that scores
Arrow batches there. Used by the Spark reader, the direct reader, catalog scoring and the UDF.

How the model travels: :class:`ShippedModel` carries the artifact's files (a few hundred KB)
to the executors (a broadcast, sent once per executor; over Spark Connect, which has no
broadcast, the bytes ride in the task's closure: :func:`jobs.core.spark.ship`); each Python worker verifies their SHA-256 manifest and
builds the model once, caching it by checksum for every later batch and task
(:mod:`jobs.runtime.worker`). :func:`scored_batches` is the loop: skip empty batches, score,
fire the reliability faults after the first batch (:mod:`jobs.runtime.faults`).
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pyarrow as pa
from pyspark.sql import SparkSession
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from jobs.core.errors import InputError
from jobs.core.spark import ship
from jobs.runtime.faults import after_first_batch
from jobs.runtime.onnx import OnnxScorer, runtime_graph
from jobs.runtime.worker import set_threads, worker_artifact, worker_cached


class ShippedModel:
    """The model's files on their way to the executors; picklable (it holds a broadcast
    handle, or over Connect the bytes themselves), so task closures carry it. ``load()`` runs
    on the executor."""

    def __init__(self, spark: SparkSession, files: Mapping[str, bytes], sha256: str,
                 threads_per_task: int = 0, graph: bytes | None = None,
                 precision: str = "fp32") -> None:
        if graph is not None and precision != "fp32":
            raise InputError(f"scoring.precision {precision} needs scoring.runtime torch "
                             f"(onnxruntime scores the exported float32 graph)")
        self._files = ship(spark, dict(files))
        self._graph = ship(spark, graph) if graph is not None else None
        self.sha256 = sha256
        self.threads = threads_per_task
        self.precision = precision

    @classmethod
    def for_job(cls, spark: SparkSession, files: Mapping[str, bytes], artifact,
                scoring) -> "ShippedModel":
        """The model as ``scoring`` (a ScoringConfig) says: its threads, its precision
        (refused here, on the driver, for an imported ONNX graph unless fp32), and for
        ``runtime: onnxruntime`` the trained model's exported graph (exported once on the
        driver)."""
        precision = getattr(scoring, "precision", "fp32")
        check_artifact_precision(artifact, precision)
        return cls(spark, files, artifact.sha256, scoring.threads_per_task,
                   runtime_graph(artifact, scoring.runtime), precision)

    def load(self):
        """Executor side: the verified model of this worker (built once), its threads set; with
        a shipped graph, an onnxruntime scorer over it (one session per worker, by checksum); in
        ``precision`` bf16 / int8, the converted copy (built once per worker, by checksum and
        precision: :meth:`mmoe_model.artifact.ModelArtifact.with_precision`)."""
        artifact = worker_artifact(self._files.value, self.sha256)
        threads = set_threads(self.threads)
        precision = getattr(self, "precision", "fp32")
        if precision != "fp32":
            artifact = worker_cached(("precision", self.sha256, precision),
                                     lambda: artifact.with_precision(precision))
        model = artifact
        if self._graph is not None:
            graph = self._graph
            model = worker_cached(("onnxruntime", self.sha256),
                                  lambda: OnnxScorer(artifact, graph.value))
        model.use_threads(threads)
        return model


def check_artifact_precision(artifact, precision: str) -> None:
    """Refuse, on the driver and in one line, a precision the artifact cannot score in (an
    imported ONNX graph is scored as given: fp32 only)."""
    from mmoe_model.errors import ArtifactError
    from mmoe_model.precision import check_precision

    try:
        check_precision(precision, artifact.imported, artifact.model_version)
    except ArtifactError as exc:
        raise InputError(str(exc)) from None


def scored_batches(batches: Iterator, score: Callable[[Any], Any], faults: frozenset[str],
                   skip_empty: bool = True) -> Iterator:
    """``score(batch)`` for every batch (empty Arrow batches skipped unless ``skip_empty`` is
    False: a scalar UDF must answer every batch), in order; the faults fire once the first
    result has been consumed (the direct reader has written it by then)."""
    done = 0
    for batch in batches:
        if skip_empty and not batch.num_rows:
            continue
        yield score(batch)
        done += 1
        if done == 1:
            after_first_batch(faults)


def arrow_schema(schema: T.StructType) -> pa.Schema:
    return to_arrow_schema(schema)


def utc_us(scored_at: dt.datetime) -> np.datetime64:
    return np.datetime64(scored_at.astimezone(dt.timezone.utc).replace(tzinfo=None), "us")


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
        arrays += [gate_array(gates[:, i, :], batch.num_rows) for i in range(num_tasks)]
    return pa.RecordBatch.from_arrays(arrays, schema=arrow_schema)


def gate_array(gates: np.ndarray, rows: int) -> pa.Array:
    """[B, E] gate weights → a list<float> column (null for archs without gates)."""
    if gates.size == 0:
        return pa.nulls(rows, type=pa.list_(pa.float32()))
    flat = pa.array(np.ascontiguousarray(gates, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, rows * gates.shape[1] + 1, gates.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


class Pipeline:
    """Overlap reading, scoring and writing inside one Python worker: the next batch is read by
    a helper thread while this one is scored, and scored batches are written by another (pyarrow's
    parquet reader and writer and torch's kernels release the GIL). Order is kept (one reader,
    one writer); at most ``depth`` scored batches wait for the writer, so memory stays bounded; an
    error in either helper is raised here. ``enabled=False`` runs everything in line."""

    def __init__(self, write: Callable[[pa.RecordBatch], None], enabled: bool = True,
                 depth: int = 2) -> None:
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

    def __enter__(self) -> "Pipeline":
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


