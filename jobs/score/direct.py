"""The direct reader: Spark schedules, the Python workers read and write parquet themselves.

Scheduling needs no RDD (a range of fragment numbers → ``mapInArrow``), so it runs over Spark
Connect too. Measured on 2 cores (docs/performance.md): through mapInArrow, Spark's conversion of rows to
Arrow for ~27 columns costs about 3x the model itself. When the input is a parquet partition
the executors can open, each task instead reads one row group with pyarrow (columnar, no row
conversion), scores it and writes one parquet file into a staging directory; the driver then
swaps the staging directory in for the partition, so a rerun still replaces it whole.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark import TaskContext
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs.core.config import JobConfig
from jobs.core.spark import ship
from jobs.core.tables import DatasetTables, Table, open_parquet, pyarrow_opens
from jobs.core.warehouse import discard_hidden
from jobs.runtime.faults import active_faults
from jobs.runtime.kernel import (
    Pipeline,
    ShippedModel,
    arrow_schema,
    score_batch,
    scored_batches,
    utc_us,
)
from schemas.spec import DatasetSpec
from schemas.tables import SCORED_AT, predictions_struct


def parquet_fragments(files: list[str]) -> list[tuple[str, int]]:
    """(file, row group) pairs of a partition's data files (paths or URIs, as
    :meth:`jobs.core.tables.Table.files` gives them): the unit of parallel work."""
    fragments = []
    for path in files:
        fragments += [(str(path), rg) for rg in range(open_parquet(path).metadata.num_row_groups)]
    return fragments


def predictions_writer(path, schema: pa.Schema) -> pq.ParquetWriter:
    """The direct reader's parquet writer. Dictionary pages only for the one column that
    repeats (``scored_at``): pyarrow's default tries a dictionary on every column, and on the
    keys and probabilities it is abandoned each time: 0.32 vs 0.08 CPU-µs a row and 23 % larger
    files (8192-row batches of synth predictions, measured)."""
    return pq.ParquetWriter(path, schema, use_dictionary=[SCORED_AT])


def quarantined_keys(tb: DatasetTables, spec: DatasetSpec, ds: str) -> np.ndarray | None:
    """The keys validation quarantined for ``ds`` (single-key specs), or None when none were."""
    quarantine = tb["quarantine"]
    if not quarantine.exists(ds):
        return None
    keys = quarantine.read_arrow(ds, columns=spec.key_names).column(0)
    return keys.drop_null().unique().to_numpy(zero_copy_only=False)


def score_fragments(spark: SparkSession, fragments: list[tuple[str, int]], files: dict[str, bytes],
                    artifact, spec: DatasetSpec, cfg: JobConfig, staging: Path,
                    scored_at: dt.datetime, with_gates: bool,
                    excluded: np.ndarray | None) -> int:
    """Score every fragment into ``staging/part-NNNNN.parquet``; returns the rows written.
    Rows with a null key or a key in ``excluded`` (the quarantine) are left out. Direct scoring
    needs a single key column (:func:`direct_reader_applies`)."""
    shipped = ShippedModel.for_job(spark, files, artifact, cfg.scoring)
    excluded_bc = ship(spark, excluded)
    work_items = list(enumerate(fragments))
    keys, features = spec.key_names, spec.feature_names
    columns = list(dict.fromkeys(keys + features))
    out_schema = arrow_schema(predictions_struct(spec, with_gates=with_gates))
    num_tasks, batch_size = len(spec.tasks), cfg.scoring.batch_size
    scored_at_us, out_dir = utc_us(scored_at), str(staging)

    pipelined = cfg.scoring.pipeline
    faults = active_faults()  # off by default (jobs/runtime/faults.py)

    def run(ids: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        items = (work_items[i] for batch in ids for i in batch.column(0).to_pylist())
        for written in score_items(items):
            yield pa.RecordBatch.from_arrays([pa.array([written], pa.int64())], names=["written"])

    def score_items(items: Iterator[tuple[int, tuple[str, int]]]) -> Iterator[int]:
        model = shipped.load()
        skip = excluded_bc.value
        skip_set = None if skip is None else pa.array(skip)

        def kept(batch: pa.RecordBatch) -> pa.RecordBatch:
            # Filtering copies every column: done only when a row is to go (a null key, or a
            # quarantined one). Measured: the unconditional filter was ~6 % of a worker's time.
            key = batch.column(keys[0])
            keep = pc.is_valid(key) if key.null_count else None
            if skip_set is not None:
                quarantined = pc.is_in(key, value_set=skip_set)
                if pc.any(quarantined).as_py():
                    kept_rows = pc.invert(quarantined)
                    keep = kept_rows if keep is None else pc.and_(keep, kept_rows)
            return batch if keep is None else batch.filter(keep)

        def score(batch: pa.RecordBatch) -> pa.RecordBatch:
            return score_batch(model, batch, features, keys, num_tasks, out_schema,
                               scored_at_us, with_gates)

        ctx = TaskContext.get()
        attempt = f"{ctx.stageId()}-{ctx.attemptNumber()}" if ctx is not None else "0"
        for index, (path, row_group) in items:
            written = 0
            # Streamed batch by batch: worker memory stays flat whatever the row group's size.
            # a path or a URI: pyarrow's filesystem for it (file://, hdfs://, s3://, ...)
            batches = open_parquet(path).iter_batches(batch_size=batch_size, row_groups=[row_group],
                                                        columns=columns)
            # Each attempt writes a hidden file and renames it into place when complete: a
            # worker killed mid-file leaves hidden debris, never a visible partial part file.
            final = f"{out_dir}/part-{index:05d}.parquet"
            partial = f"{out_dir}/.part-{index:05d}-{attempt}.parquet.tmp"
            with predictions_writer(partial, out_schema) as writer, \
                    Pipeline(writer.write_batch, pipelined) as pipe:
                kept_batches = (kept(batch) for batch in pipe.read_ahead(batches))
                for scored in scored_batches(kept_batches, score, faults):
                    pipe.write(scored)
                    written += scored.num_rows
            os.replace(partial, final)
            yield written

    staging.mkdir(parents=True, exist_ok=True)
    # One task per fragment, without RDDs (so also over Spark Connect): a range of fragment
    # numbers in as many partitions (one number each) → mapInArrow, each task scores its own.
    n = max(len(fragments), 1)
    work = spark.range(0, len(fragments), 1, n).mapInArrow(run, "written long")
    written = int(work.agg(F.sum("written")).first()[0] or 0)
    discard_hidden(staging)  # partial files of failed attempts
    return written


def direct_reader_applies(cfg: JobConfig, spec: DatasetSpec, features: Table, ds: str) -> bool:
    """The direct reader needs one key column and data files pyarrow can open."""
    if cfg.scoring.reader != "direct" or len(spec.keys) != 1:
        return False
    files = features.files(ds)
    return bool(files) and all(pyarrow_opens(f) for f in files[:1]) \
        and bool(parquet_fragments(files))
