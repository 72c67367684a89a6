"""The Spark score job against the in-process model, reruns, gates, refusals, catalog mode."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from _oracle import Oracle
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from jobs.core.errors import NotValidated
from jobs.core.manifest import RunManifest
from jobs.core.warehouse import Warehouse
from jobs.runtime.kernel import arrow_schema, score_batch, utc_us
from jobs.score.catalog import score_catalog
from jobs.score.stage import score_partition
from jobs.validate.scorable import passed_rows
from jobs.validate.stage import validate_partition
from mmoe_model.artifact import save_artifact
from mmoe_model.errors import ArtifactTampered, SpecMismatch
from mmoe_model.features import FeatureEncoder, InputLayout
from mmoe_model.models import ModelConfig, build_model
from mmoe_model.sample import sample_frame
from schemas import load_spec
from schemas.tables import features_arrow_schema, labels_arrow_schema, predictions_struct

DS = "2026-11-02"


@pytest.fixture(scope="module")
def synth():
    return load_spec("synth")


@pytest.fixture(scope="module")
def frame(synth):
    # A few nulls and OOV values: rows with an unknown category (oov=quarantine) get quarantined.
    return sample_frame(synth, 3000, seed=3, null_fraction=0.01, oov_fraction=0.005)


def _write_partition(cfg, spec, frame, ds=DS, null_keys=False):
    wh = Warehouse(cfg.warehouse)
    features = features_arrow_schema(spec)
    if null_keys:  # as a careless upstream writes them: validation quarantines such rows
        features = pa.schema([f.with_nullable(True) for f in features])
    for table, schema in (("features", features), ("labels", labels_arrow_schema(spec))):
        out = wh.partition(spec.name, table, ds)
        out.mkdir(parents=True, exist_ok=True)
        rows = frame if table == "features" else frame.dropna(subset=spec.key_names)
        pq.write_table(pa.Table.from_pandas(rows[schema.names], schema=schema, preserve_index=False),
                       out / "part-0.parquet")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, synth, frame):
    torch.manual_seed(0)
    config = ModelConfig(arch="mmoe", num_experts=4, expert_hidden=(16,), expert_dim=8,
                         tower_hidden=(8,))
    model = build_model(config, InputLayout.from_spec(synth), len(synth.tasks)).eval()
    out = tmp_path_factory.mktemp("model") / "mmoe"
    save_artifact(out, model, config, synth, FeatureEncoder.fit(synth, frame))
    return out


@pytest.fixture(scope="module")
def validated(spark, tmp_path_factory, synth, frame):
    """One validated partition shared by the tests that only read it."""
    from jobs.core.config import load_config

    cfg = load_config(warehouse=tmp_path_factory.mktemp("wh"))
    with_null_key = frame.assign(impression_id=frame["impression_id"].astype("Int64"))
    with_null_key.loc[0, "impression_id"] = pd.NA       # quarantined (null_key); no reader scores it
    _write_partition(cfg, synth, with_null_key, null_keys=True)
    validate_partition(spark, cfg, synth, DS)
    return cfg


def assert_float64_probabilities(predictions, columns, values: np.ndarray) -> None:
    """p_<task> are doubles in the table and carry float64 precision: the model's logits are
    float32 but its sigmoid is taken in float64, so hardly any value is float32-representable.
    A float32 round trip anywhere on the way (a downcast that a 1e-6 comparison cannot see, it
    moves a probability by at most ~3e-8) makes every one of them representable."""
    for column in columns:
        assert predictions.schema[column].dataType == T.DoubleType(), column
    assert values.dtype == np.float64
    representable = np.mean(values == values.astype(np.float32).astype(np.float64))
    assert representable < 0.01, f"{representable:.0%} of the probabilities are float32-rounded"


def _score(spark, cfg, spec, model_dir, with_gates=False, reader="direct"):
    cfg.scoring.reader = reader
    result = score_partition(spark, cfg, spec, DS, model_dir, with_gates)
    manifest = RunManifest("score", spec.name, DS).apply(result.record())
    return manifest, spark.read.parquet(str(result.output))


@pytest.mark.parametrize("reader", ["direct", "spark"])
def test_spark_scores_equal_an_independent_forward_pass(spark, validated, synth, model_dir, reader):
    """The Spark job's probabilities equal tests/_oracle.py's: the artifact's files encoded row
    by row and run through a float64 numpy forward pass written in the test (not
    ModelArtifact.predict, the code the job itself runs). 1e-6: float32 model arithmetic
    differs from it by ~2e-8."""
    from mmoe_model.artifact import ModelArtifact

    manifest, predictions = _score(spark, validated, synth, model_dir, reader=reader)
    assert manifest.details["reader"] == reader
    artifact = ModelArtifact.load(model_dir)
    rows = passed_rows(spark, validated, synth, DS).toPandas()
    expected, _ = Oracle(model_dir).predict(rows.to_dict("records"))
    got = predictions.toPandas().set_index("impression_id").loc[rows["impression_id"]]
    values = got[synth.prediction_columns].to_numpy()
    np.testing.assert_allclose(values, expected, atol=1e-6, rtol=0)
    assert_float64_probabilities(predictions, synth.prediction_columns, values)
    assert len(got) == len(rows) == manifest.output_rows == manifest.input_rows
    assert manifest.input_rows + manifest.quarantined_rows == 3000
    assert manifest.quarantined_rows > 0  # the sample carries unknown categories
    assert manifest.model_version == artifact.model_version
    assert predictions.where((F.col("p_click") < 0) | (F.col("p_click") > 1)).count() == 0
    assert predictions.select("scored_at").distinct().count() == 1
    # the null-key row of the features is not scored: the keys are exactly the features' non-null
    # keys minus the quarantined ones (both read with pyarrow, not through passed_rows)
    wh = Warehouse(validated.warehouse)
    features_keys = pq.read_table(wh.partition(synth.name, "features", DS)).column("impression_id")
    quarantined = set(pq.read_table(wh.partition(synth.name, "quarantine", DS)).column(
        "impression_id").drop_null().to_pylist())
    assert features_keys.null_count == 1
    scored = predictions.select("impression_id").toPandas()["impression_id"]
    assert scored.notna().all()
    assert sorted(scored) == sorted(set(features_keys.drop_null().to_pylist()) - quarantined)


def test_rerun_replaces_the_partition(spark, validated, synth, model_dir):
    _, first = _score(spark, validated, synth, model_dir)
    first = first.drop("scored_at").toPandas()
    _, second = _score(spark, validated, synth, model_dir)
    assertDataFrameEqual(spark.createDataFrame(first), second.drop("scored_at"))
    table = spark.read.parquet(str(Warehouse(validated.warehouse).table(synth.name, "predictions")))
    assert table.count() == table.select("impression_id", "model_version").distinct().count()


@pytest.mark.parametrize("reader", ["direct", "spark"])
def test_with_gates_adds_gate_distributions(spark, validated, synth, model_dir, reader):
    """gate_<task> are the task's softmax gate over the experts, as the independent forward
    pass (tests/_oracle.py) computes it; the probabilities beside them are unchanged."""
    _, predictions = _score(spark, validated, synth, model_dir, with_gates=True, reader=reader)
    got = predictions.orderBy("impression_id").toPandas()
    gates = np.stack(got["gate_like"].to_numpy())
    assert gates.shape == (len(got), 4)
    np.testing.assert_allclose(gates.sum(axis=1), 1.0, atol=1e-5)
    rows = passed_rows(spark, validated, synth, DS).orderBy("impression_id").toPandas()
    probs, expected = Oracle(model_dir).predict(rows.to_dict("records"))  # [B, T], [B, T, E]
    assert list(got["impression_id"]) == list(rows["impression_id"])
    for t, task in enumerate(synth.task_names):  # float32 columns: 1e-6 is a few of their ulps
        np.testing.assert_allclose(np.stack(got[f"gate_{task}"].to_numpy()), expected[:, t, :],
                                   atol=1e-6, rtol=0, err_msg=task)
    np.testing.assert_allclose(got[synth.prediction_columns].to_numpy(), probs, atol=1e-6, rtol=0)


def test_both_readers_write_the_same_table(spark, validated, synth, model_dir):
    _, direct = _score(spark, validated, synth, model_dir, reader="direct")
    direct = spark.createDataFrame(direct.toPandas())  # materialise before the rerun replaces it
    _, via_spark = _score(spark, validated, synth, model_dir, reader="spark")
    assert direct.schema == via_spark.schema
    assertDataFrameEqual(direct.drop("scored_at"), via_spark.drop("scored_at"))


def test_unvalidated_ds_is_refused_unless_inline(spark, job_config, synth, frame, model_dir):
    _write_partition(job_config, synth, frame)
    with pytest.raises(NotValidated, match="has not been validated"):
        _score(spark, job_config, synth, model_dir)
    job_config.scoring.validate_inline = True
    manifest, predictions = _score(spark, job_config, synth, model_dir)
    assert manifest.details["inline_validation"]["input_rows"] == 3000
    # every row but the quarantined ones (counted from the quarantine file, with pyarrow)
    quarantine = Warehouse(job_config.warehouse).partition(synth.name, "quarantine", DS)
    quarantined = pq.read_table(quarantine).num_rows if quarantine.exists() else 0
    assert 0 < quarantined < 3000
    assert predictions.count() == manifest.output_rows == 3000 - quarantined


def test_tampered_artifact_and_wrong_spec_are_refused(spark, validated, synth, model_dir, tmp_path):
    import shutil

    bad = tmp_path / "tampered"
    shutil.copytree(model_dir, bad)
    weights = next(p for p in bad.iterdir() if p.suffix == ".safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactTampered):
        _score(spark, validated, synth, bad)
    census = load_spec("census-group1")
    with pytest.raises(SpecMismatch):
        score_partition(spark, validated, census, DS, model_dir, False)


def test_catalog_mode_writes_top_k_per_user(spark, job_config, synth, model_dir):
    from jobs.data.synth import catalog_path, generate_synth

    generate_synth(job_config, DS, 1, 500, seed=1)
    job_config.scoring.catalog.top_k = 3
    job_config.scoring.catalog.max_items_per_user = 20
    result = score_catalog(spark, job_config, synth, DS, model_dir)
    manifest = RunManifest("score", synth.name, DS).apply(result.record())
    out = result.output
    recs = spark.read.parquet(str(out)).toPandas()
    users = pq.read_table(catalog_path(job_config, "users", DS)).num_rows
    assert manifest.input_rows == users * 20
    assert len(recs) == users * 3 == manifest.output_rows
    assert sorted(recs["rank"].unique()) == [1, 2, 3]
    # rank follows the fused score (product of task probabilities, weights 1)
    fused = recs["p_click"] * recs["p_like"] * recs["p_conversion"]
    np.testing.assert_allclose(recs["score"], fused, rtol=1e-12)
    for _, group in recs.groupby("user_id"):
        assert list(group.sort_values("rank")["score"]) == sorted(group["score"], reverse=True)


@pytest.mark.parametrize("gate,reader", [("max", "direct"), ("topk", "spark"),
                                         ("constant", "direct")])
def test_spark_scores_new_gates_experts_and_encodings(spark, validated, synth, frame, tmp_path,
                                                      gate, reader):
    """Issue 13: quantile / PWL numeric encodings, field-split + cross experts and the new gate
    kinds score on Spark exactly as in process (1e-6), gates included."""
    import dataclasses

    from mmoe_model.artifact import ModelArtifact

    dense = tuple(dataclasses.replace(f, encoding=("pwl", "quantile", "raw")[i % 3], bins=6,
                                      group="numbers" if i % 2 else None)
                  for i, f in enumerate(synth.dense_features))
    spec = dataclasses.replace(synth, features=dense + synth.categorical_features)
    torch.manual_seed(1)
    config = ModelConfig(arch="mmoe", num_experts=5, expert_hidden=(16,), expert_dim=8,
                         tower_hidden=(8,), gate=gate, gate_k=2,
                         expert_layout=("2xmlp@numbers", "2xcross:2", "1xmlp:8@item_category"))
    model = build_model(config, InputLayout.from_spec(spec), len(spec.tasks)).eval()
    with torch.no_grad():
        for gate_bias in (model.task_gate.bias,):
            gate_bias.normal_()
    out = tmp_path / f"m-{gate}"
    save_artifact(out, model, config, spec, FeatureEncoder.fit(spec, frame))
    _, predictions = _score(spark, validated, spec, out, with_gates=True, reader=reader)
    artifact = ModelArtifact.load(out)
    rows = passed_rows(spark, validated, synth, DS).orderBy("impression_id").toPandas()
    expected, gates = artifact.predict(rows, with_gates=True)
    got = predictions.orderBy("impression_id").toPandas()
    np.testing.assert_allclose(got[spec.prediction_columns].to_numpy(), expected, atol=1e-6,
                               rtol=0)
    like = np.stack(got["gate_like"].to_numpy())
    np.testing.assert_allclose(like, gates[:, spec.task_names.index("like"), :], atol=1e-6)
    assert (like > 0).sum(axis=1).max() == {"max": 1, "topk": 2, "constant": 5}[gate]


def test_pipeline_keeps_order_and_raises_helper_errors():
    import time

    from jobs.runtime.kernel import Pipeline as _Pipeline

    written = []

    def slow_write(batch):
        time.sleep(0.002 * (batch.num_rows % 3))  # writes finish out of step with submission
        written.append(batch.column(0)[0].as_py())

    batches = [pa.record_batch([pa.array([i] * (i + 1))], names=["k"]) for i in range(20)]
    with _Pipeline(slow_write) as pipe:
        for batch in pipe.read_ahead(iter(batches)):
            pipe.write(batch)
    assert written == list(range(20))

    def broken(batch):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with _Pipeline(broken) as pipe:
            for batch in pipe.read_ahead(iter(batches)):
                pipe.write(batch)

    def bad_reader():
        yield batches[0]
        raise ValueError("corrupt page")

    with pytest.raises(ValueError, match="corrupt page"):
        with _Pipeline(written.append) as pipe:
            for batch in pipe.read_ahead(bad_reader()):
                pipe.write(batch)


def test_direct_reader_with_and_without_pipeline_write_the_same(spark, validated, synth, model_dir):
    validated.scoring.pipeline = False
    _, plain = _score(spark, validated, synth, model_dir)
    plain = spark.createDataFrame(plain.toPandas())  # materialise before the rerun replaces it
    validated.scoring.pipeline = True
    _, piped = _score(spark, validated, synth, model_dir)
    assertDataFrameEqual(plain.drop("scored_at"), piped.drop("scored_at"))


def test_direct_reader_files_use_a_dictionary_only_for_scored_at(spark, validated, synth,
                                                                 model_dir):
    """pyarrow's default would try (and abandon) a dictionary on every key and probability
    column: 4x the write's CPU and larger files. Only the repeated scored_at gets one."""
    from jobs.core.warehouse import parquet_files

    validated.scoring.pipeline = True
    result = score_partition(spark, validated, synth, DS, model_dir, False)
    files = parquet_files(result.output)
    assert files
    for path in files:
        meta = pq.ParquetFile(path).metadata
        for rg in range(meta.num_row_groups):
            for i in range(meta.num_columns):
                column = meta.row_group(rg).column(i)
                dictionary = column.dictionary_page_offset is not None
                assert dictionary == (column.path_in_schema == "scored_at"), column.path_in_schema


@pytest.mark.parametrize("with_gates", [False, True])
def test_the_kernel_writes_the_models_float64_probabilities_bit_for_bit(synth, frame, model_dir,
                                                                        with_gates):
    """score_batch assembles what the model answered, not a rounded copy: p_<task> is float64
    and equal to the artifact's answer for the same batch to the last bit (a float32 round
    trip moves it by ~1e-8, under every 1e-6 tolerance of the Spark-level tests)."""
    from mmoe_model.artifact import ModelArtifact

    artifact = ModelArtifact.load(model_dir)
    batch = pa.RecordBatch.from_pandas(frame.head(500), preserve_index=False)
    schema = arrow_schema(predictions_struct(synth, with_gates=with_gates))
    out = score_batch(artifact, batch, synth.feature_names, synth.key_names, len(synth.tasks),
                      schema, utc_us(dt.datetime(2026, 11, 4, tzinfo=dt.timezone.utc)), with_gates)
    expected = artifact.predict(batch.select(synth.feature_names))
    assert expected.dtype == np.float64
    for i, column in enumerate(synth.prediction_columns):
        assert out.schema.field(column).type == pa.float64()
        got = out.column(column).to_numpy()
        assert np.array_equal(got, expected[:, i]), column
    assert out.column(synth.key_names[0]).equals(batch.column(synth.key_names[0]))
