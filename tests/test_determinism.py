"""Determinism (issue 11, item 4): the same inputs and model give the same predictions (1e-6)
whatever the partitioning of the input files, the row order, the batch size or the reader —
checked against the model run in-process on the raw rows (no Spark) — and reruns of validate,
score and evaluate write identical tables, apart from the documented timestamps
(``predictions.scored_at``; ``validated_at``/``run_id``/timings in ``status.json``). The number
of executors is covered by tests/test_cluster.py (two executors vs local mode)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from _reliability import (
    good_columns,
    label_columns,
    tiny_model,
    write_day,
    write_parquet,
)

from jobs.core.config import load_config
from jobs.core.warehouse import Warehouse, fingerprint, read_table
from jobs.evaluate.stage import evaluate_partition
from jobs.score.stage import score_partition
from jobs.validate.stage import validate_partition
from schemas import load_spec
from schemas.tables import features_arrow_schema

DS = "2026-07-07"
N = 700
KEY = "impression_id"
# status.json fields that change on every run by design
RUN_STAMPS = {"validated_at", "run_id", "spark_jobs", "seconds"}


@pytest.fixture(scope="module")
def setup(spark, tmp_path_factory):
    spec = load_spec("synth")
    root = tmp_path_factory.mktemp("determinism")
    cols = good_columns(spec, N, seed=21)
    cols["x5"][7] = float("nan")  # one quarantined row: the readers must skip the same keys
    model = tiny_model(root / "model", spec, seed=9)
    layouts = {}
    # the same rows: one file in order / three files, shuffled
    for name, files in (("one", 1), ("three", 3)):
        wh = root / name
        write_day(wh, spec, DS, features=cols, labels=label_columns(spec, cols[KEY], 21))
        directory = Warehouse(wh).partition("synth", "features", DS)
        order = np.random.default_rng(files).permutation(N) if files > 1 else np.arange(N)
        for i, part in enumerate(np.array_split(order, files)):
            write_parquet(directory, {c: [v[j] for j in part] for c, v in cols.items()},
                          features_arrow_schema(spec), f"part-{i:05d}.parquet", fresh=(i == 0))
        cfg = load_config(warehouse=wh)
        cfg.spark.conf["spark.sql.shuffle.partitions"] = "4"
        validate_partition(spark, cfg, spec, DS)
        layouts[name] = cfg
    # the oracle: the artifact on the raw rows that passed, in-process, one forward pass
    from mmoe_model.artifact import ModelArtifact

    keep = [i for i in range(N) if i != 7]
    frame = pa.table({c: [cols[c][i] for i in keep] for c in spec.feature_names})
    oracle = ModelArtifact.load(model).predict(frame)
    return dict(spec=spec, model=model, layouts=layouts,
                oracle_keys=[cols[KEY][i] for i in keep], oracle=oracle)


def _identical(a, b) -> bool:
    """Same schema and same values, NaN equal to NaN in the same place (arrow's ``equals``
    says NaN != NaN)."""
    return a.schema == b.schema and a.to_pandas().equals(b.to_pandas())


def _predictions(spark, setup, layout: str, reader: str, batch_size: int):
    cfg = setup["layouts"][layout]
    cfg.scoring.reader, cfg.scoring.batch_size = reader, batch_size
    result = score_partition(spark, cfg, setup["spec"], DS, setup["model"])
    assert result.details["reader"] == reader
    return result.output, read_table(result.output).sort_by(KEY)


@pytest.mark.parametrize("layout,reader,batch_size", [
    ("one", "direct", 64), ("three", "direct", 1000), ("one", "spark", 50),
    ("three", "spark", 4096),
])
def test_predictions_do_not_depend_on_partitioning_batch_size_or_reader(spark, setup, layout,
                                                                        reader, batch_size):
    _, table = _predictions(spark, setup, layout, reader, batch_size)
    order = np.argsort(setup["oracle_keys"])
    assert table.column(KEY).to_pylist() == [setup["oracle_keys"][i] for i in order]
    got = np.column_stack([table.column(c).to_numpy() for c in setup["spec"].prediction_columns])
    np.testing.assert_allclose(got, setup["oracle"][order], atol=1e-6, rtol=0)


def test_reruns_write_identical_tables_apart_from_timestamps(spark, setup):
    spec, cfg = setup["spec"], setup["layouts"]["three"]
    wh = Warehouse(cfg.warehouse)

    # validate: quarantine identical, status identical apart from run stamps
    def status():
        data = json.loads(wh.status_path("synth", DS).read_text())
        return {k: v for k, v in data.items() if k not in RUN_STAMPS}

    first_status = status()
    first_quarantine = read_table(wh.partition("synth", "quarantine", DS))
    validate_partition(spark, cfg, spec, DS)
    assert status() == first_status
    assert _identical(read_table(wh.partition("synth", "quarantine", DS)), first_quarantine)

    # score (direct): same file names, same bytes in every column but scored_at
    out, first = _predictions(spark, setup, "three", "direct", 256)
    names = [name for name, _ in fingerprint(out)]
    _, second = _predictions(spark, setup, "three", "direct", 256)
    assert [name for name, _ in fingerprint(out)] == names
    assert _identical(second.drop_columns(["scored_at"]), first.drop_columns(["scored_at"]))
    assert len(set(second.column("scored_at").to_pylist())) == 1  # one stamp per run

    # evaluate: identical metrics, bit for bit
    evaluate_partition(spark, cfg, spec, DS)
    metrics_dir = wh.partition("synth", "metrics", DS)
    keys = [("model_version", "ascending"), ("task", "ascending"), ("segment", "ascending"),
            ("metric", "ascending")]
    first_metrics = read_table(metrics_dir).sort_by(keys)
    evaluate_partition(spark, cfg, spec, DS)
    assert _identical(read_table(metrics_dir).sort_by(keys), first_metrics)
