"""Scoring precision: the trained float32 model turned, once per process, into a cheaper
inference copy (``scoring.precision`` in the job config; the artifact itself never changes).

* ``fp32``: the model as trained.
* ``bf16``: every floating parameter and buffer in bfloat16 (embeddings, experts, gates,
  towers); the encoder's float32 dense input is cast to bfloat16 on entry and the logits and
  gates come back as float32, so callers see the same dtypes as in fp32 (probabilities stay
  float64, made from the float32 logits).
* ``int8``: dynamic int8 quantisation (``torch.ao.quantization.quantize_dynamic``, per-tensor
  symmetric int8 weights, activations quantised per batch) of the dense layers. The
  architectures keep their experts and gates as stacked tensors evaluated with one GEMM
  (:mod:`mmoe_model.layers`), not as ``nn.Linear`` modules, so before quantising they are
  rewritten as equivalent ``nn.Linear`` layers: an expert bank reading a shared input keeps
  its first layer (the one reading the model input) in float32 for accuracy
  (``QUANTISE_INPUT_LAYER``) and gets, for each deeper layer, one block-diagonal
  ``Linear(E*in, E*out)`` over the ``[B, E*in]`` layout the previous layer produces (one int8
  GEMM instead of E small ones; the zero blocks cost multiply-adds but one int8 GEMM was
  faster than the float batched product on the reference model, docs/performance.md); a gate
  reading the model input becomes one ``Linear(in, G*E)``; towers and MLP bottoms are
  ``nn.Linear`` already. What has no shared-input GEMM stays float32: expert banks fed
  per-expert inputs (PLE above its first level, single-task), sparse-gate scoring
  (``forward_selected``), DCN cross banks, embeddings, the gate softmax and the mixture.

Only trained torch models are converted: an imported ONNX graph is scored as given and any
precision but fp32 is refused for it (one line, :func:`check_precision`).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from mmoe_model.errors import ArtifactError
from mmoe_model.layers import ExpertBank, Gate

PRECISIONS = ("fp32", "bf16", "int8")
# Deeper expert layers are block-diagonalised only up to this many experts: the zero blocks
# grow the GEMM by a factor E; above it those layers keep the float batched product.
BLOCK_DIAG_MAX_EXPERTS = 8
INT8_ENGINE = "onednn"
# The expert banks' first layer reads the model input (normalised dense values and embeddings,
# one per-tensor activation scale for all of them): quantised, it moved AUC by up to 0.0014-0.002
# per task vs fp32 (synth, 4k-12k rows, a small trained MMoE), over the 0.001 bound; in float32
# every task stayed within it. So it stays float32, and int8 covers the deeper expert layers,
# the gates and the towers.
QUANTISE_INPUT_LAYER = False


def check_precision(precision: str, imported: bool = False, what: str = "the model") -> None:
    """A one-line refusal for an unknown precision, or a reduced one for an imported graph."""
    if precision not in PRECISIONS:
        raise ArtifactError(f"scoring.precision must be one of {', '.join(PRECISIONS)}; "
                            f"got {precision!r}")
    if imported and precision != "fp32":
        raise ArtifactError(f"scoring.precision {precision}: {what} is an imported ONNX graph, "
                            f"scored as given; only fp32 applies to it")


class _Int8ExpertBank(ExpertBank):
    """An :class:`ExpertBank` whose shared-input path runs through ``nn.Linear`` layers
    (quantised afterwards); per-expert inputs keep the float batched product."""

    linears: nn.ModuleList

    @classmethod
    def convert(cls, bank: ExpertBank) -> None:
        layers = []
        experts = bank.num_experts
        for level, (w, b) in enumerate(zip(bank.weights, bank.biases)):
            _, fan_in, fan_out = w.shape
            if level == 0 and not QUANTISE_INPUT_LAYER:
                continue  # computed in float32 (see QUANTISE_INPUT_LAYER)
            if level == 0:  # [B, in] @ [in, E*out]: every expert reads the same input
                weight = w.detach().permute(1, 0, 2).reshape(fan_in, experts * fan_out).t()
                linear = nn.Linear(fan_in, experts * fan_out)
            elif experts > BLOCK_DIAG_MAX_EXPERTS:
                break
            else:  # [B, E*in] (expert-major) @ blockdiag(w[0], ..., w[E-1])
                weight = torch.block_diag(*[w.detach()[e] for e in range(experts)]).t()
                linear = nn.Linear(experts * fan_in, experts * fan_out)
            with torch.no_grad():
                linear.weight.copy_(weight)
                linear.bias.copy_(b.detach().reshape(experts * fan_out))
            layers.append(linear)
        bank.__class__ = cls
        bank.linears = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The whole batch at once: the float bank's 512-row blocks (kept in cache between its
        # layers) only added quantisation calls and a concatenation here (measured, 8192 rows).
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            return super()._forward(x)
        h = x
        done = 0
        if not QUANTISE_INPUT_LAYER:  # the first layer in float32, as ExpertBank computes it
            w, b = self.weights[0], self.biases[0]
            _, fan_in, fan_out = w.shape
            flat = w.permute(1, 0, 2).reshape(fan_in, self.num_experts * fan_out)
            h = torch.relu_(torch.addmm(b.reshape(1, -1), h, flat))
            done = 1
        for linear in self.linears:
            h = torch.relu_(linear(h))
        h = h.view(h.shape[0], self.num_experts, -1).transpose(0, 1)  # [E, B, out], a view
        for w, b in list(zip(self.weights, self.biases))[done + len(self.linears):]:
            h = torch.relu_(torch.baddbmm(b, h, w))  # the layers left in float32
        return h


class _Int8Gate(Gate):
    """A :class:`Gate` whose logits on a shared input come from one ``nn.Linear``."""

    linear: nn.Linear

    @classmethod
    def convert(cls, gate: Gate) -> None:
        if gate.weight is None:  # constant gate: no input weight
            return
        outputs = gate.num_gates * gate.num_experts
        linear = nn.Linear(gate.in_dim, outputs)
        with torch.no_grad():
            linear.weight.copy_(gate.weight.detach().permute(1, 0, 2).reshape(gate.in_dim,
                                                                              outputs).t())
            linear.bias.copy_(gate.bias.detach().reshape(outputs))
        gate.__class__ = cls
        gate.linear = linear

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[-1] != self.in_dim:
            return super().logits(x)
        # [B, G*E] → [G, E, B] as Gate.logits lays it out (softmax over the middle axis)
        return self.linear(x).t().contiguous().view(self.num_gates, self.num_experts, -1)


def _int8(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        if type(module) is ExpertBank:
            _Int8ExpertBank.convert(module)
        elif type(module) is Gate:
            _Int8Gate.convert(module)
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    # The quantised kernels' backend, chosen before the weights are packed for it. On the
    # 2-core x86 VM (AVX-512 VNNI) onednn's dynamic linear ran the reference MMoE 1.2-2.5x
    # faster than fp32, fbgemm ("x86"'s usual pick) 1.0-1.9x (noisy, loaded machine).
    if INT8_ENGINE in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = INT8_ENGINE
    with warnings.catch_warnings():  # torch 2.13 deprecates torch.ao.quantization (still works)
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {nn.Linear: default_dynamic_qconfig}, dtype=torch.qint8)


class _Bf16Model(nn.Module):
    """The model in bfloat16 behind float32 inputs and outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(model).eval().to(torch.bfloat16)
        self.num_tasks = getattr(model, "num_tasks", None)
        self.arch = getattr(model, "arch", "")

    def forward(self, dense: torch.Tensor, cats: torch.Tensor, return_gates: bool = False):
        logits, gates = self.inner(dense.to(torch.bfloat16), cats, return_gates=True)
        logits = logits.float()
        return (logits, gates.float()) if return_gates else logits


def convert_model(model: nn.Module, precision: str) -> nn.Module:
    """An inference copy of ``model`` in ``precision`` (``model`` itself is left untouched;
    fp32 returns it as is)."""
    check_precision(precision)
    if precision == "fp32":
        return model
    if precision == "bf16":
        return _Bf16Model(model)
    return _int8(model)


__all__ = ["PRECISIONS", "check_precision", "convert_model"]
