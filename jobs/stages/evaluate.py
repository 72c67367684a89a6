"""Evaluate job: predictions x labels (x features for segments / users) of a ds -> the metrics
table ``<wh>/<dataset>/metrics/ds=D/`` (model_version, task, segment, metric, value, n).

The partition is replaced atomically enough for a batch job: the new content (the evaluated
versions' rows plus, when only some versions are evaluated, the rows of the other versions
already there) is written to a hidden sibling directory first, then swapped in by two renames.
Spark never reads and overwrites the same files in one plan, and a rerun never duplicates rows.
"""

from __future__ import annotations

import datetime as dt
import shutil
from functools import reduce
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.config import JobConfig
from jobs.errors import ConfigError, MissingInputError
from jobs.manifest import RunManifest
from jobs.stages.metrics import compute_metrics
from jobs.warehouse import Warehouse, parse_date
from schemas.spec import DatasetSpec
from schemas.tables import METRICS_STRUCT


def _footer_rows(path: Path) -> int:
    import pyarrow.dataset as pads

    return pads.dataset(str(path), format="parquet").count_rows()


def _has_parquet(path: Path) -> bool:
    return path.is_dir() and any(path.rglob("*.parquet"))


def available_versions(wh: Warehouse, spec: DatasetSpec, ds: str) -> list[str]:
    """The model versions that have predictions for ``ds``."""
    root = wh.partition(spec.name, "predictions", ds)
    if not root.is_dir():
        return []
    return sorted(p.name.split("=", 1)[1] for p in root.glob("model_version=*") if _has_parquet(p))


def _select_versions(wh: Warehouse, spec: DatasetSpec, ds: str,
                     requested: list[str] | None) -> list[str]:
    root = wh.partition(spec.name, "predictions", ds)
    present = available_versions(wh, spec, ds)
    if requested:
        versions = list(dict.fromkeys(requested))
        for v in versions:
            wh.partition(spec.name, "predictions", ds, model_version=v)  # refuses unsafe names
        missing = [v for v in versions if v not in present]
        if missing:
            raise MissingInputError(
                f"no predictions for model_version {', '.join(missing)} on ds={ds} under {root} "
                f"(present: {', '.join(present) or 'none'})")
        return versions
    if not present:
        raise MissingInputError(f"no predictions for ds={ds}: {root} has no model_version=V partition")
    return present


def _read(spark: SparkSession, path: Path, columns: list[str], what: str) -> DataFrame:
    frame = spark.read.parquet(str(path))
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MissingInputError(f"{what} at {path} lacks column(s) {missing}")
    return frame.select(*columns)


def _labels_missing(spec: DatasetSpec, ds: str, path: Path, wait_days: int) -> MissingInputError:
    deadline = parse_date(ds, "ds") + dt.timedelta(days=wait_days)
    today = dt.date.today()  # only to tell whether the deadline has passed
    state = ("the deadline has passed, so they are late" if today > deadline
             else f"the deadline has not passed yet (today is {today.isoformat()})")
    return MissingInputError(
        f"labels for {spec.name} ds={ds} are missing ({path}); they are expected by "
        f"{deadline.isoformat()} (ds + evaluation.label_wait_days={wait_days}): {state}")


def _segments(cfg: JobConfig, spec: DatasetSpec) -> list[str]:
    segments = list(cfg.evaluation.segments if cfg.evaluation.segments is not None else spec.segments)
    unknown = [s for s in segments if s not in spec.features_table_columns]
    if unknown:
        raise ConfigError(f"evaluation.segments names column(s) {unknown} that the {spec.name} "
                          f"features table does not have")
    return list(dict.fromkeys(segments))


def evaluate_partition(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, ds: str,
                       model_versions: list[str] | None, manifest: RunManifest) -> DataFrame:
    """Compute and write the metrics of ``ds`` for the requested (default: all) model versions;
    returns the metrics partition as written (all versions in it)."""
    wh = Warehouse(cfg.warehouse)
    ds = parse_date(ds, "ds").isoformat()
    versions = _select_versions(wh, spec, ds, model_versions)
    segments = _segments(cfg, spec)
    user = spec.user_column
    keys, tasks = spec.key_names, spec.task_names

    labels_path = wh.partition(spec.name, "labels", ds)
    if not _has_parquet(labels_path):
        raise _labels_missing(spec, ds, labels_path, cfg.evaluation.label_wait_days)
    feature_columns = list(dict.fromkeys(segments + ([user] if user else [])))
    features_path = wh.partition(spec.name, "features", ds)
    if feature_columns and not _has_parquet(features_path):
        raise MissingInputError(f"features for {spec.name} ds={ds} are missing ({features_path}); "
                                f"evaluation needs {feature_columns} from them")

    frames = [_read(spark, wh.partition(spec.name, "predictions", ds, model_version=v),
                    keys + spec.prediction_columns, "predictions").withColumn("model_version", F.lit(v))
              for v in versions]
    predictions = reduce(DataFrame.unionByName, frames)
    # Row counts from the parquet footers: no Spark pass over the largest input just to count it.
    read_rows = {v: _footer_rows(wh.partition(spec.name, "predictions", ds, model_version=v))
                 for v in versions}
    manifest.input_rows = int(sum(read_rows.values()))
    manifest.model_version = ",".join(versions)

    scored = predictions.join(_read(spark, labels_path, keys + tasks, "labels"), keys, "inner")
    if feature_columns:
        features = _read(spark, features_path, keys + [c for c in feature_columns if c not in keys],
                         "features")
        scored = scored.join(features, keys, "inner")
    metrics = compute_metrics(scored, tasks, segments, user)

    target = wh.partition(spec.name, "metrics", ds)
    rows_written, kept = _replace_partition(spark, target, metrics, versions, manifest.run_id)

    summary = (spark.read.parquet(str(target))
               .where(F.col("model_version").isin(versions) & (F.col("segment") == "all")
                      & F.col("metric").isin("auc", "count"))
               .collect())
    auc = {v: {} for v in versions}
    matched = {v: 0 for v in versions}
    for r in summary:
        if r["metric"] == "auc":
            auc[r["model_version"]][r["task"]] = r["value"]
        else:
            matched[r["model_version"]] = max(matched[r["model_version"]], int(r["value"]))
    manifest.output_rows = rows_written
    manifest.outputs["metrics"] = str(target)
    manifest.details.update({
        "auc": auc,                    # model_version -> task -> AUC over segment 'all'
        "segments": segments,
        "user_column": user,
        "matched_rows": matched,
        "unmatched_prediction_rows": {v: int(read_rows.get(v, 0)) - matched[v] for v in versions},
        "kept_rows_of_other_versions": kept,
    })
    return spark.read.parquet(str(target))


def _replace_partition(spark: SparkSession, target: Path, metrics: DataFrame,
                       versions: list[str], run_id: str) -> tuple[int, int]:
    """Write ``metrics`` plus the rows of other versions already in ``target`` to a hidden
    sibling, then swap it in. Returns (rows of the evaluated versions, rows kept)."""
    table = target.parent
    table.mkdir(parents=True, exist_ok=True)
    tmp = table / f"_tmp_{target.name}_{run_id}"
    old = table / f"_old_{target.name}_{run_id}"
    content = metrics
    if _has_parquet(target):
        others = (spark.read.schema(METRICS_STRUCT).parquet(str(target))
                  .where(~F.col("model_version").isin(versions)))
        content = others.unionByName(metrics)
    try:
        content.repartition(1).write.mode("overwrite").parquet(str(tmp))
        written = spark.read.schema(METRICS_STRUCT).parquet(str(tmp))
        counts = {r["mine"]: r["count"] for r in written.groupBy(
            F.col("model_version").isin(versions).alias("mine")).count().collect()}
        if not counts.get(True):
            raise MissingInputError(
                f"no prediction row of model_version {', '.join(versions)} on {target.name} "
                f"matched a label row (inner join on the keys): nothing to evaluate")
        if target.exists():
            target.rename(old)
        try:
            tmp.rename(target)
        except OSError:
            if old.exists() and not target.exists():
                old.rename(target)  # put the previous content back
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return int(counts.get(True, 0)), int(counts.get(False, 0))
