"""The public Spark UDF: score any DataFrame that has the model's feature columns.

    from jobs.runtime.udf import mmoe_udf

    score = mmoe_udf("artifacts/synth-mmoe")               # a directory or a ModelArtifact
    scored = df.select("impression_id", score(*score.input_columns).alias("p"))
    scored.select("impression_id", "p.*")                  # p_click, p_like, p_conversion

    spark.udf.register("mmoe_score", score)                # the same UDF from SQL
    spark.sql("SELECT impression_id, mmoe_score(user_id, item_id, ...).p_click FROM t")

It is an Arrow UDF (``pyspark.sql.functions.arrow_udf``, iterator form): Spark hands each
Python worker Arrow batches of the input columns, which go straight into the model's encoder
(no pandas round-trip); the result is one struct column with a double ``p_<task>`` per task
(task order of the model). Columns are passed positionally in ``input_columns`` order (the
model's features in spec order); their Spark types must be the spec's (long, double, string).

How the model reaches the workers: the artifact's files (a few hundred KB) are broadcast once
(over Spark Connect, which has no broadcast, they travel in the UDF's closure);
each Python worker verifies every SHA-256 of its manifest and builds the model once, cached by
the artifact's checksum for every later batch and task (:mod:`jobs.runtime.worker`, shared with the
score job). A tampered artifact is refused on the driver when the UDF is made and again on every
worker. This module does not know the warehouse: it works on any DataFrame in any pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa
from pyspark.sql import SparkSession
from pyspark.sql import types as T
from pyspark.sql.functions import arrow_udf

from jobs.core.errors import MissingInputError
from jobs.runtime.faults import active_faults
from jobs.runtime.kernel import ShippedModel, check_artifact_precision, scored_batches
from jobs.runtime.onnx import runtime_graph
from mmoe_model.artifact import ModelArtifact, read_artifact_files


def _artifact_files(model: Any) -> dict[str, bytes]:
    if isinstance(model, ModelArtifact):
        files = getattr(model, "files", None)
        if not files:
            raise MissingInputError("mmoe_udf needs a ModelArtifact loaded from its files "
                                    "(ModelArtifact.load / from_files) or an artifact directory")
        return dict(files)
    if isinstance(model, Mapping):
        return dict(model)
    path = Path(model)
    if not path.is_dir():
        raise MissingInputError(f"mmoe_udf: {path} is not a model artifact directory")
    return read_artifact_files(path)


def mmoe_udf(model: Any, *, threads_per_task: int = 0, spark=None, runtime: str = "torch",
             precision: str = "fp32"):
    """A Spark UDF scoring rows with ``model`` (an artifact directory, a loaded
    ``ModelArtifact``, or the artifact's files as a mapping).

    Call it with the model's feature columns in ``udf.input_columns`` order; it returns
    ``struct<p_<task>: double, ...>``. ``udf.output_columns`` names the struct's fields and
    ``udf.model_version`` / ``udf.model_sha256`` say which model it is. ``threads_per_task``:
    torch threads per Spark task (0: the task's CPUs, ``spark.task.cpus``). The UDF's batch size
    is the session's ``spark.sql.execution.arrow.maxRecordsPerBatch``. ``runtime``: ``torch`` or
    ``onnxruntime`` (a trained model's exported graph; an imported ONNX model always runs on
    onnxruntime). ``precision``: ``fp32``, ``bf16`` or ``int8`` (the model pass, converted
    once per Python worker: :mod:`mmoe_model.precision`; torch runtime, trained models only);
    ``udf.precision`` says which."""
    files = _artifact_files(model)
    artifact = ModelArtifact.from_files(files)  # verified on the driver: fail before any task
    spark = spark or SparkSession.getActiveSession()
    if spark is None:
        raise MissingInputError("mmoe_udf needs an active SparkSession")
    check_artifact_precision(artifact, precision)
    shipped = ShippedModel(spark, files, artifact.sha256, threads_per_task,
                           runtime_graph(artifact, runtime), precision)
    sha256, names = artifact.sha256, list(artifact.spec.feature_names)
    outputs = [f"p_{t}" for t in artifact.task_names]
    struct_type = pa.struct([pa.field(c, pa.float64()) for c in outputs])
    return_type = T.StructType([T.StructField(c, T.DoubleType()) for c in outputs])
    faults = active_faults()

    def score(batches: Iterator[tuple[pa.Array, ...]]) -> Iterator[pa.Array]:
        art = shipped.load()

        def one(columns) -> pa.Array:
            if isinstance(columns, pa.Array):  # a one-feature model gets bare arrays
                columns = (columns,)
            if len(columns) != len(names):
                raise ValueError(f"mmoe_udf expects {len(names)} columns ({', '.join(names)}), "
                                 f"got {len(columns)}")
            batch = pa.RecordBatch.from_arrays(list(columns), names=names)
            probs = art.predict(batch) if batch.num_rows else np.empty((0, len(outputs)))
            return pa.StructArray.from_arrays(
                [pa.array(probs[:, i], type=pa.float64()) for i in range(len(outputs))],
                fields=list(struct_type))

        yield from scored_batches(batches, one, faults, skip_empty=False)

    udf = arrow_udf(score, return_type)  # type hints: iterator of column tuples → SCALAR_ITER
    udf.input_columns = names
    udf.output_columns = outputs
    udf.model_version = artifact.model_version
    udf.model_sha256 = sha256
    udf.precision = precision
    return udf


__all__ = ["mmoe_udf"]
