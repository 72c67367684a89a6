"""A trained artifact as ONE ONNX graph: the feature encoding and the forward pass, with the
contract's inputs (one ``[N]`` tensor per spec feature) and outputs (``p_<task>`` float32 [N]).

Two halves, merged into one graph:

* the encoding, written here with ONNX operators (``ai.onnx`` opset 18 and ``ai.onnx.ml``), the
  same steps as :class:`mmoe_model.features.FeatureEncoder` in float64:
  dense: NaN → ``fill``, clip to ``[min, max]``, ``log(1 + x)`` for ``log1p_standard``, then
  ``(x - mean) * (1 / std)`` (raw), ``clip((x - b_t) / (b_{t+1} - b_t), 0, 1)`` per bin (pwl; a
  zero-width bin gives ``x >= b_{t+1}``), or ``1 + count(inner edges <= x)`` (quantile);
  vocabulary features: a ``LabelEncoder`` (value → 1 + position, else 0); long hash features:
  splitmix64 in uint64 integer operators (``Add``, ``BitShift``, ``BitwiseXor``, ``Mul`` wrap
  modulo 2**64, as the hash wants), ``Mod (buckets - 1)``, ``+ 1``.
  Nulls arrive as the contract says: NaN (dense), -1 (long), "" (string) and encode as the
  native null (fill / index 0). So a genuine long value -1 is read as null by the graph.
  String hash features cannot be exported (pandas' string hash has no ONNX form): refused,
  naming the feature.
* the model, ``(dense [N, D], cats [N, C]) → sigmoid(logits)``, traced by ``torch.onnx.export``
  (the TorchScript exporter, ``dynamo=False``; sparse-gate scoring's per-expert row selection is
  replaced by the dense path, which computes the same mixture).

Inputs arrive as float32, so a dense value is rounded to float32 before encoding (the native
encoder reads float64): a value within a float32 rounding of a bin edge may land in the
neighbouring bin; everything else agrees with the native model to ~1e-7.
"""

from __future__ import annotations

import copy
import io
import warnings
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, compose, helper, numpy_helper

from mmoe_model.errors import ExportRefused
from mmoe_model.features import _HashEncoder, _VocabularyEncoder
from mmoe_model.hashing import _GOLDEN_GAMMA, _MIX1, _MIX2
from mmoe_model.onnx_graph import expected_type

OPSET = 18
ML_OPSET = 3
DENSE, CATS = "mmoe_dense", "mmoe_cats"  # the encoder's outputs = the traced model's inputs


class _Builder:
    """Nodes and constants of the encoding graph, with fresh names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"enc_{hint}_{self._n}"

    def const(self, value: Any, dtype: Any, hint: str = "c") -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str = "t", domain: str = "",
           **attrs: Any) -> str:
        out = self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], domain=domain, **attrs))
        return out


def _column(b: _Builder, x: str) -> str:
    """[N] → [N, 1]."""
    return b.op("Unsqueeze", [x, b.const([1], np.int64)])


def _dense_parts(b: _Builder, feature, stats: dict[str, Any]) -> tuple[list[str], str | None]:
    """(float32 [N, w] dense pieces, int64 [N] quantile index or None) of one dense feature."""
    x = b.op("Cast", [feature.name], to=TensorProto.DOUBLE)
    x = b.op("Where", [b.op("IsNaN", [x]), b.const(feature.fill, np.float64), x])
    if feature.min is not None:
        x = b.op("Max", [x, b.const(feature.min, np.float64)])
    if feature.max is not None:
        x = b.op("Min", [x, b.const(feature.max, np.float64)])
    if feature.normalize == "log1p_standard":
        x = b.op("Log", [b.op("Add", [x, b.const(1.0, np.float64)])])
    if feature.encoding == "raw":
        if feature.normalize != "none":
            x = b.op("Sub", [x, b.const(stats["mean"], np.float64)])
            x = b.op("Mul", [x, b.const(1.0 / stats["std"], np.float64)])
        return [_column(b, b.op("Cast", [x], to=TensorProto.FLOAT))], None
    edges = np.asarray(stats["edges"], dtype=np.float64)
    col = _column(b, x)                                                    # [N, 1]
    if feature.encoding == "quantile":
        hits = b.op("GreaterOrEqual", [col, b.const(edges[None, 1:-1], np.float64)])
        count = b.op("ReduceSum", [b.op("Cast", [hits], to=TensorProto.INT64),
                                   b.const([1], np.int64)], keepdims=0)
        return [], b.op("Add", [count, b.const(1, np.int64)])
    lo, hi = edges[:-1][None, :], edges[1:][None, :]
    width = hi - lo
    flat = width <= 0
    enc = b.op("Div", [b.op("Sub", [col, b.const(lo, np.float64)]),
                       b.const(np.where(flat, 1.0, width), np.float64)])
    enc = b.op("Min", [b.op("Max", [enc, b.const(0.0, np.float64)]), b.const(1.0, np.float64)])
    if flat.any():
        step = b.op("Cast", [b.op("GreaterOrEqual", [col, b.const(hi, np.float64)])],
                    to=TensorProto.DOUBLE)
        enc = b.op("Where", [b.const(flat, np.bool_), step, enc])
    return [b.op("Cast", [enc], to=TensorProto.FLOAT)], None


def _null_to_zero(b: _Builder, x: str, codes: str) -> str:
    """codes, with 0 where the long input is -1 (the contract's null)."""
    return b.op("Where", [b.op("Equal", [x, b.const(-1, np.int64)]), b.const(0, np.int64), codes])


def _categorical(b: _Builder, feature) -> str:
    """int64 [N] embedding index of one categorical feature."""
    x = feature.name
    if feature.vocabulary is not None:
        enc = _VocabularyEncoder(feature)
        if feature.dtype == "long":
            if enc.sorted_ints.size == 0:  # no entry a long can equal: every row is OOV
                return b.op("Mul", [x, b.const(0, np.int64)])
            codes = b.op("LabelEncoder", [x], domain="ai.onnx.ml",
                         keys_int64s=[int(v) for v in enc.sorted_ints],
                         values_int64s=[int(v) for v in enc.sorted_codes], default_int64=0)
            return _null_to_zero(b, x, codes)
        return b.op("LabelEncoder", [x], domain="ai.onnx.ml",
                    keys_strings=list(feature.vocabulary),
                    values_int64s=list(range(1, len(feature.vocabulary) + 1)), default_int64=0)
    if feature.dtype != "long":
        raise ExportRefused(f"feature {feature.name!r} hashes strings (pandas' hash has no ONNX "
                            f"form): a model reading it cannot be exported")
    modulus = _HashEncoder(feature).modulus
    u = np.uint64
    z = b.op("Add", [b.op("Cast", [x], to=TensorProto.UINT64), b.const(_GOLDEN_GAMMA, u)])
    for shift, mult in ((30, _MIX1), (27, _MIX2), (31, None)):
        z = b.op("BitwiseXor", [z, b.op("BitShift", [z, b.const(shift, u)], direction="RIGHT")])
        if mult is not None:
            z = b.op("Mul", [z, b.const(mult, u)])
    codes = b.op("Add", [b.op("Cast", [b.op("Mod", [z, b.const(modulus, u)])],
                              to=TensorProto.INT64), b.const(1, np.int64)])
    return _null_to_zero(b, x, codes)


def encoder_graph(artifact) -> onnx.ModelProto:
    """Spec feature inputs → (``mmoe_dense`` float32 [N, D], ``mmoe_cats`` int64 [N, C])."""
    spec, stats = artifact.spec, artifact.encoder.stats
    b = _Builder()
    dense, quantile = [], []
    for feature in spec.dense_features:
        parts, index = _dense_parts(b, feature, stats[feature.name])
        dense += parts
        if index is not None:
            quantile.append(index)
    cats = [_categorical(b, f) for f in spec.categorical_features] + quantile
    if not dense or not cats:
        raise ExportRefused(f"{spec.name} has no {'dense' if not dense else 'categorical'} model "
                            f"inputs; the exporter needs both")
    b.nodes.append(helper.make_node("Concat", dense, [DENSE], axis=1))
    b.nodes.append(helper.make_node("Concat", [_column(b, c) for c in cats], [CATS], axis=1))
    inputs = [helper.make_tensor_value_info(f.name, expected_type(spec, f.name), ["N"])
              for f in spec.features]
    outputs = [helper.make_tensor_value_info(DENSE, TensorProto.FLOAT, ["N", None]),
               helper.make_tensor_value_info(CATS, TensorProto.INT64, ["N", None])]
    graph = helper.make_graph(b.nodes, "mmoe_encoding", inputs, outputs, b.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                   helper.make_opsetid("ai.onnx.ml", ML_OPSET)])


class _Probabilities(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, dense: torch.Tensor, cats: torch.Tensor):
        probs = torch.sigmoid(self.model(dense, cats))
        return tuple(probs[:, t] for t in range(probs.shape[1]))


def model_graph(artifact) -> onnx.ModelProto:
    """The torch model traced to ONNX: (dense, cats) → p_<task>."""
    model = copy.deepcopy(artifact.model).eval()
    if getattr(model, "sparse_scoring", False):
        model.sparse_scoring = False  # the dense path: same mixture, no data-dependent shapes
    layout = artifact.encoder.layout
    rows = 4  # under ExpertBank.SCORING_ROW_BLOCK: the trace holds one block per layer
    dense = torch.zeros(rows, layout.dense_dim)
    cats = torch.zeros(rows, layout.num_categorical, dtype=torch.int64)
    outputs = [f"p_{t}" for t in artifact.task_names]
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Probabilities(model), (dense, cats), buffer, dynamo=False,
                          input_names=[DENSE, CATS], output_names=outputs, opset_version=OPSET,
                          dynamic_axes={n: {0: "N"} for n in [DENSE, CATS, *outputs]})
    return onnx.load_model_from_string(buffer.getvalue())


def export_onnx(artifact) -> bytes:
    """The whole model (encoding + forward pass) of a trained artifact as ONNX bytes."""
    if getattr(artifact, "imported", False):
        return bytes(artifact.graph)
    encoder = encoder_graph(artifact)
    model = compose.add_prefix(model_graph(artifact), "model/", rename_inputs=False,
                               rename_outputs=False)
    encoder.ir_version = model.ir_version
    merged = compose.merge_models(encoder, model, io_map=[(DENSE, DENSE), (CATS, CATS)],
                                  name=f"mmoe {artifact.model_version}")
    merged.producer_name, merged.producer_version = "mmoe", artifact.model_version
    onnx.checker.check_model(merged)
    return merged.SerializeToString()
