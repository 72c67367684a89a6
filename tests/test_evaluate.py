"""evaluate_partition on a tiny synth warehouse: idempotent reruns, partial reruns keep the other
versions' rows, join / manifest bookkeeping, and typed errors for missing inputs."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _frames import random_features
from pyspark.testing import assertDataFrameEqual
from sklearn.metrics import roc_auc_score

from jobs.core.errors import MissingInputError
from jobs.core.manifest import RunManifest
from jobs.core.warehouse import Warehouse
from jobs.evaluate.stage import evaluate_partition
from schemas.spec import load_spec
from schemas.tables import labels_arrow_schema

DS = "2026-11-03"
N = 240


@pytest.fixture(scope="module")
def spec():
    return load_spec("synth")


def _write_predictions(wh: Warehouse, spec, version: str, seed: int, rows: np.ndarray) -> None:
    rng = np.random.default_rng(seed)
    out = wh.partition(spec.name, "predictions", DS, model_version=version)
    out.mkdir(parents=True, exist_ok=True)
    cols = {"impression_id": pa.array(rows, pa.int64())}
    for task in spec.task_names:
        cols[f"p_{task}"] = pa.array(np.round(rng.random(len(rows)), 2))  # ties included
    cols["scored_at"] = pa.array([dt.datetime(2026, 11, 4)] * len(rows), pa.timestamp("us", "UTC"))
    pq.write_table(pa.table(cols), out / "part-0.parquet")


@pytest.fixture
def warehouse(job_config, spec):
    rng = np.random.default_rng(3)
    wh = Warehouse(job_config.warehouse)
    for table, data in (("features", random_features(spec, rng, N, users=25)),
                        ("labels", pa.table({"impression_id": np.arange(N, dtype=np.int64),
                                             **{t: rng.integers(0, 2, N).astype(np.int32)
                                                for t in spec.task_names}},
                                            schema=labels_arrow_schema(spec)))):
        path = wh.partition(spec.name, table, DS)
        path.mkdir(parents=True)
        pq.write_table(data, path / "part-0.parquet")
    # version A scores every row plus 10 rows that have no labels / features (unmatched)
    _write_predictions(wh, spec, "A", 1, np.arange(N + 10))
    _write_predictions(wh, spec, "B", 2, np.arange(N))
    return wh


def _run(spark, cfg, spec, versions):
    result = evaluate_partition(spark, cfg, spec, DS, versions)
    manifest = RunManifest(job="evaluate", dataset=spec.name, ds=DS).apply(result.record())
    metrics = spark.read.parquet(str(Warehouse(cfg.warehouse).partition(spec.name, "metrics", DS)))
    return metrics.localCheckpoint(), manifest


def _oracle_auc(wh: Warehouse, spec, version: str, task: str) -> float:
    def read(table, **more):
        return pq.read_table(wh.partition(spec.name, table, DS, **more)).to_pandas()

    joined = read("predictions", model_version=version).merge(read("labels"), on="impression_id")
    return roc_auc_score(joined[task], joined[f"p_{task}"])


def test_rerun_is_idempotent_and_partial_rerun_keeps_other_versions(spark, job_config, spec, warehouse):
    first, manifest = _run(spark, job_config, spec, None)
    keys = ["model_version", "task", "segment", "metric"]
    assert first.groupBy(*keys).count().where("count > 1").count() == 0
    segments = {r["segment"] for r in first.select("segment").distinct().collect()}
    assert {"all", "platform=ios", "user_cohort=power"} <= segments
    assert manifest.model_version == "A,B"
    assert manifest.input_rows == 2 * N + 10
    assert manifest.output_rows == first.count()
    assert manifest.details["unmatched_prediction_rows"] == {"A": 10, "B": 0}
    for task in spec.task_names:
        assert manifest.details["auc"]["A"][task] == pytest.approx(
            _oracle_auc(warehouse, spec, "A", task), abs=1e-12)

    second, _ = _run(spark, job_config, spec, None)
    assertDataFrameEqual(second, first)

    # New scores for B only; evaluating B must replace B's rows and keep A's untouched.
    _write_predictions(warehouse, spec, "B", 99, np.arange(N))
    third, manifest = _run(spark, job_config, spec, ["B"])
    assert manifest.model_version == "B" and manifest.input_rows == N
    assert manifest.details["kept_rows_of_other_versions"] == first.where("model_version = 'A'").count()
    assertDataFrameEqual(third.where("model_version = 'A'"), first.where("model_version = 'A'"))
    assert third.count() == first.count()
    assert third.groupBy(*keys).count().where("count > 1").count() == 0
    new_auc = third.where("model_version = 'B' AND task = 'click' AND segment = 'all' AND metric = 'auc'")
    assert new_auc.first()["value"] == pytest.approx(_oracle_auc(warehouse, spec, "B", "click"), abs=1e-12)
    assert new_auc.first()["value"] != first.where(
        "model_version = 'B' AND task = 'click' AND segment = 'all' AND metric = 'auc'").first()["value"]
    # nothing left behind by the swap
    leftovers = [p.name for p in warehouse.table(spec.name, "metrics").iterdir() if p.name != f"ds={DS}"]
    assert leftovers == []


def test_missing_labels_names_the_deadline(spark, job_config, spec, warehouse):
    labels = warehouse.partition(spec.name, "labels", DS)
    for f in labels.iterdir():
        f.unlink()
    job_config.evaluation.label_wait_days = 3
    with pytest.raises(MissingInputError, match=r"labels .*ds=2026-11-03.*expected by 2026-11-06"):
        evaluate_partition(spark, job_config, spec, DS, None)
    passed = dt.date.today() > dt.date(2026, 11, 6)
    with pytest.raises(MissingInputError, match="has passed" if passed else "has not passed"):
        evaluate_partition(spark, job_config, spec, DS, None)


def test_missing_requested_version_is_named(spark, job_config, spec, warehouse):
    with pytest.raises(MissingInputError, match="model_version C "):
        evaluate_partition(spark, job_config, spec, DS, ["A", "C"])
    assert not warehouse.partition(spec.name, "metrics", DS).exists()
