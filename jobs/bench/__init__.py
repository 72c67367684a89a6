"""`mmoe bench scoring|evaluation|validation|scaling`: measured on the same data in one run.

Each bench returns a dict (printed as the last stdout line by the CLI) and appends a section to
a results file the user names (``mmoe bench ... --results PATH``; default
``<warehouse>/_bench/benchmarks.md``) with the machine, versions and command. The project's
published figures are copied from such a file into docs/benchmarks.md by hand. Bench data lives
under ``<warehouse>/_bench`` and is reused when it already has the requested size.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd  # module level: the naive pandas UDF's type hints are resolved here

from jobs.config import JobConfig

BENCH_DS = "2026-01-01"


class WorkerRssSampler:
    """Samples the resident memory of Spark's Python worker processes in a background thread;
    ``peak_mib`` is the largest RSS any single worker reached."""

    def __init__(self, interval_s: float = 0.2) -> None:
        import threading

        self.interval_s = interval_s
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for proc in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = " ".join(proc.info.get("cmdline") or [])
                if "pyspark.daemon" in cmd or "pyspark.worker" in cmd:
                    rss = proc.info["memory_info"].rss / 2**20
                    self.peak_mib = max(self.peak_mib, rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "WorkerRssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def _bench_config(cfg: JobConfig) -> JobConfig:
    import copy

    bench_cfg = copy.deepcopy(cfg)
    bench_cfg.warehouse = Path(cfg.warehouse) / "_bench"
    return bench_cfg


def ensure_synth_partition(cfg: JobConfig, rows: int, seed: int = 0) -> Path:
    """A synth features/labels partition of exactly ``rows`` rows (generated once, then reused)."""
    from jobs.data.synth import generate_synth
    from jobs.warehouse import Warehouse

    part = Warehouse(cfg.warehouse).partition("synth", "features", BENCH_DS)
    marker = part.parent / f".rows-{BENCH_DS}"
    if not (marker.exists() and marker.read_text() == str(rows)):
        generate_synth(cfg, BENCH_DS, 1, rows, seed=seed)
        marker.write_text(str(rows))
    return part


def reference_artifact(cfg: JobConfig, sample_rows: int = 20000) -> Path:
    """The reference MMoE (the model library's defaults) with seeded random weights (speed does not depend on training)."""
    import pyarrow.dataset as pads
    import torch

    from jobs.warehouse import Warehouse
    from mmoe_model.artifact import save_artifact
    from mmoe_model.features import FeatureEncoder, InputLayout
    from mmoe_model.models import ModelConfig, build_model
    from schemas import load_spec

    spec = load_spec("synth")
    out = Path(cfg.warehouse) / "reference-mmoe"
    if (out / "MANIFEST.json").exists():
        return out
    part = Warehouse(cfg.warehouse).partition("synth", "features", BENCH_DS)
    sample = pads.dataset(str(part)).head(sample_rows)
    encoder = FeatureEncoder.fit(spec, sample)
    torch.manual_seed(0)
    model_config = ModelConfig(arch="mmoe")  # the library's default MMoE: the documented reference
    model = build_model(model_config, InputLayout.from_spec(spec), len(spec.tasks)).eval()
    save_artifact(out, model, model_config, spec, encoder, {"note": "benchmark reference, untrained"})
    return out


def _machine() -> dict[str, Any]:
    import pyspark
    import torch

    return {"machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                       f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
            "python": platform.python_version(), "pyspark": pyspark.__version__,
            "torch": torch.__version__}


def results_path(cfg: JobConfig, results: Path | None) -> Path:
    """Where a bench appends its results: the user's path, else under the bench warehouse."""
    return Path(results) if results is not None else Path(cfg.warehouse) / "benchmarks.md"


def _append_doc(path: Path, title: str, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text("# Benchmarks\n\nRaw results appended by `mmoe bench`; the summary and "
                        "analysis are in docs/performance.md.\n")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with path.open("a") as fh:
        fh.write(f"\n## {title} — {stamp}\n\n`{' '.join(['mmoe', *sys.argv[1:]])}`\n\n```json\n"
                 f"{json.dumps(result, indent=1, default=str)}\n```\n")


# --------------------------------------------------------------------------------------------
# Scoring


def _loop_mmoe_forward(model, dense, cats):
    """A straightforward MMoE forward with a Python loop over experts (the naive peer)."""
    import torch

    x = model.input(dense, cats)
    bank = model.experts[0]
    outs = []
    for e in range(bank.num_experts):
        h = x
        for w, b in zip(bank.weights, bank.biases):
            h = torch.relu(h @ w[e] + b[e])
        outs.append(h)
    gate = model.task_gate
    logits = []
    for t, tower in enumerate(model.towers):
        g = torch.softmax((x @ gate.weight[t] + gate.bias[t]) / gate.temperature, dim=1)
        mixed = sum(g[:, e:e + 1] * outs[e] for e in range(len(outs)))
        logits.append(tower(mixed))
    return torch.stack(logits, dim=1)


def _with_arity(fn: Callable, arity: int) -> Callable:
    """predict_batch_udf counts the predict function's parameters (inspect.signature) to decide
    how to pass the columns: give it one named parameter per input column."""
    import inspect

    def predict(*columns):
        return fn(*columns)

    # inspect.signature honours __signature__: no generated source, no exec
    predict.__signature__ = inspect.Signature(
        [inspect.Parameter(f"c{i}", inspect.Parameter.POSITIONAL_OR_KEYWORD) for i in range(arity)])
    return predict


def bench_scoring(cfg: JobConfig, rows: int | None = None, results: Path | None = None,
                  record: bool = True) -> dict[str, Any]:
    from jobs.spark import get_spark, session_conf
    from mmoe_model.artifact import ModelArtifact, read_artifact_files
    from schemas import load_spec

    rows = rows or 1_000_000
    cfg = _bench_config(cfg)
    spec = load_spec("synth")
    part = ensure_synth_partition(cfg, rows)
    model_dir = reference_artifact(cfg)
    files = read_artifact_files(model_dir)
    artifact = ModelArtifact.from_files(files)
    spark = get_spark(cfg.spark)
    batch = cfg.scoring.batch_size
    with session_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch": str(batch)}):
        return _scoring_runs(spark, cfg, spec, part, files, artifact, rows, batch, results,
                             record)


def _scoring_runs(spark, cfg: JobConfig, spec, part: Path, files, artifact, rows: int, batch: int,
                  results: Path | None, record: bool) -> dict[str, Any]:
    import pyarrow.dataset as pads
    import torch
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from jobs.stages.score import score_frame, spread_partitions
    from mmoe_model.artifact import ModelArtifact

    cores = spark.sparkContext.defaultParallelism
    out_root = Path(cfg.warehouse) / "bench-out"
    features = spread_partitions(spark, spark.read.parquet(str(part)))
    scored_at = dt.datetime.now(dt.timezone.utc)
    keys, feats, tasks = spec.key_names, spec.feature_names, spec.task_names
    pred_cols = spec.prediction_columns

    def write(frame, name: str) -> float:
        seconds, _ = _timed(lambda: frame.write.mode("overwrite").parquet(str(out_root / name)))
        return seconds

    # Warm-up, untimed: start the Python workers and import torch there (every method below
    # reuses them), and let the driver's torch initialise its kernels.
    warm = features.limit(4 * batch)
    score_frame(spark, warm, files, artifact, spec, cfg, scored_at).write.mode("overwrite").parquet(
        str(out_root / "warmup"))
    _score_direct(spark, part, files, artifact, spec, cfg, out_root / "warmup-direct", scored_at,
                  max_fragments=cores)
    torch.set_num_threads(cores)
    artifact.predict(pads.dataset(str(part)).head(batch, columns=feats))
    # (d) the I/O floor: same read and write, no model.
    floor = features.select(*keys, *feats).select(
        *keys, *[F.lit(0.5).alias(c) for c in pred_cols],
        F.lit(scored_at.replace(tzinfo=None)).cast("timestamp").alias("scored_at"))
    io_seconds = write(floor, "io_floor")
    # (a) ours: the score job's direct reader (what `mmoe score` runs on a parquet partition),
    # with the peak RSS of any Python worker while it runs.
    with WorkerRssSampler() as rss:
        ours_seconds, _ = _timed(lambda: _score_direct(spark, part, files, artifact, spec, cfg,
                                                       out_root / "ours", scored_at))
    # (a') ours through mapInArrow (scoring.reader: spark), for the record.
    spark_reader_seconds = write(score_frame(spark, features, files, artifact, spec, cfg, scored_at),
                                 "ours_spark_reader")
    # (b) Spark's predict_batch_udf, same model, same encoder, same batch size.
    broadcast = spark.sparkContext.broadcast(files)

    def make_predict_fn():
        art = ModelArtifact.from_files(broadcast.value)
        torch.set_num_threads(1)

        def predict(*columns: np.ndarray) -> dict[str, np.ndarray]:
            probs = art.predict(pd.DataFrame(dict(zip(feats, columns))))
            return {c: probs[:, i] for i, c in enumerate(pred_cols)}

        return _with_arity(predict, len(feats))

    pb_udf = predict_batch_udf(make_predict_fn, return_type=T.StructType(
        [T.StructField(c, T.DoubleType()) for c in pred_cols]), batch_size=batch)
    pb_frame = features.select(*keys, pb_udf(*feats).alias("p")).select(
        *keys, "p.*", F.lit(scored_at.replace(tzinfo=None)).cast("timestamp").alias("scored_at"))
    pb_seconds = write(pb_frame, "predict_batch_udf")
    # (c) a straightforward iterator pandas UDF over a struct, Python loop over experts.
    naive_seconds = write(_naive_frame(spark, features, spec, broadcast, scored_at), "naive_udf")
    # (e) in-process torch on the same rows in memory, same total thread count.
    table = pads.dataset(str(part)).to_table(columns=feats)
    inproc_seconds, _ = _timed(lambda: artifact.predict(table, batch_size=batch))
    result = {
        "bench": "scoring", "rows": rows, "batch_size": batch, "spark_cores": cores,
        "ours_seconds": round(ours_seconds, 3),
        "ours_rows_per_s": round(rows / ours_seconds),
        "ours_spark_reader_rows_per_s": round(rows / spark_reader_seconds),
        "predict_batch_udf_rows_per_s": round(rows / pb_seconds),
        "naive_udf_rows_per_s": round(rows / naive_seconds),
        "io_floor_rows_per_s": round(rows / io_seconds),
        "torch_inprocess_rows_per_s": round(rows / inproc_seconds),
        "ours_vs_predict_batch_udf": round(pb_seconds / ours_seconds, 2),
        "ours_vs_inprocess": round(inproc_seconds / ours_seconds, 2),
        "ours_wall_vs_io_floor": round(ours_seconds / io_seconds, 2),
        "ours_peak_python_worker_rss_mib": round(rss.peak_mib, 1),
        **_machine(),
    }
    if record:
        _append_doc(results_path(cfg, results), f"scoring, {rows:,} rows", result)
    return result


def _score_direct(spark, part: Path, files, artifact, spec, cfg: JobConfig, out: Path,
                  scored_at: dt.datetime, max_fragments: int | None = None) -> int:
    from jobs.stages.score import parquet_fragments, score_fragments
    from jobs.warehouse import replacing

    fragments = parquet_fragments(part)[:max_fragments]
    with replacing(out) as staging:
        return score_fragments(spark, fragments, files, artifact, spec, cfg, staging, scored_at,
                               False, None)


def _naive_frame(spark, features, spec, broadcast, scored_at):
    import torch
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
    from pyspark.sql.functions import pandas_udf

    feats, pred_cols = spec.feature_names, spec.prediction_columns
    schema = T.StructType([T.StructField(c, T.DoubleType()) for c in pred_cols])

    @pandas_udf(schema)
    def naive(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from mmoe_model.artifact import ModelArtifact

        art = ModelArtifact.from_files(broadcast.value)
        torch.set_num_threads(1)
        for frame in batches:
            with torch.inference_mode():
                dense, cats = art.encoder.encode(frame)
                probs = torch.sigmoid(_loop_mmoe_forward(art.model, dense, cats)).double().numpy()
            yield pd.DataFrame({c: probs[:, i] for i, c in enumerate(pred_cols)})

    return features.select(*spec.key_names, naive(F.struct(*feats)).alias("p")).select(
        *spec.key_names, "p.*", F.lit(scored_at.replace(tzinfo=None)).cast("timestamp").alias("scored_at"))


# --------------------------------------------------------------------------------------------
# Evaluation and validation (their harnesses live in bench_eval.py / bench_validation.py)


def bench_evaluation(cfg: JobConfig, rows: int | None = None, results: Path | None = None,
                  record: bool = True) -> dict[str, Any]:
    from jobs.bench.evaluation import run_evaluation_bench

    result = run_evaluation_bench(_bench_config(cfg), rows or 20_000_000)
    result.update(_machine())
    if record:
        _append_doc(results_path(cfg, results), f"evaluation, {result['rows']:,} rows", result)
    return result


def bench_validation(cfg: JobConfig, rows: int | None = None, results: Path | None = None,
                  record: bool = True) -> dict[str, Any]:
    from jobs.bench.validation import run_validation_bench

    result = run_validation_bench(_bench_config(cfg), rows or 10_000_000)
    result.update(_machine())
    if record:
        _append_doc(results_path(cfg, results), f"validation, {result['rows']:,} rows", result)
    return result


def bench_scaling(cfg: JobConfig, rows: int | None = None, results: Path | None = None,
                  record: bool = True,
                  sizes: tuple[int, ...] = (1_000_000, 4_000_000, 16_000_000)) -> dict[str, Any]:
    """Our score job alone at growing sizes: time should grow linearly, worker RSS stay flat.
    ``--rows N`` runs N, 4N and 16N instead of the default 1M, 4M, 16M."""
    from jobs.spark import get_spark
    from mmoe_model.artifact import ModelArtifact, read_artifact_files
    from schemas import load_spec

    if rows:
        sizes = (rows, 4 * rows, 16 * rows)
    cfg = _bench_config(cfg)
    spec = load_spec("synth")
    spark = get_spark(cfg.spark)
    runs = []
    for size in sizes:
        part = ensure_synth_partition(cfg, size)
        files = read_artifact_files(reference_artifact(cfg))
        artifact = ModelArtifact.from_files(files)
        with WorkerRssSampler() as rss:
            seconds, _ = _timed(lambda: _score_direct(
                spark, part, files, artifact, spec, cfg, Path(cfg.warehouse) / "bench-out" / "scaling",
                dt.datetime.now(dt.timezone.utc)))
        runs.append({"rows": size, "seconds": round(seconds, 2), "rows_per_s": round(size / seconds),
                     "peak_python_worker_rss_mib": round(rss.peak_mib, 1)})
    result = {"bench": "scaling", "rows": sizes[-1], "runs": runs,
              "seconds_per_million_rows": [round(r["seconds"] / r["rows"] * 1e6, 2) for r in runs],
              **_machine()}
    if record:
        _append_doc(results_path(cfg, results), f"scoring scaling, {', '.join(f'{s:,}' for s in sizes)} rows", result)
    return result
