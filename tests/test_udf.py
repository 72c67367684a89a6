"""The public Spark UDF (jobs/runtime/udf.py) through select and SQL, against an independent
forward pass of the artifact (tests/_oracle.py: its files encoded row by row and run in float64
numpy, not ModelArtifact.predict, which the UDF itself runs)."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch
from _oracle import Oracle

from jobs.core.errors import MissingInputError
from jobs.runtime.udf import mmoe_udf
from mmoe_model.artifact import ModelArtifact, save_artifact
from mmoe_model.errors import ArtifactTampered
from mmoe_model.features import FeatureEncoder, InputLayout
from mmoe_model.models import ModelConfig, build_model
from mmoe_model.sample import sample_frame
from schemas import load_spec
from schemas.tables import features_arrow_schema


@pytest.fixture(scope="module")
def spec():
    return load_spec("synth")


@pytest.fixture(scope="module")
def table(spec):
    # nulls in every nullable column and unknown categories: the encoder's null/OOV handling
    frame = sample_frame(spec, 2500, seed=11, null_fraction=0.05, oov_fraction=0.01)
    schema = features_arrow_schema(spec)
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


@pytest.fixture(scope="module", params=["mmoe", "ple"])
def model_dir(request, tmp_path_factory, spec, table):
    torch.manual_seed(1)
    config = ModelConfig(arch=request.param, num_experts=3, expert_hidden=(16,), expert_dim=8,
                         tower_hidden=(8,))
    model = build_model(config, InputLayout.from_spec(spec), len(spec.tasks)).eval()
    out = tmp_path_factory.mktemp("udf-model") / request.param
    save_artifact(out, model, config, spec, FeatureEncoder.fit(spec, table))
    return out


def _by_key(pdf, keys, columns):
    return pdf.set_index("impression_id").loc[keys, columns].to_numpy()


def _assert_float64(values: np.ndarray) -> None:
    """float64 precision kept (the model's sigmoid is taken in float64, so hardly any value is
    float32-representable; after a float32 round trip every one is)."""
    assert values.dtype == np.float64
    assert np.mean(values == values.astype(np.float32).astype(np.float64)) < 0.01


def test_select_equals_an_independent_forward_pass(spark, table, model_dir):
    expected, _ = Oracle(model_dir).predict(table.to_pylist())
    score = mmoe_udf(model_dir)
    df = spark.createDataFrame(table).repartition(3)  # several tasks, several batches
    with_p = df.select("impression_id", score(*score.input_columns).alias("p"))
    got = with_p.select("impression_id", "p.*").toPandas()
    assert list(got.columns[1:]) == score.output_columns == ["p_click", "p_like", "p_conversion"]
    assert [f.dataType.simpleString() for f in with_p.schema["p"].dataType.fields] == \
        ["double"] * 3
    keys = table.column("impression_id").to_pylist()
    assert len(got) == len(keys)
    values = _by_key(got, keys, score.output_columns)
    np.testing.assert_allclose(values, expected, atol=1e-6, rtol=0)
    _assert_float64(values)


def test_sql_equals_an_independent_forward_pass(spark, table, model_dir):
    artifact = ModelArtifact.load(model_dir)
    expected, _ = Oracle(model_dir).predict(table.to_pylist())
    score = mmoe_udf(artifact)  # a loaded artifact works as well as its directory
    spark.udf.register("mmoe_score_test", score)
    spark.createDataFrame(table).createOrReplaceTempView("udf_rows")
    cols = ", ".join(f"`{c}`" for c in score.input_columns)
    got = spark.sql(f"SELECT impression_id, mmoe_score_test({cols}) AS p FROM udf_rows") \
        .select("impression_id", "p.*").toPandas()
    keys = table.column("impression_id").to_pylist()
    values = _by_key(got, keys, score.output_columns)
    np.testing.assert_allclose(values, expected, atol=1e-6, rtol=0)
    _assert_float64(values)
    assert score.model_version == artifact.model_version


def test_tampered_or_missing_artifact_is_refused(spark, model_dir, tmp_path):
    bad = tmp_path / "tampered"
    shutil.copytree(model_dir, bad)
    weights = bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactTampered):
        mmoe_udf(bad)
    with pytest.raises(MissingInputError, match="not a model artifact directory"):
        mmoe_udf(tmp_path / "nowhere")


def test_worker_cache_verifies_once_and_refuses_tampered_bytes(model_dir):
    from jobs.runtime import worker
    from mmoe_model.artifact import read_artifact_files

    files = read_artifact_files(model_dir)
    sha = ModelArtifact.from_files(files).sha256
    first = worker.worker_artifact(files, sha)
    assert worker.worker_artifact(files, sha) is first  # built once per worker process
    tampered = dict(files)
    tampered["model.safetensors"] = files["model.safetensors"][:-1] + b"\x00"
    with pytest.raises(ArtifactTampered):
        worker.worker_artifact(tampered, "another-sha")


def test_the_readmes_udf_snippet_runs_as_written(spec, table, tmp_path):
    """The README's Python block, run verbatim as the README says (a file, its own Spark, from
    a directory holding what `make demo` leaves there: a features partition, an artifact): the
    public import path works and both shows print the model's probabilities."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    import pyarrow.parquet as pq
    from tiny_models import tiny_model

    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "mmoe_udf" in b]
    assert "from jobs.udf import mmoe_udf" in snippet
    part = tmp_path / "warehouse" / "synth" / "features" / "ds=2026-11-03"
    part.mkdir(parents=True)
    rows = table.slice(0, 3)
    pq.write_table(rows, part / "part-0.parquet")
    model = tiny_model(tmp_path / "artifacts" / "synth-mmoe", seed=4)
    (tmp_path / "example.py").write_text(snippet)
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": str(repo)}
    run = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    expected, _ = Oracle(model).predict(rows.to_pylist())
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in run.stdout.splitlines()
             if line.startswith("|")]
    headers = [c for c in cells if c[0] == "impression_id"]
    assert headers == [["impression_id", "p_click", "p_like", "p_conversion"],
                       ["impression_id", "p_click"]]
    shown = {}
    for c in cells:
        if c[0] != "impression_id":
            shown.setdefault(int(c[0]), []).append([float(v) for v in c[1:]])
    for i, key in enumerate(rows.column("impression_id").to_pylist()):
        (full, click) = shown[key]
        np.testing.assert_allclose(full, expected[i], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(click, expected[i, :1], rtol=1e-4, atol=1e-6)
