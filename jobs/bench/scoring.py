"""`mmoe bench scoring|evaluation|validation|scaling`: measured on the same data in one run.

Each bench returns a dict (printed as the last stdout line by the CLI) and appends a section to
a results file the user names (``mmoe bench ... --results PATH``; default
``<warehouse>/_bench/benchmarks.md``) with the machine, versions and command. The project's
published figures are copied from such a file into docs/benchmarks.md by hand. Bench data lives
under ``<warehouse>/_bench`` and is reused when it already has the requested size.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd  # module level: the naive pandas UDF's type hints are resolved here

from jobs.bench.common import (
    BENCH_DS,
    _append_doc,
    _bench_config,
    _machine,
    _score_direct,
    _timed,
    ensure_synth_partition,
    reference_artifact,
    results_path,
)
from jobs.bench.connect import connect_columns
from jobs.core.config import JobConfig
from jobs.core.errors import InputError
from jobs.core.spark import default_parallelism, get_spark, session_conf
from jobs.core.warehouse import Warehouse, parquet_files, read_table, replacing
from jobs.runtime.udf import mmoe_udf
from jobs.score.catalog import (
    grid_pairs,
    recommend_grid,
    recommend_rows,
    top_items_frame,
)
from jobs.score.stage import (
    score_frame,
    spread_partitions,
)
from mmoe_model.artifact import ModelArtifact, read_artifact_files
from schemas import load_spec


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
                  record: bool = True, connect: str | None = None,
                  repeats: int = 3) -> dict[str, Any]:
    """Every scoring method on the same data and model, each timed ``repeats`` times in
    rounds (every method once per round, the order rotated each round so that no method is
    always first after another's run); rates and ratios are the medians of the rounds. With
    ``connect`` (a Spark Connect URL) also both readers from a Connect client of that server
    (:mod:`jobs.bench.connect`)."""
    rows = rows or 1_000_000
    if repeats < 1:
        raise InputError(f"--repeats must be at least 1, got {repeats}")
    cfg = _bench_config(cfg)
    spec = load_spec("synth")
    part = ensure_synth_partition(cfg, rows)
    model_dir = reference_artifact(cfg)
    files = read_artifact_files(model_dir)
    artifact = ModelArtifact.from_files(files)
    spark = get_spark(cfg.spark)
    batch = cfg.scoring.batch_size
    with session_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch": str(batch)}):
        result = _scoring_runs(spark, cfg, spec, part, files, artifact, rows, batch, repeats)
    if connect:
        result.update(connect_columns(connect, cfg, part, model_dir, rows, result))
    if record:
        _append_doc(results_path(cfg, results), f"scoring, {rows:,} rows", result)
    return result


def _scoring_runs(spark, cfg: JobConfig, spec, part: Path, files, artifact, rows: int,
                  batch: int, repeats: int) -> dict[str, Any]:
    import copy

    import torch
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    cores = default_parallelism(spark)
    out_root = Warehouse(cfg.warehouse).scratch("bench-out")
    features = spread_partitions(spark, spark.read.parquet(str(part)))
    scored_at = dt.datetime.now(dt.timezone.utc)
    keys, feats = spec.key_names, spec.feature_names
    pred_cols = spec.prediction_columns
    stamp = F.lit(scored_at.replace(tzinfo=None)).cast("timestamp").alias("scored_at")

    def writing(frame_of: Callable[[], Any], name: str) -> Callable[[], None]:
        return lambda: frame_of().write.mode("overwrite").parquet(str(out_root / name))

    # Warm-up, untimed: start the Python workers and import torch there (every method below
    # reuses them), and let the driver's torch initialise its kernels.
    warm = features.limit(4 * batch)
    score_frame(spark, warm, files, artifact, spec, cfg, scored_at).write.mode("overwrite").parquet(
        str(out_root / "warmup"))
    # A whole untimed direct pass: with only a few fragments, one Python worker could run them
    # all and the other would import torch and build the model inside the timed run (measured:
    # the first timed direct run was 8-10 % slower than the same run right after it).
    _score_direct(spark, part, files, artifact, spec, cfg, out_root / "warmup-direct", scored_at)
    torch.set_num_threads(cores)
    artifact.predict(read_table(part, columns=feats).slice(0, batch))

    # (d) the I/O floor: same read and write, no model.
    def floor():
        return features.select(*keys, *feats).select(
            *keys, *[F.lit(0.5).alias(c) for c in pred_cols], stamp)

    # (a) ours: the score job's direct reader (what `mmoe score` runs on a parquet partition);
    # (a'') the same with the other scoring.pipeline setting (read-ahead / background writer).
    other_cfg = copy.deepcopy(cfg)
    other_cfg.scoring.pipeline = not cfg.scoring.pipeline

    def direct(run_cfg: JobConfig, name: str) -> Callable[[], None]:
        return lambda: _score_direct(spark, part, files, artifact, spec, run_cfg,
                                     out_root / name, scored_at)

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
    # (f) the public Spark UDF (jobs.runtime.udf.mmoe_udf), same model and batch size, same write.
    public = mmoe_udf(files, threads_per_task=cfg.scoring.threads_per_task, spark=spark,
                      precision=cfg.scoring.precision)
    # (e) in-process torch on the same rows in memory, same total thread count.
    table = read_table(part, columns=feats)
    in_precision = artifact.with_precision(cfg.scoring.precision)
    methods: dict[str, Callable[[], Any]] = {
        "io_floor": writing(floor, "io_floor"),
        "ours": direct(cfg, "ours"),
        "ours_other": direct(other_cfg, "ours-other"),
        # (a') ours through mapInArrow (scoring.reader: spark), for the record
        "ours_spark_reader": writing(lambda: score_frame(spark, features, files, artifact, spec,
                                                         cfg, scored_at), "ours_spark_reader"),
        "predict_batch_udf": writing(lambda: features.select(*keys, pb_udf(*feats).alias("p"))
                                     .select(*keys, "p.*", stamp), "predict_batch_udf"),
        "udf": writing(lambda: features.select(*keys, public(*public.input_columns).alias("p"))
                       .select(*keys, "p.*", stamp), "public_udf"),
        # (c) a straightforward iterator pandas UDF over a struct, Python loop over experts
        "naive_udf": writing(lambda: _naive_frame(spark, features, spec, broadcast, scored_at),
                             "naive_udf"),
        "torch_inprocess": lambda: in_precision.predict(table, batch_size=batch),
    }
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    rss_peak = 0.0
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            if name == "ours":  # with the peak RSS of any Python worker while it runs
                with WorkerRssSampler() as rss:
                    took, _ = _timed(methods[name])
                rss_peak = max(rss_peak, rss.peak_mib)
            else:
                took, _ = _timed(methods[name])
            seconds[name].append(took)
    med = {name: float(np.median(times)) for name, times in seconds.items()}
    timed = {cfg.scoring.pipeline: med["ours"], other_cfg.scoring.pipeline: med["ours_other"]}
    anchors = _model_anchors(cfg, spec, part, files, artifact, rows, batch, cores, repeats)
    limit = anchors["model_only"][cfg.scoring.precision]
    return {
        "bench": "scoring", "rows": rows, "batch_size": batch, "spark_cores": cores,
        "repeats": repeats,
        "ours_seconds": round(med["ours"], 3),
        "ours_rows_per_s": round(rows / med["ours"]),
        "ours_spark_reader_rows_per_s": round(rows / med["ours_spark_reader"]),
        "ours_pipeline": cfg.scoring.pipeline,
        "ours_sequential_rows_per_s": round(rows / timed[False]),
        "ours_pipelined_rows_per_s": round(rows / timed[True]),
        "predict_batch_udf_rows_per_s": round(rows / med["predict_batch_udf"]),
        "udf_rows_per_s": round(rows / med["udf"]),
        "naive_udf_rows_per_s": round(rows / med["naive_udf"]),
        "io_floor_rows_per_s": round(rows / med["io_floor"]),
        "torch_inprocess_rows_per_s": round(rows / med["torch_inprocess"]),
        "ours_vs_predict_batch_udf": round(med["predict_batch_udf"] / med["ours"], 2),
        "udf_vs_predict_batch_udf": round(med["predict_batch_udf"] / med["udf"], 2),
        "ours_vs_inprocess": round(med["torch_inprocess"] / med["ours"], 2),
        "ours_wall_vs_io_floor": round(med["ours"] / med["io_floor"], 2),
        "ours_peak_python_worker_rss_mib": round(rss_peak, 1),
        # the model alone (one process per core, pre-encoded tensors, no I/O), in this run's
        # scoring.precision, which "ours" and the public UDF scored in too
        "precision": cfg.scoring.precision,
        "model_limit_rows_per_s": limit["rows_per_s"],
        "model_limit_worker_rows_per_s": limit["worker_rows_per_s"],
        "ours_vs_model_limit": round(rows / med["ours"] / limit["rows_per_s"], 3),
        "model_only_rows_per_s": {p: v["rows_per_s"] for p, v in anchors["model_only"].items()},
        "model_only_vs_fp32": {p: round(v["rows_per_s"] / anchors["model_only"]["fp32"]
                                        ["rows_per_s"], 3)
                               for p, v in anchors["model_only"].items()},
        "precision_parity": anchors["parity"],
        "rounds_rows_per_s": {name: [round(rows / t) for t in times]
                              for name, times in seconds.items()},
        **_machine(),
    }


PARITY_ROWS = 200_000  # labelled bench rows the precisions are compared on (at most)


def _model_anchors(cfg: JobConfig, spec, part: Path, files, artifact, rows: int, batch: int,
                   cores: int, repeats: int) -> dict[str, Any]:
    """The model-only rate of every precision (:func:`jobs.bench.model_limit.model_limit`,
    one process per Spark core) and bf16 / int8 parity with fp32 on labelled bench rows."""
    from jobs.bench.model_limit import model_limit, precision_parity
    from mmoe_model.precision import PRECISIONS

    feats = spec.feature_names
    model_only = {p: model_limit(files, part, feats, rows, batch, p, cores, repeats)
                  for p in PRECISIONS}
    n = min(rows, PARITY_ROWS)
    features = read_table(part).slice(0, n)
    labels = read_table(Warehouse(cfg.warehouse).partition("synth", "labels", BENCH_DS)
                        ).to_pandas().set_index(spec.key_names[0])
    aligned = labels.loc[features.column(spec.key_names[0]).to_numpy()]
    parity = precision_parity(artifact, features.select(feats), aligned, spec.task_names, batch)
    return {"model_only": model_only, "parity": parity}


def _naive_frame(spark, features, spec, broadcast, scored_at):
    import torch
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
    from pyspark.sql.functions import pandas_udf

    feats, pred_cols = spec.feature_names, spec.prediction_columns
    schema = T.StructType([T.StructField(c, T.DoubleType()) for c in pred_cols])

    @pandas_udf(schema)
    def naive(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        art = ModelArtifact.from_files(broadcast.value)
        torch.set_num_threads(1)
        for frame in batches:
            with torch.inference_mode():
                dense, cats = art.encoder.encode(frame)
                probs = torch.sigmoid(_loop_mmoe_forward(art.model, dense, cats)).double().numpy()
            yield pd.DataFrame({c: probs[:, i] for i, c in enumerate(pred_cols)})

    return features.select(*spec.key_names, naive(F.struct(*feats)).alias("p")).select(
        *spec.key_names, "p.*", F.lit(scored_at.replace(tzinfo=None)).cast("timestamp").alias("scored_at"))


def bench_scaling(cfg: JobConfig, rows: int | None = None, results: Path | None = None,
                  record: bool = True,
                  sizes: tuple[int, ...] = (1_000_000, 4_000_000, 16_000_000)) -> dict[str, Any]:
    """Our score job alone at growing sizes: time should grow linearly, worker RSS stay flat.
    ``--rows N`` runs N, 4N and 16N instead of the default 1M, 4M, 16M."""
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
                spark, part, files, artifact, spec, cfg, Warehouse(cfg.warehouse).scratch("bench-out", "scaling"),
                dt.datetime.now(dt.timezone.utc)))
        runs.append({"rows": size, "seconds": round(seconds, 2), "rows_per_s": round(size / seconds),
                     "peak_python_worker_rss_mib": round(rss.peak_mib, 1)})
    result = {"bench": "scaling", "rows": sizes[-1], "runs": runs,
              "seconds_per_million_rows": [round(r["seconds"] / r["rows"] * 1e6, 2) for r in runs],
              **_machine()}
    if record:
        _append_doc(results_path(cfg, results), f"scoring scaling, {', '.join(f'{s:,}' for s in sizes)} rows", result)
    return result


def bench_catalog(cfg: JobConfig, rows: int | None = None, results: Path | None = None,
                  record: bool = True, items: int = 200, top_k: int = 20) -> dict[str, Any]:
    """Users × items grid (``rows`` pairs: ``rows // items`` users × the ``items`` top items),
    top-``top_k`` per user, through Spark both ways on the same tables: the factored path
    (first layer once per user and per item) and row scoring of the joined pairs (join, score
    every row, window rank). Also the largest |Δp| between the two outputs."""
    import pyarrow.parquet as pq

    rows = rows or 1_000_000
    cfg = _bench_config(cfg)
    spec = load_spec("synth")
    wh = Warehouse(cfg.warehouse)
    snapshot = {name: wh.snapshot(spec.name, name, BENCH_DS) for name in ("users", "items")}
    if not (parquet_files(snapshot["users"])
            and Warehouse(cfg.warehouse).scratch("reference-mmoe").is_dir()):
        ensure_synth_partition(cfg, 20_000)  # writes the day's catalog snapshots too
    files = read_artifact_files(reference_artifact(cfg))
    artifact = ModelArtifact.from_files(files)
    spark = get_spark(cfg.spark)
    user_key, item_key = spec.catalog.user_key, spec.catalog.item_key
    all_users = read_table(snapshot["users"])
    n_users = max(1, rows // items)
    if n_users > all_users.num_rows:
        raise ValueError(f"bench catalog: {rows} pairs need {n_users} users, the synth catalog "
                         f"has {all_users.num_rows}")
    users_dir = Warehouse(cfg.warehouse).scratch("bench-in", f"catalog-users-{n_users}")
    if not users_dir.is_dir():
        with replacing(users_dir) as staging:
            staging.mkdir(parents=True, exist_ok=True)
            pq.write_table(all_users.slice(0, n_users), staging / "part-0.parquet",
                           row_group_size=max(1, n_users // default_parallelism(spark)))
    users = spark.read.parquet(str(users_dir))
    items_df = spark.read.parquet(str(snapshot["items"]))
    top_items = top_items_frame(items_df, spec, items).toArrow()
    cfg.scoring.catalog.top_k = top_k
    out_root = Warehouse(cfg.warehouse).scratch("bench-out")
    scored_at = dt.datetime.now(dt.timezone.utc)

    def factored():
        return recommend_grid(spark, users, top_items, files, artifact, spec, cfg, scored_at, top_k)

    def by_rows():
        pairs = grid_pairs(users, items_df, spec, items)
        return recommend_rows(spark, pairs, users, items_df, files, artifact, spec, cfg,
                              scored_at, top_k)

    with session_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch":
                              str(cfg.scoring.batch_size)}):
        # warm-up, untimed: a Python worker per core started, torch imported, model cached there
        # (both paths then find them warm)
        warm = spread_partitions(spark, users.limit(16 * default_parallelism(spark)))
        recommend_grid(spark, warm, top_items, files, artifact, spec, cfg, scored_at,
                       top_k).write.mode("overwrite").parquet(str(out_root / "catalog-warmup"))
        factored_seconds, _ = _timed(lambda: factored().write.mode("overwrite").parquet(
            str(out_root / "catalog-factored")))
        rows_seconds, _ = _timed(lambda: by_rows().write.mode("overwrite").parquet(
            str(out_root / "catalog-rows")))
    # agreement: |Δp| on the (user, item) pairs both top-Ks hold; pairs in only one of them sit
    # at near-ties of the fused score (their score gap is reported)
    a = read_table(out_root / "catalog-factored").to_pandas()
    b = read_table(out_root / "catalog-rows").to_pandas()
    both = a.merge(b, on=[user_key, item_key], suffixes=("_f", "_r"))
    cols = spec.prediction_columns
    max_dp = float(max(np.abs(both[f"{c}_f"] - both[f"{c}_r"]).max() for c in cols))
    kth = b.groupby(user_key)["score"].min()
    only = a[~a.set_index([user_key, item_key]).index.isin(b.set_index([user_key, item_key]).index)]
    gap = float(np.abs(only["score"].to_numpy() - kth.loc[only[user_key]].to_numpy()).max()) \
        if len(only) else 0.0
    pairs = n_users * top_items.num_rows
    result = {
        "bench": "catalog", "rows": pairs, "users": n_users, "items": top_items.num_rows,
        "top_k": top_k, "batch_size": cfg.scoring.batch_size,
        "spark_cores": default_parallelism(spark),
        "factored_seconds": round(factored_seconds, 3),
        "factored_pairs_per_s": round(pairs / factored_seconds),
        "rows_seconds": round(rows_seconds, 3),
        "rows_pairs_per_s": round(pairs / rows_seconds),
        "factored_vs_rows": round(rows_seconds / factored_seconds, 2),
        "top_k_pairs_in_both": round(len(both) / max(len(b), 1), 6),
        "max_abs_dp_factored_vs_rows": max_dp,
        "max_score_gap_of_differing_pairs": gap,
        **_machine(),
    }
    if record:
        _append_doc(results_path(cfg, results), f"catalog, {n_users:,} users x "
                    f"{top_items.num_rows} items", result)
    return result
