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

from mmoe_model.config import GATE_KINDS, ExpertGroup
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

    # Scoring runs the bank on blocks of this many rows: the first layer's [rows, E*hidden]
    # output then stays in cache for the next layer. 1 thread, 8192 rows, idle 2-core VM:
    # 8x(64)->32 13.3 -> 11.1 ms, 16x(128)->64 112 -> 73 ms (docs/reproduction.md 3.5).
    SCORING_ROW_BLOCK = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = self.SCORING_ROW_BLOCK
        if x.dim() == 2 and x.shape[0] > block and not torch.is_grad_enabled():
            return torch.cat([self._forward(x[i:i + block])
                              for i in range(0, x.shape[0], block)], dim=1)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
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

    def forward_selected(self, x: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
        """Inference for sparse gates: x [B, in], used [E, B] bool → [E, B, out_dim] where
        expert ``e`` is computed only on the rows ``used[e]`` (zeros elsewhere)."""
        out = x.new_zeros(self.num_experts, x.shape[0], self.out_dim)
        for e in range(self.num_experts):
            rows = used[e].nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            h = x.index_select(0, rows)
            for w, b in zip(self.weights, self.biases):
                h = torch.relu_(torch.addmm(b[e], h, w[e]))
            out[e].index_copy_(0, rows, h)
        return out


class CrossBank(nn.Module):
    """``E`` cross networks in the style of DCN-v2 (Wang et al., WWW 2021), each followed by a
    ReLU projection to ``out_dim``, evaluated together.

    x: [B, in] → [E, B, out_dim]. Per expert ``e``: ``x_0 = x``, ``x_{l+1} = x_0 * (x_l @
    W_l[e] + b_l[e]) + x_l`` for ``num_layers`` full-rank layers, then ``relu(x_L @ P[e] +
    c[e])``. The cross layers form explicit bounded-degree feature crosses, which MLPs learn
    poorly on tabular data.
    """

    def __init__(self, num_experts: int, in_dim: int, num_layers: int, out_dim: int) -> None:
        super().__init__()
        self.num_experts, self.in_dim, self.out_dim = num_experts, in_dim, out_dim
        self.cross_weights = nn.Parameter(torch.empty(num_layers, num_experts, in_dim, in_dim))
        self.cross_biases = nn.Parameter(torch.zeros(num_layers, num_experts, 1, in_dim))
        self.proj_weight = nn.Parameter(torch.empty(num_experts, in_dim, out_dim))
        self.proj_bias = nn.Parameter(torch.empty(num_experts, 1, out_dim))
        _uniform_fan_in_(self.cross_weights, in_dim)
        _uniform_fan_in_(self.proj_weight, in_dim)
        _uniform_fan_in_(self.proj_bias, in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ModelInputError(f"cross bank input must be [B, {self.in_dim}], "
                                  f"got {list(x.shape)}")
        x0 = x.unsqueeze(0).expand(self.num_experts, -1, -1)                # [E, B, in]
        h = x0
        for w, b in zip(self.cross_weights, self.cross_biases):
            h = x0 * torch.baddbmm(b, h, w) + h
        return torch.relu(torch.baddbmm(self.proj_bias, h, self.proj_weight))


class ExpertSet(nn.Module):
    """Expert groups of different structure and inputs: [B, F] → [E, B, out_dim], the groups'
    experts in declaration order.

    Group ``i`` reads the input columns ``columns[i]`` (its declared fields; all columns when it
    declares none) and is one fused bank (an :class:`ExpertBank` for ``mlp``, a
    :class:`CrossBank` for ``cross``), so a set of G groups costs G fused banks, not E experts.
    """

    def __init__(self, groups: Sequence[ExpertGroup], layout: InputLayout, hidden: Sequence[int],
                 out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.banks = nn.ModuleList()
        self.num_experts = sum(g.count for g in groups)
        self.selects: list[bool] = []
        for i, group in enumerate(groups):
            cols = layout.field_columns(group.fields) if group.fields else \
                list(range(layout.input_dim))
            select = len(cols) != layout.input_dim
            self.register_buffer(f"columns_{i}", torch.tensor(cols, dtype=torch.long),
                                 persistent=False)
            self.selects.append(select)
            if group.type == "mlp":
                bank: nn.Module = ExpertBank(group.count, len(cols),
                                             group.args if group.args else hidden, out_dim,
                                             dropout)
            else:
                bank = CrossBank(group.count, len(cols), group.args[0] if group.args else 2,
                                 out_dim)
            self.banks.append(bank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for i, bank in enumerate(self.banks):
            inp = x.index_select(1, getattr(self, f"columns_{i}")) if self.selects[i] else x
            outs.append(bank(inp))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


class Gate(nn.Module):
    """``G`` gates over ``E`` experts, evaluated together.

    x: [B, in] (all gates read the same input) or [G, B, in] → weights [G, B, E], each row
    summing to 1. ``logits = x @ weight[g] + bias[g]``, divided by ``temperature`` (> 1 flattens,
    < 1 sharpens). ``kind`` turns logits into weights:

    * ``softmax``: a softmax over all experts;
    * ``topk``: a softmax over the ``k`` largest logits, 0 elsewhere (Shazeer et al. 2017,
      without the noise);
    * ``max``: exactly one-hot on the arg-max expert in the forward pass; in training the
      gradient is the softmax's (straight-through: ``onehot + p - p.detach()``). A renormalised
      top-1 would have weight 1 and no gradient into the gate at all; Switch-style ``p_max *
      expert`` changes the forward pass into a scaled expert, and noisy top-k adds noise that
      scoring must not have. Straight-through keeps scoring a pure max and still trains the gate;
    * ``constant``: no input weight: the logits are the bias alone, so every row of gate ``g``
      gets the same learned mixture.

    In training, ``dropout`` masks each expert logit with that probability (never every expert
    of a row) before the gate's normalisation. ``prior`` [G, E] initialises the bias (logit units);
    without it the bias starts at 0 (uniform start). In training, ``topk`` / ``max`` gates keep
    ``last_probs`` (the full softmax [G, E, B]) and ``last_chosen`` (0/1 [G, E, B]) for the
    trainer's load-balancing loss; the trainer clears them.
    """

    def __init__(self, in_dim: int, num_experts: int, num_gates: int = 1,
                 temperature: float = 1.0, dropout: float = 0.0,
                 prior: Sequence[Sequence[float]] | torch.Tensor | None = None,
                 kind: str = "softmax", k: int = 2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ModelConfigError(f"gate temperature must be > 0, got {temperature}")
        if kind not in GATE_KINDS:
            raise ModelConfigError(f"gate kind must be one of {', '.join(GATE_KINDS)}, "
                                   f"got {kind!r}")
        if kind == "topk" and not 1 <= k <= num_experts:
            raise ModelConfigError(f"top-k gate needs 1 <= k <= {num_experts}, got {k}")
        self.in_dim, self.num_experts, self.num_gates = in_dim, num_experts, num_gates
        self.kind, self.k = kind, (k if kind == "topk" else 1 if kind == "max" else num_experts)
        self.temperature = float(temperature)
        self.dropout = float(dropout)
        if kind == "constant":
            self.register_parameter("weight", None)
        else:
            self.weight = nn.Parameter(torch.empty(num_gates, in_dim, num_experts))
            _uniform_fan_in_(self.weight, in_dim)
        self.bias = nn.Parameter(torch.zeros(num_gates, num_experts))
        self.last_probs: torch.Tensor | None = None
        self.last_chosen: torch.Tensor | None = None
        if prior is not None:
            prior_t = torch.as_tensor(prior, dtype=torch.float32)
            if tuple(prior_t.shape) != (num_gates, num_experts):
                raise ModelConfigError(f"gate prior must be {num_gates}x{num_experts} "
                                       f"(gates x experts), got {list(prior_t.shape)}")
            with torch.no_grad():
                self.bias.copy_(prior_t)

    @property
    def sparse(self) -> bool:
        """True when each row uses fewer than all experts (``topk`` with k < E, ``max``)."""
        return self.k < self.num_experts

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in] or [G, B, in] → logits [G, E, B] (before temperature)."""
        gates, experts = self.num_gates, self.num_experts
        # Logits are computed as [G, E, B]: softmax over a short middle axis with a long
        # contiguous inner axis is ~15x faster on CPU than over a trailing axis of 8 experts.
        if x.dim() not in (2, 3) or x.shape[-1] != self.in_dim or (
                x.dim() == 3 and x.shape[0] != gates):
            raise ModelInputError(f"gate input must be [B, {self.in_dim}] or "
                                  f"[{gates}, B, {self.in_dim}], got {list(x.shape)}")
        if self.weight is None:  # constant: the bias alone, for every row
            return self.bias.unsqueeze(2).expand(gates, experts, x.shape[-2])
        if x.dim() == 2:
            flat = self.weight.permute(1, 0, 2).reshape(self.in_dim, gates * experts)
            logits = torch.addmm(self.bias.reshape(gates * experts, 1), flat.t(), x.t())
            return logits.view(gates, experts, -1)
        return torch.baddbmm(self.bias.unsqueeze(2), self.weight.transpose(1, 2),
                             x.transpose(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits(x)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        if self.training and self.dropout > 0:
            drop = torch.rand_like(logits) < self.dropout
            drop &= ~drop.all(dim=1, keepdim=True)
            logits = logits.masked_fill(drop, float("-inf"))
        if self.kind in ("softmax", "constant") or not self.sparse:
            weights = torch.softmax(logits, dim=1)
        else:
            top = logits.topk(self.k, dim=1).indices                       # [G, k, B]
            chosen = torch.zeros_like(logits).scatter_(1, top, 1.0)        # [G, E, B]
            if self.kind == "topk":
                weights = torch.softmax(logits.masked_fill(chosen == 0, float("-inf")), dim=1)
            else:
                weights = chosen
            if self.training and torch.is_grad_enabled():
                probs = torch.softmax(logits, dim=1)
                if self.kind == "max":
                    weights = chosen + probs - probs.detach()  # straight-through
                self.last_probs, self.last_chosen = probs, chosen
        return weights.transpose(1, 2).contiguous()  # [G, B, E]


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
