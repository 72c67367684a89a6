"""ONNX graphs as models: the contract's checks on import, and an onnxruntime session that
scores a frame of raw feature columns.

The contract (../shared/CONTRACT.md, "Imported models"): graph inputs are named after spec
feature columns (a subset is allowed), each ``[N]``: dense features float32 (null → NaN),
categorical features of dtype long int64 (null → -1), of dtype string a string tensor (null →
empty string). Outputs: ``p_<task>`` float32 ``[N]`` for every task of the spec, or one float32
``[N, T]`` tensor named ``probabilities`` (tasks in spec order).

:func:`check_graph` refuses, with one line naming the problem (:class:`GraphRefused`): bytes
that are not an ONNX model, an input that is no spec feature, a wrong dtype or rank, a missing
task output, an opset newer than the installed onnx knows (or that onnxruntime cannot load), a
node outside the standard ``ai.onnx`` / ``ai.onnx.ml`` domains (custom operators load native
code), and any tensor kept as external data (the graph must be one self-contained file).
:class:`OnnxRunner` then builds the session: ``threads`` intra-op threads, no spin-waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pyarrow as pa
from google.protobuf.message import DecodeError

from mmoe_model.errors import GraphRefused
from mmoe_model.features import Frame, _column, _float_values, _int_or_object_values
from schemas.spec import DatasetSpec

STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
PROBABILITIES = "probabilities"
# The ONNX element type each kind of spec feature must arrive as (the contract's input types).
_FLOAT, _INT64, _STRING = (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64,
                           onnx.TensorProto.STRING)
_TYPE_NAMES = {_FLOAT: "float32", _INT64: "int64", _STRING: "string"}


def expected_type(spec: DatasetSpec, name: str) -> int:
    """The ONNX element type of spec feature ``name`` as a graph input."""
    feature = next(f for f in spec.features if f.name == name)
    if feature.kind == "dense":
        return _FLOAT
    return _INT64 if feature.dtype == "long" else _STRING


@dataclass(frozen=True)
class GraphSignature:
    """What a checked graph reads and how it answers."""

    inputs: tuple[str, ...]     # spec feature names, in graph order
    outputs: tuple[str, ...]    # p_<task> in spec task order, or ("probabilities",)
    opset: int                  # the default-domain opset

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": list(self.inputs), "outputs": list(self.outputs), "opset": self.opset}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "GraphSignature":
        return cls(tuple(raw["inputs"]), tuple(raw["outputs"]), int(raw["opset"]))


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph``, those of sub-graphs (If / Loop / Scan bodies) included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            for sub in attr.graphs:
                yield from _nodes(sub)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in _nodes(graph):
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            yield from attr.tensors
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _tensors(attr.g)


def parse_graph(data: bytes) -> onnx.ModelProto:
    """The ModelProto of ``data``; refuses bytes that are not an ONNX model."""
    try:
        model = onnx.load_model_from_string(bytes(data))
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise GraphRefused(f"not an ONNX model: {str(exc).splitlines()[0] if str(exc) else exc!r}"
                           ) from None
    if model.ir_version <= 0 or not model.opset_import or not model.graph.output:
        raise GraphRefused("not an ONNX model: no IR version, opset or graph outputs")
    return model


def check_graph(data: bytes, spec: DatasetSpec) -> GraphSignature:
    """The signature of graph ``data`` against ``spec``, or a one-line :class:`GraphRefused`."""
    model = parse_graph(data)
    graph = model.graph
    for tensor in _tensors(graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            where = {e.key: e.value for e in tensor.external_data}.get("location", "?")
            raise GraphRefused(f"tensor {tensor.name!r} keeps its data outside the file "
                               f"(external data at {where!r}); save the graph as one file")
    for opset in model.opset_import:
        if opset.domain not in STANDARD_DOMAINS:
            raise GraphRefused(f"operator domain {opset.domain!r} is not a standard ONNX domain "
                               f"(ai.onnx, ai.onnx.ml): custom operators load native code")
    for node in list(_nodes(graph)) + [n for f in model.functions for n in f.node]:
        if node.domain not in STANDARD_DOMAINS:
            raise GraphRefused(f"operator {node.op_type!r} of domain {node.domain!r} is not a "
                               f"standard ONNX operator (ai.onnx, ai.onnx.ml)")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    newest = onnx.defs.onnx_opset_version()
    if not 7 <= opset <= newest:
        raise GraphRefused(f"opset {opset} cannot be run here (onnxruntime {ort.__version__} "
                           f"runs opsets 7 to {newest})")
    initializers = {t.name for t in graph.initializer}
    features = set(spec.feature_names)
    inputs = []
    for value in graph.input:
        if value.name in initializers:
            continue
        if value.name not in features:
            raise GraphRefused(f"graph input {value.name!r} is not a feature column of "
                               f"{spec.name} ({', '.join(spec.feature_names)})")
        _check_tensor(value, expected_type(spec, value.name), 1, "input")
        inputs.append(value.name)
    outputs = {v.name: v for v in graph.output}
    tasks = [f"p_{t}" for t in spec.task_names]
    if all(t in outputs for t in tasks):
        for t in tasks:
            _check_tensor(outputs[t], _FLOAT, 1, "output")
        names = tuple(tasks)
    elif PROBABILITIES in outputs:
        value = outputs[PROBABILITIES]
        _check_tensor(value, _FLOAT, 2, "output")
        width = value.type.tensor_type.shape.dim[1]
        if width.HasField("dim_value") and width.dim_value != len(tasks):
            raise GraphRefused(f"output {PROBABILITIES!r} has {width.dim_value} columns but "
                               f"{spec.name} has {len(tasks)} tasks ({', '.join(spec.task_names)})")
        names = (PROBABILITIES,)
    else:
        missing = [t for t in tasks if t not in outputs]
        raise GraphRefused(f"graph has no output {missing[0]!r} (task {missing[0][2:]!r} of "
                           f"{spec.name}) and no [N, {len(tasks)}] {PROBABILITIES!r} output")
    return GraphSignature(tuple(inputs), names, opset)


def _check_tensor(value: onnx.ValueInfoProto, elem: int, rank: int, what: str) -> None:
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or tensor.elem_type != elem:
        got = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name \
            if value.type.HasField("tensor_type") and tensor.elem_type else "not a tensor"
        raise GraphRefused(f"graph {what} {value.name!r} has dtype {got}, the contract says "
                           f"{_TYPE_NAMES[elem]}")
    if tensor.HasField("shape") and len(tensor.shape.dim) != rank:
        raise GraphRefused(f"graph {what} {value.name!r} has rank {len(tensor.shape.dim)}, the "
                           f"contract says {rank} ({'[N]' if rank == 1 else '[N, T]'})")


def session_options(threads: int) -> ort.SessionOptions:
    """``threads`` intra-op threads, one inter-op thread, no spin-waiting (a spinning pool burns
    the CPUs the reader and writer threads of the same task need)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(int(threads), 1)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def make_session(data: bytes, threads: int = 1) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(bytes(data), session_options(threads),
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph..)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GraphRefused(f"onnxruntime {ort.__version__} cannot run this graph: {first}") \
            from None


def graph_feeds(frame: Frame, spec: DatasetSpec, inputs: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The contract's input arrays for ``frame``'s columns: dense float32 (null → NaN), long
    int64 (null → -1), string objects (null → "")."""
    feeds = {}
    for name in inputs:
        col = _column(frame, name)
        kind = expected_type(spec, name)
        if kind == _FLOAT:
            feeds[name] = _float_values(col).astype(np.float32)
        elif kind == _STRING and isinstance(col, pa.Array) and pa.types.is_string(col.type):
            feeds[name] = col.fill_null("").to_numpy(zero_copy_only=False)
        elif kind == _INT64:
            values, nulls = _int_or_object_values(col)
            if values.dtype.kind != "i":
                values = pd.to_numeric(pd.Series(values), errors="coerce")
                nulls = values.isna().to_numpy() if nulls is None else nulls | values.isna().to_numpy()
                values = values.fillna(0).to_numpy(dtype=np.int64)
            if nulls is not None:
                values = np.where(nulls, -1, values)
            feeds[name] = values.astype(np.int64, copy=False)
        else:
            values, nulls = _int_or_object_values(col)
            text = values.astype(str).astype(object)
            if nulls is not None:
                text[nulls] = ""
            feeds[name] = text
    return feeds


class OnnxRunner:
    """An onnxruntime session over a checked graph: ``predict(frame)`` → float64 [B, T]."""

    def __init__(self, data: bytes, spec: DatasetSpec, signature: GraphSignature,
                 threads: int = 1) -> None:
        self.data, self.spec, self.signature = data, spec, signature
        self.threads = max(int(threads), 1)
        self.session = make_session(data, self.threads)

    def with_threads(self, threads: int) -> "OnnxRunner":
        """This runner, or a new session when ``threads`` differs (sessions fix their pool)."""
        threads = max(int(threads), 1)
        return self if threads == self.threads else OnnxRunner(self.data, self.spec,
                                                               self.signature, threads)

    def predict(self, frame: Frame) -> np.ndarray:
        rows = len(frame) if isinstance(frame, pd.DataFrame) else frame.num_rows
        if rows == 0:
            return np.empty((0, len(self.spec.tasks)))
        outs = self.session.run(list(self.signature.outputs),
                                graph_feeds(frame, self.spec, self.signature.inputs))
        if self.signature.outputs == (PROBABILITIES,):
            probs = np.asarray(outs[0], dtype=np.float64)
        else:
            probs = np.stack([np.asarray(o, dtype=np.float64).reshape(-1) for o in outs], axis=1)
        if probs.shape != (rows, len(self.spec.tasks)):
            raise GraphRefused(f"the graph answered shape {list(probs.shape)} for {rows} rows; "
                               f"expected [{rows}, {len(self.spec.tasks)}]")
        return probs
