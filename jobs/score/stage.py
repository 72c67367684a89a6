"""Score stage: the validated rows of a ds → ``predictions/ds=D/model_version=V``.

Read (the artifact, verified; the validation status; the features partition, all through
jobs/core/warehouse.py) → transform (:func:`score_frame` / :func:`score_fragments`, the model on
Arrow batches) → write (:func:`jobs.core.warehouse.replacing`: staged, then swapped in whole).

How the model reaches the executors: :class:`jobs.runtime.kernel.ShippedModel` (built once
per Python worker, cached by checksum). The direct reader is in :mod:`jobs.score.direct`;
catalog scoring in :mod:`jobs.score.catalog`. Batches arrive as Arrow record
batches through ``mapInArrow``; the encoder turns their columns into tensors with numpy, with no
per-row Python. The output partition is staged and swapped in, so a rerun replaces exactly its
(ds, model_version) partition and a crash never leaves half of one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from jobs.core.config import JobConfig
from jobs.core.errors import InputError, NotValidated
from jobs.core.manifest import RunRecord
from jobs.core.registry import ModelChoice, resolve_model
from jobs.core.spark import default_parallelism, is_connect, session_conf
from jobs.core.status import ScoreStamp, ValidationStatus, write_score_stamp
from jobs.core.tables import DatasetTables
from jobs.core.warehouse import (
    count_rows,
)
from jobs.runtime.faults import active_faults
from jobs.runtime.kernel import (
    ShippedModel,
    arrow_schema,
    score_batch,
    scored_batches,
    utc_us,
)
from jobs.score.direct import (
    direct_reader_applies,
    parquet_fragments,
    quarantined_keys,
    score_fragments,
)
from jobs.score.drift import prediction_drift
from jobs.score.skew import training_skew
from jobs.validate.scorable import passed_rows, read_status
from jobs.validate.stage import validate_partition
from mmoe_model.artifact import ModelArtifact
from schemas.spec import DatasetSpec
from schemas.tables import predictions_struct


def load_model(cfg: JobConfig, spec: DatasetSpec, ds: str, model) -> tuple[dict, Any, Any]:
    """(files, verified artifact, ModelChoice) for ``model`` (a ModelChoice already resolved,
    or any model reference) on ``ds``; refuses a model trained on a spec that differs from the
    dataset's."""
    choice = model if isinstance(model, ModelChoice) else resolve_model(cfg, spec.name, ds, model)
    artifact = ModelArtifact.from_files(choice.files)  # verifies every checksum again
    artifact.check_spec(spec)
    return choice.files, artifact, choice


def make_scorer(model: ShippedModel, spec: DatasetSpec, input_columns: list[str],
                out_schema: T.StructType, scored_at: dt.datetime, with_gates: bool,
                extra_columns: tuple[str, ...] = ()) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function handed to ``mapInArrow``: keys + p_<task> + scored_at (+ gates)."""
    keys = spec.key_names + list(extra_columns)
    num_tasks = len(spec.tasks)
    schema = arrow_schema(out_schema)
    scored_at_us = utc_us(scored_at)
    faults = active_faults()  # off by default (jobs/runtime/faults.py)

    def score_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        artifact = model.load()
        yield from scored_batches(batches, lambda batch: score_batch(
            artifact, batch, input_columns, keys, num_tasks, schema, scored_at_us, with_gates),
            faults)

    return score_batches


def score_frame(spark: SparkSession, frame: DataFrame, files: dict[str, bytes], artifact,
                spec: DatasetSpec, cfg: JobConfig, scored_at: dt.datetime,
                with_gates: bool = False) -> DataFrame:
    """Pure transform: keys + features → keys + p_<task> + scored_at (+ gate_<task>)."""
    out_schema = predictions_struct(spec, with_gates=with_gates)
    shipped = ShippedModel.for_job(spark, files, artifact, cfg.scoring)
    scorer = make_scorer(shipped, spec, spec.feature_names, out_schema, scored_at, with_gates)
    needed = list(dict.fromkeys(spec.key_names + spec.feature_names))
    return frame.select(*needed).mapInArrow(scorer, out_schema)


def spread_partitions(spark: SparkSession, frame: DataFrame) -> DataFrame:
    """Give every core work: a single big file would otherwise be one task on one core. Over
    Spark Connect the partition count is not known before running (no RDD): always spread."""
    parallelism = default_parallelism(spark)
    if is_connect(spark) or frame.rdd.getNumPartitions() < parallelism:
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
    output: Path | str         # the partition's directory, or catalog table (partition)
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
    :class:`jobs.core.registry.ModelChoice`. The write holds the partition's lock (dataset,
    predictions, ds, model_version) and leaves a stamp (``_scored.json``: model checksum,
    features fingerprint, precision) in the partition, which a backfill reads to skip
    up-to-date days. ``cfg.scoring.precision`` is the model pass's precision (named in the
    manifest's details and the stamp)."""
    files, artifact, choice = load_model(cfg, spec, ds, model)
    model_fields = {"model_version": artifact.model_version, "model_sha256": artifact.sha256}
    if with_gates and artifact.imported:
        raise InputError(f"--with-gates: {artifact.model_version} is an imported ONNX graph and "
                         f"has no gates to report", details=model_fields)
    try:
        rows, status, inline = _validated_rows(spark, cfg, spec, ds)  # refuses an unvalidated ds
    except NotValidated as exc:
        raise NotValidated(str(exc), details=model_fields) from None
    tb = DatasetTables(cfg, spec.name, spark)
    tb.preflight(inputs=("features",), outputs=("predictions",), columns={
        "predictions": predictions_struct(spec, with_gates=with_gates).names})
    wh, features, version = tb.wh, tb["features"], artifact.model_version
    out = tb["predictions"].where(ds, model_version=version)
    precision = cfg.scoring.precision
    details: dict[str, Any] = {"with_gates": with_gates, "precision": precision,
                               **choice.details()}
    if inline is not None:
        details["inline_validation"] = inline
    with wh.lock(spec.name, "predictions", ds, artifact.model_version,
                 wait_seconds=cfg.locks.wait_seconds, poll_seconds=cfg.locks.poll_seconds), \
            tb["predictions"].writing(spark, ds, model_version=version) as staged:
        staging = staged.dir
        scored_at = dt.datetime.now(dt.timezone.utc)  # one stamp for the whole run
        if direct_reader_applies(cfg, spec, features, ds):
            written = score_fragments(
                spark, parquet_fragments(features.files(ds)), files, artifact, spec, cfg,
                staging, scored_at, with_gates, quarantined_keys(tb, spec, ds))
            details["reader"] = "direct"
        else:
            with session_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch":
                                      str(cfg.scoring.batch_size)}):
                predictions = score_frame(spark, spread_partitions(spark, rows), files,
                                          artifact, spec, cfg, scored_at, with_gates)
                predictions.write.mode("overwrite").parquet(str(staging))
            written = count_rows(staging)
            details["reader"] = "spark"
        write_score_stamp(staging, ScoreStamp(
            model_version=artifact.model_version, model_sha256=artifact.sha256,
            features_fingerprint=features.fingerprint(ds), with_gates=with_gates,
            rows=written, scored_at=scored_at.isoformat(), precision=precision))
        if cfg.drift.enabled and written:
            skew, details["training_skew"] = training_skew(cfg, spec, ds, files,
                                                           artifact.model_version)
            details["prediction_drift"] = prediction_drift(cfg, spec, ds, artifact.model_version,
                                                           staging, skew)
    return ScoreResult(artifact.model_version, artifact.sha256,
                       input_rows=status.passed_rows if status else 0, output_rows=written,
                       quarantined_rows=status.quarantined_rows if status else 0, output=out,
                       details=details)


def _validated_rows(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec,
                    ds: str) -> tuple[DataFrame, ValidationStatus | None, dict[str, int] | None]:
    """The rows that passed validation and their status; validates first when configured to
    (``scoring.validate_inline``) and the ds was never validated."""
    inline = None
    try:
        rows = passed_rows(spark, cfg, spec, ds)
    except NotValidated:
        if not cfg.scoring.validate_inline:
            raise
        report = validate_partition(spark, cfg, spec, ds)
        inline = {"input_rows": report.input_rows, "quarantined_rows": report.quarantined_rows}
        rows = passed_rows(spark, cfg, spec, ds)
    return rows, read_status(cfg, spec, ds), inline
