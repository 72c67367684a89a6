"""Bring your own model: ONNX graphs imported (checked against the spec, wrapped, registered,
scored by Spark like any model) and our models exported (encoding included) and back.

The imported model is an MMoE written here in plain torch (no mmoe_model module), exported with
``torch.onnx``; its oracles are the same torch module and an onnxruntime session opened here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import re
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from typer.testing import CliRunner

from jobs.backfill.stage import backfill_range
from jobs.cli import app
from jobs.core.errors import InputError, RegistryError
from jobs.core.registry import import_model, resolve_model
from jobs.core.warehouse import Warehouse, parquet_files
from jobs.runtime.onnx import export_model
from jobs.runtime.udf import mmoe_udf
from jobs.score.stage import score_partition
from mmoe_model.artifact import ModelArtifact, build_artifact_files, build_imported_files
from mmoe_model.errors import ArtifactTampered, ExportRefused, GraphRefused
from mmoe_model.features import FeatureEncoder, InputLayout
from mmoe_model.models import ModelConfig, build_model
from mmoe_model.onnx_export import export_onnx
from mmoe_model.sample import sample_frame
from schemas import load_spec
from schemas.tables import features_arrow_schema

TASKS = ("click", "like", "conversion")
READS = ("x0", "x1", "user_age", "user_id")  # a subset of synth's features


class PlainMMoE(nn.Module):
    """An MMoE as another team would write it: raw contract inputs, its own tiny encoding."""

    def __init__(self, experts: int = 3, stacked: bool = False) -> None:
        super().__init__()
        self.stacked = stacked
        self.emb = nn.Embedding(64, 4)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(7, 8), nn.ReLU())
                                     for _ in range(experts))
        self.gates = nn.ModuleList(nn.Linear(7, experts) for _ in TASKS)
        self.towers = nn.ModuleList(nn.Linear(8, 1) for _ in TASKS)

    def forward(self, x0, x1, user_age, user_id):
        age = torch.where(torch.isnan(user_age), torch.full_like(user_age, 35.0), user_age) / 100
        idx = torch.where(user_id < 0, torch.zeros_like(user_id), torch.remainder(user_id, 63) + 1)
        h = torch.cat([x0[:, None], x1[:, None], age[:, None], self.emb(idx)], dim=1)
        out = torch.stack([e(h) for e in self.experts], dim=1)                   # [N, E, 8]
        probs = [torch.sigmoid(t((torch.softmax(g(h), -1)[:, :, None] * out).sum(1)).squeeze(-1))
                 for g, t in zip(self.gates, self.towers)]
        return torch.stack(probs, dim=1) if self.stacked else tuple(probs)


def _export(module: nn.Module, names: list[str]) -> bytes:
    n = 5
    args = (torch.randn(n), torch.randn(n), torch.randn(n), torch.arange(n, dtype=torch.int64))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buffer, dynamo=False, input_names=list(READS),
                          output_names=names, opset_version=17,
                          dynamic_axes={k: {0: "N"} for k in [*READS, *names]})
    return buffer.getvalue()


@pytest.fixture(scope="module")
def plain():
    torch.manual_seed(7)
    module = PlainMMoE().eval()
    path_bytes = _export(module, [f"p_{t}" for t in TASKS])
    return module, path_bytes


def _torch_oracle(module: nn.Module, table: pa.Table) -> np.ndarray:
    """The plain module on the contract's inputs (null → NaN / -1), computed by torch."""
    feeds = [torch.from_numpy(table.column(c).to_numpy(zero_copy_only=False).astype(np.float32))
             for c in READS[:3]]
    ids = table.column("user_id").fill_null(-1).to_numpy().astype(np.int64)
    with torch.no_grad():
        return torch.stack(module(*feeds, torch.from_numpy(ids)), 1).double().numpy()


def _ort_oracle(graph: bytes, table: pa.Table) -> np.ndarray:
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    feeds = {c: table.column(c).to_numpy(zero_copy_only=False).astype(np.float32)
             for c in READS[:3]}
    feeds["user_id"] = table.column("user_id").fill_null(-1).to_numpy().astype(np.int64)
    return np.stack(session.run([f"p_{t}" for t in TASKS], feeds), 1).astype(np.float64)


@pytest.fixture(scope="module")
def table():
    spec = load_spec("synth")
    frame = sample_frame(spec, 3000, seed=3, null_fraction=0.05)
    schema = features_arrow_schema(spec)
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


# --------------------------------------------------------------------------------------------
# Import: in process


def test_imported_plain_mmoe_equals_onnxruntime_and_torch(plain, table, job_config, tmp_path):
    module, graph = plain
    path = tmp_path / "plain.onnx"
    path.write_bytes(graph)
    result = import_model(job_config, path, "onnx", "synth", alias="champion",
                          effective="2025-01-01", reason="trained elsewhere")
    assert result.version.startswith("onnx-") and result.events[0]["arch"] == "onnx"
    files = resolve_model(job_config, "synth", "2025-03-01", "@champion").files
    artifact = ModelArtifact.from_files(files)
    assert artifact.imported and artifact.signature.inputs == READS
    assert json.loads(files["metrics.json"])["imported"]["reason"] == "trained elsewhere"
    got = artifact.predict(table, batch_size=1000)
    np.testing.assert_allclose(got, _ort_oracle(graph, table), atol=1e-6, rtol=0)
    np.testing.assert_allclose(got, _torch_oracle(module, table), atol=1e-5, rtol=0)
    # importing the same graph again finds the same version and registers nothing new
    again = import_model(job_config, path, "onnx", "synth")
    assert (again.version, again.sha256, again.events) == (result.version, result.sha256, [])
    # the [N, T] "probabilities" form scores the same
    stacked = PlainMMoE(stacked=True).eval()
    stacked.load_state_dict(module.state_dict())
    art2 = ModelArtifact.from_files(build_imported_files(_export(stacked, ["probabilities"]),
                                                         load_spec("synth"), {}))
    np.testing.assert_allclose(art2.predict(table), got, atol=1e-6, rtol=0)


def _graph(inputs, outputs, nodes, opset=17, domains=()):
    g = helper.make_graph(nodes, "g", inputs, outputs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset),
                                            *[helper.make_opsetid(d, 1) for d in domains]])
    return m


def _vi(name, elem=TensorProto.FLOAT, shape=("N",)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def _ok_nodes(src="x0"):
    return [helper.make_node("Sigmoid", [src], [f"p_{t}"]) for t in TASKS]


def _refusals():
    outs = [_vi(f"p_{t}") for t in TASKS]
    ext = _graph([_vi("x0")], outs, [helper.make_node("Add", ["x0", "w"], ["s"])]
                 + _ok_nodes("s"))
    weight = numpy_helper.from_array(np.zeros(1, np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    weight.external_data.add(key="location", value="../../etc/weights.bin")
    ext.graph.initializer.append(weight)
    custom = _graph([_vi("x0")], outs, [helper.make_node("Gelu", ["x0"], ["s"],
                                                         domain="com.evil")] + _ok_nodes("s"),
                    domains=("com.evil",))
    return {
        "not ONNX": (b"\x00garbage, not a protobuf \xff" * 8, "not an ONNX model"),
        "unknown input": (_graph([_vi("bogus")], outs, _ok_nodes("bogus")),
                          "graph input 'bogus' is not a feature column of synth"),
        "key as input": (_graph([_vi("impression_id", TensorProto.INT64)], outs,
                                [helper.make_node("Cast", ["impression_id"], ["f"], to=1)]
                                + _ok_nodes("f")), "'impression_id' is not a feature column"),
        "wrong dtype": (_graph([_vi("user_id", TensorProto.FLOAT)], outs, _ok_nodes("user_id")),
                        "'user_id' has dtype float32, the contract says int64"),
        "string as long": (_graph([_vi("platform", TensorProto.INT64)], outs,
                                  [helper.make_node("Cast", ["platform"], ["f"], to=1)]
                                  + _ok_nodes("f")), "'platform' has dtype int64, the contract "
                                                     "says string"),
        "wrong rank": (_graph([_vi("x0", shape=("N", 1))], [_vi(f"p_{t}", shape=("N", 1))
                                                             for t in TASKS], _ok_nodes()),
                       "'x0' has rank 2, the contract says 1"),
        "missing task": (_graph([_vi("x0")], outs[:2], _ok_nodes()[:2]),
                         "no output 'p_conversion' (task 'conversion' of synth)"),
        "opset": (_graph([_vi("x0")], outs, _ok_nodes(), opset=99), "opset 99 cannot be run"),
        "custom op": (custom, "not a standard ONNX domain"),
        "external data": (ext, "'w' keeps its data outside the file"),
    }


@pytest.mark.parametrize("case", list(_refusals()))
def test_every_refusal_is_one_typed_line(case):
    graph, message = _refusals()[case]
    data = graph if isinstance(graph, bytes) else graph.SerializeToString()
    with pytest.raises(GraphRefused, match=re.escape(message)) as info:
        build_imported_files(data, load_spec("synth"), {})
    assert "\n" not in str(info.value)


def test_cli_import_prints_the_version_and_refuses_in_one_line(plain, job_config, tmp_path):
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    good.write_bytes(plain[1])
    bad.write_bytes(_refusals()["missing task"][0].SerializeToString())
    runner = CliRunner()
    base = ["--warehouse", str(job_config.warehouse), "models", "import"]
    ok = runner.invoke(app, [*base, str(good), "--format", "onnx", "--dataset", "synth"])
    manifest = json.loads(ok.stdout.strip().splitlines()[-1])
    assert ok.exit_code == 0 and manifest["model_version"].startswith("onnx-")
    for args, message in [([str(bad), "--format", "onnx", "--dataset", "synth"], "p_conversion"),
                          ([str(good), "--format", "pickle", "--dataset", "synth"],
                           "--format must be one of onnx"),
                          ([str(tmp_path / "nope.onnx"), "--format", "onnx", "--dataset", "synth"],
                           "cannot be read")]:
        res = runner.invoke(app, [*base, *args])
        lines = res.stderr.strip().splitlines()
        assert res.exit_code != 0 and len(lines) == 1 and message in lines[0], res.stderr


def test_tamper_check_covers_the_graph_bytes(plain, job_config, tmp_path):
    path = tmp_path / "plain.onnx"
    path.write_bytes(plain[1])
    result = import_model(job_config, path, "onnx", "synth", alias="champion",
                          effective="2025-01-01")
    stored = Warehouse(job_config.warehouse).registry_artifact("synth", result.sha256)
    flipped = bytearray((stored / "model.onnx").read_bytes())
    flipped[len(flipped) // 2] ^= 0x10  # one bit inside the weights
    (stored / "model.onnx").write_bytes(bytes(flipped))
    with pytest.raises(RegistryError, match="tampered with: file model.onnx"):
        resolve_model(job_config, "synth", "2025-03-01", "@champion")
    files = {p.name: p.read_bytes() for p in stored.iterdir()}
    with pytest.raises(ArtifactTampered, match="model.onnx"):
        ModelArtifact.from_files(files)


# --------------------------------------------------------------------------------------------
# Export → import round trip, every arch, gate kind and numeric encoding


def _mixed_spec():
    """synth with all three numeric encodings at once (raw, quantile, pwl with a flat bin)."""
    base = load_spec("synth")
    enc = {"user_age": "quantile", "x0": "pwl", "item_price": "pwl", "x1": "quantile"}
    return dataclasses.replace(base, features=tuple(
        dataclasses.replace(f, encoding=enc[f.name], bins=4) if f.name in enc else f
        for f in base.features))


CASES = [("mmoe", "softmax", None), ("mmoe", "max", None), ("mmoe", "constant", None),
         ("omoe", "topk", None), ("ple", "topk", None), ("ple", "max", None),
         ("shared-bottom", "softmax", None), ("single-task", "softmax", None),
         ("mmoe", "topk", ("2xmlp:8", "1xcross:1@x0,user_age"))]


@pytest.mark.parametrize("arch,gate,layout", CASES)
def test_export_import_round_trip(arch, gate, layout):
    spec = _mixed_spec()
    frame = sample_frame(spec, 1500, seed=5, null_fraction=0.05)
    for f in spec.dense_features:  # the graph reads float32: keep the data float32-exact
        frame[f.name] = frame[f.name].astype(np.float32).astype(np.float64)
    frame.loc[:500, "item_price"] = 0.0  # zero-width pwl bins (a third of the rows)
    torch.manual_seed(2)
    config = ModelConfig(arch=arch, num_experts=3, expert_hidden=(8,), expert_dim=4,
                         tower_hidden=(4,), gate=gate, gate_k=2,
                         expert_layout=list(layout) if layout else None)
    model = build_model(config, InputLayout.from_spec(spec), len(spec.tasks)).eval()
    native = ModelArtifact.from_files(build_artifact_files(
        model, config, spec, FeatureEncoder.fit(spec, frame)))
    imported = ModelArtifact.from_files(build_imported_files(export_onnx(native), spec, {}))
    assert imported.signature.inputs == tuple(spec.feature_names)
    batch = pa.Table.from_pandas(frame[features_arrow_schema(spec).names], preserve_index=False)
    np.testing.assert_allclose(imported.predict(batch), native.predict(batch), atol=1e-5, rtol=0)


def test_string_hash_features_are_refused_by_name():
    base = load_spec("synth")
    spec = dataclasses.replace(base, features=tuple(
        dataclasses.replace(f, dtype="string") if f.name == "user_id" else f
        for f in base.features))
    config = ModelConfig(arch="mmoe", num_experts=2, expert_hidden=(4,), expert_dim=4,
                         tower_hidden=(4,))
    model = build_model(config, InputLayout.from_spec(spec), len(spec.tasks)).eval()
    native = ModelArtifact.from_files(build_artifact_files(
        model, config, spec, FeatureEncoder.fit(spec, sample_frame(spec, 200, seed=1))))
    with pytest.raises(ExportRefused, match="feature 'user_id' hashes strings"):
        export_onnx(native)


# --------------------------------------------------------------------------------------------
# Spark: a 2-day backfill, the Spark reader and the UDF with the imported model; a trained
# model on scoring.runtime onnxruntime


def _scored(wh, ds, version):
    files = parquet_files(wh.partition("synth", "predictions", ds, model_version=version))
    return pa.concat_tables([pq.read_table(f) for f in files]).sort_by("impression_id")


def test_imported_model_backfills_scores_and_udfs_like_a_native_one(spark, plain, job_config,
                                                                    tmp_path):
    from jobs.data.synth import generate_synth
    from tiny_models import tiny_model

    module, graph = plain
    path = tmp_path / "plain.onnx"
    path.write_bytes(graph)
    generate_synth(job_config, "2025-03-01", 2, 300, seed=4)
    job_config.validation.keep_data_docs = False
    job_config.evaluation.segments = []
    version = import_model(job_config, path, "onnx", "synth", alias="champion",
                           effective="2025-01-01").version
    result = backfill_range(spark, job_config, load_spec("synth"), "2025-03-01", "2025-03-02",
                            "@champion", as_of=dt.date(2025, 3, 9))
    assert [d.status for d in result.days] == ["scored", "scored"], result.days
    wh = Warehouse(job_config.warehouse)
    features = pa.concat_tables([pq.read_table(f) for f in
                                 parquet_files(wh.partition("synth", "features", "2025-03-01"))])
    direct = _scored(wh, "2025-03-01", version)
    rows = features.filter(pa.compute.is_in(features.column("impression_id"),
                                            value_set=direct.column("impression_id")))
    rows = rows.sort_by("impression_id")
    columns = [f"p_{t}" for t in TASKS]
    got = np.stack([direct.column(c).to_numpy() for c in columns], 1)
    np.testing.assert_allclose(got, _ort_oracle(graph, rows), atol=1e-6, rtol=0)
    np.testing.assert_allclose(got, _torch_oracle(module, rows), atol=1e-5, rtol=0)
    # the Spark reader (mapInArrow) scores the same; --with-gates is refused in one line
    job_config.scoring.reader = "spark"
    score_partition(spark, job_config, load_spec("synth"), "2025-03-01", "@champion")
    spark_read = _scored(wh, "2025-03-01", version)
    np.testing.assert_allclose(np.stack([spark_read.column(c).to_numpy() for c in columns], 1),
                               got, atol=1e-9, rtol=0)
    with pytest.raises(InputError, match="imported ONNX graph and has no gates"):
        score_partition(spark, job_config, load_spec("synth"), "2025-03-01", "@champion",
                        with_gates=True)
    # the public UDF, with the imported model and with a trained one on onnxruntime
    files = resolve_model(job_config, "synth", "2025-03-01", "@champion").files
    score = mmoe_udf(files)
    frame = spark.createDataFrame(rows).repartition(2)
    udf_out = frame.select("impression_id", score(*score.input_columns).alias("p")) \
        .select("impression_id", "p.*").toPandas().sort_values("impression_id")
    np.testing.assert_allclose(udf_out[columns].to_numpy(), got, atol=1e-9, rtol=0)
    native_dir = tiny_model(tmp_path / "tiny", seed=3)
    expected = ModelArtifact.load(native_dir).predict(rows)
    on_ort = mmoe_udf(native_dir, runtime="onnxruntime")
    ort_out = frame.select("impression_id", on_ort(*on_ort.input_columns).alias("p")) \
        .select("impression_id", "p.*").toPandas().sort_values("impression_id")
    np.testing.assert_allclose(ort_out[columns].to_numpy(), expected, atol=1e-5, rtol=0)
    # export of a directory writes a graph that imports and scores like the model
    out = export_model(job_config, native_dir, "onnx", tmp_path / "tiny.onnx")
    back = ModelArtifact.from_files(build_imported_files(out.out.read_bytes(),
                                                         load_spec("synth"), {}))
    np.testing.assert_allclose(back.predict(rows), expected, atol=1e-5, rtol=0)


def test_unknown_runtime_is_refused(refused_config):
    refused_config("scoring: {runtime: tensorrt}", "scoring.runtime")


def test_outputs_are_read_by_task_name_not_by_the_graphs_order():
    """A graph declaring p_conversion, an extra output, then p_click and p_like: each task's
    probabilities are its own output (sigmoid(x0 + shift) with a shift per task, computed
    here with numpy), the extra one is ignored."""
    spec = load_spec("synth")
    shifts = {"click": 0.0, "like": 1.0, "conversion": 2.0}
    nodes = [helper.make_node("Identity", ["x0"], ["debug_x0"])]
    for t in shifts:
        nodes += [helper.make_node("Add", ["x0", f"b_{t}"], [f"s_{t}"]),
                  helper.make_node("Sigmoid", [f"s_{t}"], [f"p_{t}"])]
    graph = _graph([_vi("x0")], [_vi("p_conversion"), _vi("debug_x0"), _vi("p_click"),
                                 _vi("p_like")], nodes)
    graph.graph.initializer.extend(numpy_helper.from_array(np.array([b], np.float32), f"b_{t}")
                                   for t, b in shifts.items())
    graph.ir_version = 10   # the onnx library writes a newer IR than this onnxruntime reads
    artifact = ModelArtifact.from_files(build_imported_files(graph.SerializeToString(), spec, {}))
    x = np.linspace(-3, 3, 61).astype(np.float32)
    got = artifact.predict(pa.table({"x0": x}))
    expected = np.stack([1 / (1 + np.exp(-(x.astype(np.float64) + shifts[t])))
                         for t in spec.task_names], axis=1)
    assert list(shifts) != spec.task_names[::-1] and got.shape == (61, len(spec.task_names))
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
