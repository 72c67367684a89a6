"""Building blocks of the multi-task models.

Shapes: ``B`` batch, ``F`` input width (dense + embeddings), ``E`` experts, ``G`` gates (one per
task, or one per next-level expert), ``T`` tasks, ``d`` expert output width.

``ExpertBank`` and ``Gate`` keep the weights of all their experts / gates in one stacked tensor
and evaluate them with a single matrix product per layer (a GEMM when every expert reads the
same input, a batched ``baddbmm`` when each reads its own). Scoring throughput depends on this: a
Python loop over 8 experts costs 8 small GEMMs and 8 dispatches per layer.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mmoe_model.errors import ModelConfigError, ModelInputError
from mmoe_model.features import InputLayout


def _uniform_fan_in_(tensor: torch.Tensor, fan_in: int) -> None:
    """``nn.Linear``'s default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    nn.init.uniform_(tensor, -bound, bound)


class MLP(nn.Sequential):
    """``Linear → ReLU → Dropout`` per hidden width: [B, in] → [B, out_dim]
    (``out_dim`` is ``hidden[-1]``, or ``in_dim`` when ``hidden`` is empty)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        width = in_dim
        for out in hidden:
            layers += [nn.Linear(width, out), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = out
        super().__init__(*layers)
        self.out_dim = width


class EmbeddingInput(nn.Module):
    """One embedding table per categorical feature, concatenated after the dense features.

    dense [B, D] float32, cats [B, C] int64 → [B, F] with ``F = D + sum(embedding dims)``.
    """

    def __init__(self, layout: InputLayout) -> None:
        super().__init__()
        self.dense_dim = layout.dense_dim
        self.embeddings = nn.ModuleList(nn.Embedding(card, dim) for card, dim in layout.embeddings)
        self.out_dim = layout.input_dim

    def forward(self, dense: torch.Tensor, cats: torch.Tensor) -> torch.Tensor:
        if dense.dim() != 2 or dense.shape[1] != self.dense_dim:
            raise ModelInputError(f"dense input must be [B, {self.dense_dim}], "
                                  f"got {list(dense.shape)}")
        if cats.dim() != 2 or cats.shape[1] != len(self.embeddings):
            raise ModelInputError(f"categorical input must be [B, {len(self.embeddings)}], "
                                  f"got {list(cats.shape)}")
        if cats.shape[0] != dense.shape[0]:
            raise ModelInputError(f"dense has {dense.shape[0]} rows but cats has {cats.shape[0]}")
        parts = [dense] + [emb(cats[:, i]) for i, emb in enumerate(self.embeddings)]
        return torch.cat(parts, dim=1)


class ExpertBank(nn.Module):
    """``E`` independent MLP experts (ReLU after every layer, output included), all evaluated
    together.

    x: [B, in] (every expert reads the same input) or [E, B, in] (expert ``e`` reads ``x[e]``)
    → [E, B, out_dim]. Layer ``l`` holds ``weights[l]`` [E, in_l, out_l] and ``biases[l]``
    [E, 1, out_l]; expert ``e`` is exactly ``relu(h @ weights[l][e] + biases[l][e])`` per layer.
    """

    def __init__(self, num_experts: int, in_dim: int, hidden: Sequence[int], out_dim: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if num_experts < 1:
            raise ModelConfigError(f"an expert bank needs at least one expert, got {num_experts}")
        dims = [in_dim, *hidden, out_dim]
        self.num_experts = num_experts
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.dropout = dropout
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(num_experts, a, b)) for a, b in zip(dims[:-1], dims[1:]))
        self.biases = nn.ParameterList(
            nn.Parameter(torch.empty(num_experts, 1, b)) for b in dims[1:])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w, b in zip(self.weights, self.biases):
            _uniform_fan_in_(w, w.shape[1])
            _uniform_fan_in_(b, w.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        num_experts = self.num_experts
        h = x
        for w, b in zip(self.weights, self.biases):
            _, fan_in, fan_out = w.shape
            if h.dim() == 2:
                # Shared input: one [B, in] @ [in, E*out] GEMM. b is [E, 1, out] contiguous, so
                # its memory is already the [1, E*out] row the flattened weight needs.
                flat = w.permute(1, 0, 2).reshape(fan_in, num_experts * fan_out)
                h = torch.addmm(b.reshape(1, num_experts * fan_out), h, flat)
                h = torch.relu_(h)  # in place while still contiguous: ~20x cheaper than on a view
                h = h.view(-1, num_experts, fan_out).transpose(0, 1)  # [E, B, out], a view
            elif h.dim() == 3 and h.shape[0] == num_experts:
                h = torch.relu_(torch.baddbmm(b, h, w))
            else:
                raise ModelInputError(f"expert bank input must be [B, {self.in_dim}] or "
                                      f"[{num_experts}, B, {self.in_dim}], got {list(h.shape)}")
            if self.dropout > 0:
                h = F.dropout(h, self.dropout, self.training)
        return h


class Gate(nn.Module):
    """``G`` softmax gates over ``E`` experts, evaluated together.

    x: [B, in] (all gates read the same input) or [G, B, in] → weights [G, B, E], each row
    summing to 1. ``logits = x @ weight[g] + bias[g]``, divided by ``temperature`` (> 1 flattens,
    < 1 sharpens). In training, ``dropout`` masks each expert logit with that probability (never
    every expert of a row) before the softmax, so a gate cannot lean on one expert alone; the
    weights stay a distribution. ``prior`` [G, E] initialises the bias (logit units) so a gate can
    start from a known task-expert preference; without it the bias starts at 0 (uniform start).
    """

    def __init__(self, in_dim: int, num_experts: int, num_gates: int = 1,
                 temperature: float = 1.0, dropout: float = 0.0,
                 prior: Sequence[Sequence[float]] | torch.Tensor | None = None) -> None:
        super().__init__()
        if temperature <= 0:
            raise ModelConfigError(f"gate temperature must be > 0, got {temperature}")
        self.in_dim, self.num_experts, self.num_gates = in_dim, num_experts, num_gates
        self.temperature = float(temperature)
        self.dropout = float(dropout)
        self.weight = nn.Parameter(torch.empty(num_gates, in_dim, num_experts))
        self.bias = nn.Parameter(torch.zeros(num_gates, num_experts))
        _uniform_fan_in_(self.weight, in_dim)
        if prior is not None:
            prior_t = torch.as_tensor(prior, dtype=torch.float32)
            if tuple(prior_t.shape) != (num_gates, num_experts):
                raise ModelConfigError(f"gate prior must be {num_gates}x{num_experts} "
                                       f"(gates x experts), got {list(prior_t.shape)}")
            with torch.no_grad():
                self.bias.copy_(prior_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates, experts = self.num_gates, self.num_experts
        # Logits are computed as [G, E, B]: softmax over a short middle axis with a long
        # contiguous inner axis is ~15x faster on CPU than over a trailing axis of 8 experts.
        if x.dim() == 2:
            flat = self.weight.permute(1, 0, 2).reshape(self.in_dim, gates * experts)
            logits = torch.addmm(self.bias.reshape(gates * experts, 1), flat.t(), x.t())
            logits = logits.view(gates, experts, -1)
        elif x.dim() == 3 and x.shape[0] == gates:
            logits = torch.baddbmm(self.bias.unsqueeze(2), self.weight.transpose(1, 2),
                                   x.transpose(1, 2))
        else:
            raise ModelInputError(f"gate input must be [B, {self.in_dim}] or "
                                  f"[{gates}, B, {self.in_dim}], got {list(x.shape)}")
        if self.temperature != 1.0:
            logits = logits / self.temperature
        if self.training and self.dropout > 0:
            drop = torch.rand_like(logits) < self.dropout
            drop &= ~drop.all(dim=1, keepdim=True)
            logits = logits.masked_fill(drop, float("-inf"))
        return torch.softmax(logits, dim=1).transpose(1, 2).contiguous()  # [G, B, E]


def mix(gates: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Gate-weighted sum of expert outputs: gates [G, B, E], experts [E, B, d] → [G, B, d]."""
    return torch.einsum("gbe,ebd->gbd", gates, experts)


class Tower(nn.Module):
    """A task head: MLP then a linear layer to one logit. [B, in] → [B]."""

    def __init__(self, in_dim: int, hidden: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, hidden, dropout)
        self.out = nn.Linear(self.mlp.out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(x)).squeeze(-1)
