"""The five multi-task architectures, one config dataclass, and ``build_model``.

Every model maps ``(dense [B, D], cats [B, C])`` to logits [B, T]. With ``return_gates=True`` it
returns ``(logits, gates)`` where ``gates`` [T, B, E] are the per-task gate weights of the LAST
layer (``E`` = ``model.num_gate_experts``):

* ``mmoe``  one gate per task over ``num_experts`` shared experts (Ma et al., KDD 2018); the gate
  kind (softmax, top-k, max, constant) is ``config.gate`` for every arch with gates, and
  ``config.expert_layout`` may make the first level's experts heterogeneous / field-split.
  ``num_levels > 1`` stacks MMoE layers: a lower layer treats the experts of the layer above as
  its "tasks" (one gate per upper expert), so each upper expert reads its own mixture. All gates
  read the model input.
* ``omoe``  the same, with ONE gate shared by every task (the paper's one-gate baseline);
  gates [T, B, E] repeat that gate for every task.
* ``ple``   Progressive Layered Extraction (Tang et al., RecSys 2020): ``num_levels`` CGC levels,
  each with ``num_experts`` experts PER TASK plus ``num_shared_experts`` shared experts. Task
  ``t``'s gate mixes its own and the shared experts (gates [T, B, num_experts +
  num_shared_experts], own experts first); below the last level a shared gate mixes every
  expert into the shared experts' next input.
* ``shared-bottom``  one MLP bottom (``expert_hidden`` then ``expert_dim``) under all towers.
* ``single-task``  T independent models (own embeddings, bottom and tower), trained jointly only
  for convenience: no parameter is shared.

``shared-bottom`` and ``single-task`` have no gates: they return an EMPTY gates tensor
[T, B, 0] (``num_gate_experts == 0``), so callers never branch on None.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
from torch import nn

from mmoe_model.archs import ARCHS
from mmoe_model.config import ModelConfig
from mmoe_model.errors import ModelConfigError
from mmoe_model.features import InputLayout
from mmoe_model.layers import MLP, EmbeddingInput, ExpertBank, ExpertSet, Gate, Tower, mix


# Top-k scoring computes only the chosen experts when one expert costs at least this many
# multiply-adds per row (below it the gather / scatter costs more than it saves). Measured on
# the idle 2-core VM, 1 thread, 8192 rows, top-2 of 8 (docs/reproduction.md 3.5): chosen-only is
# slower at 576 MACs (9.0 vs 6.3 ms), even at 1152, faster from 2560 (10.3 vs 12.8 ms).
SPARSE_MIN_MACS = 2048


class MultiTaskModel(nn.Module):
    """Common surface: ``forward(dense, cats, return_gates=False)``; subclasses implement
    ``_forward(dense, cats) -> (logits [B, T], gates [T, B, E])``."""

    arch: str = ""

    def __init__(self, config: ModelConfig, layout: InputLayout, num_tasks: int) -> None:
        super().__init__()
        self.config = config
        self.layout = layout
        self.num_tasks = num_tasks
        self.num_gate_experts = 0

    def forward(self, dense: torch.Tensor, cats: torch.Tensor, return_gates: bool = False):
        logits, gates = self._forward(dense, cats)
        return (logits, gates) if return_gates else logits

    def _forward(self, dense: torch.Tensor,
                 cats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _towers(self, per_task: torch.Tensor) -> torch.Tensor:
        """per_task [T, B, d] → logits [B, T]."""
        return torch.stack([tower(per_task[t]) for t, tower in enumerate(self.towers)], dim=1)

    def _make_towers(self, in_dim: int) -> nn.ModuleList:
        cfg = self.config
        return nn.ModuleList(Tower(in_dim, cfg.tower_hidden, cfg.dropout)
                             for _ in range(self.num_tasks))

    def _no_gates(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        return like.new_empty((self.num_tasks, batch, 0))


class SharedBottom(MultiTaskModel):
    arch = "shared-bottom"

    def __init__(self, config: ModelConfig, layout: InputLayout, num_tasks: int) -> None:
        super().__init__(config, layout, num_tasks)
        self.input = EmbeddingInput(layout)
        self.bottom = MLP(self.input.out_dim, (*config.expert_hidden, config.expert_dim),
                          config.dropout)
        self.towers = self._make_towers(config.expert_dim)

    def _forward(self, dense, cats):
        x = self.input(dense, cats)                                    # [B, F]
        h = self.bottom(x)                                             # [B, d]
        logits = self._towers(h.unsqueeze(0).expand(self.num_tasks, -1, -1))
        return logits, self._no_gates(x.shape[0], x)


class SingleTask(MultiTaskModel):
    """T shared-nothing models. Their bottoms are one ExpertBank with one "expert" per task (each
    reading its own task's embeddings), which is the same maths as T separate MLPs."""

    arch = "single-task"

    def __init__(self, config: ModelConfig, layout: InputLayout, num_tasks: int) -> None:
        super().__init__(config, layout, num_tasks)
        self.inputs = nn.ModuleList(EmbeddingInput(layout) for _ in range(num_tasks))
        self.bottoms = ExpertBank(num_tasks, layout.input_dim, config.expert_hidden,
                                  config.expert_dim, config.dropout)
        self.towers = self._make_towers(config.expert_dim)

    def _forward(self, dense, cats):
        x = torch.stack([inp(dense, cats) for inp in self.inputs])     # [T, B, F]
        h = self.bottoms(x)                                            # [T, B, d]
        return self._towers(h), self._no_gates(dense.shape[0], h)


class MixtureOfExperts(MultiTaskModel):
    """MMoE (a gate per task) or OMoE (``shared_gate``: one gate for all tasks)."""

    def __init__(self, config: ModelConfig, layout: InputLayout, num_tasks: int,
                 shared_gate: bool = False) -> None:
        super().__init__(config, layout, num_tasks)
        self.arch = "omoe" if shared_gate else "mmoe"
        self.shared_gate = shared_gate
        num_experts = config.num_experts
        self.input = EmbeddingInput(layout)
        in_dims = [self.input.out_dim] + [config.expert_dim] * (config.num_levels - 1)
        banks: list[nn.Module] = [
            ExpertBank(num_experts, d, config.expert_hidden, config.expert_dim, config.dropout)
            for d in in_dims]
        groups = config.expert_groups
        if groups is not None:  # level 0 reads the inputs: heterogeneous / field-split experts
            banks[0] = ExpertSet(groups, layout, config.expert_hidden, config.expert_dim,
                                 config.dropout)
        self.experts = nn.ModuleList(banks)
        # Lower levels: one gate per upper-level expert; all gates read the model input.
        self.level_gates = nn.ModuleList(
            Gate(self.input.out_dim, num_experts, num_experts, config.gate_temperature,
                 config.gate_dropout, kind=config.gate, k=config.gate_k)
            for _ in range(config.num_levels - 1))
        self.task_gate = Gate(self.input.out_dim, num_experts, 1 if shared_gate else num_tasks,
                              config.gate_temperature, config.gate_dropout, config.gate_prior,
                              kind=config.gate, k=config.gate_k)
        self.towers = self._make_towers(config.expert_dim)
        self.num_gate_experts = num_experts
        # Scoring with a sparse gate computes each expert only on the rows some task chose it
        # for (one level of homogeneous experts): always for max (1.7-4.0x faster, measured in
        # docs/reproduction.md 3.5), for top-k from SPARSE_MIN_MACS multiply-adds per expert-row.
        macs = sum(w.shape[1] * w.shape[2] for w in getattr(banks[0], "weights", []))
        self.sparse_scoring = (self.task_gate.sparse and config.num_levels == 1
                               and isinstance(banks[0], ExpertBank)
                               and (config.gate == "max" or macs >= SPARSE_MIN_MACS))

    def _forward(self, dense, cats):
        x = self.input(dense, cats)                                    # [B, F]
        if self.sparse_scoring and not self.training:
            gates = self.task_gate(x)                                  # [T or 1, B, E]
            used = (gates > 0).any(dim=0).t()                          # [E, B]
            out = self.experts[0].forward_selected(x, used)            # [E, B, d], 0 if unused
        else:
            h = x
            for level, bank in enumerate(self.experts):
                out = bank(h)                                          # [E, B, d]
                if level < len(self.level_gates):
                    h = mix(self.level_gates[level](x), out)           # [E, B, d] per expert
            gates = self.task_gate(x)                                  # [T or 1, B, E]
        mixed = mix(gates, out)                                        # [T or 1, B, d]
        if self.shared_gate:
            # One mixture for every task, made once: mixing the gate expanded to T tasks cost
            # 9x the mixture itself (einsum materialises the expansion; 8192 rows, 1 thread).
            gates = gates.expand(self.num_tasks, -1, -1)
            mixed = mixed.expand(self.num_tasks, -1, -1)
        return self._towers(mixed), gates


class PLE(MultiTaskModel):
    arch = "ple"

    def __init__(self, config: ModelConfig, layout: InputLayout, num_tasks: int) -> None:
        super().__init__(config, layout, num_tasks)
        own, shared = config.num_experts, config.num_shared_experts
        total = num_tasks * own + shared
        visible = own + shared
        self.input = EmbeddingInput(layout)
        in_dims = [self.input.out_dim] + [config.expert_dim] * (config.num_levels - 1)
        self.experts = nn.ModuleList(
            ExpertBank(total, d, config.expert_hidden, config.expert_dim, config.dropout)
            for d in in_dims)
        last = config.num_levels - 1
        self.task_gates = nn.ModuleList(
            Gate(d, visible, num_tasks, config.gate_temperature, config.gate_dropout,
                 config.gate_prior if level == last else None, kind=config.gate,
                 k=config.gate_k)
            for level, d in enumerate(in_dims))
        # Without shared experts nothing reads the shared input, so there is no shared gate.
        self.shared_gates = nn.ModuleList(
            Gate(d, total, 1, config.gate_temperature, config.gate_dropout, kind=config.gate,
                 k=min(config.gate_k, total))
            for d in (in_dims[:-1] if shared else []))
        self.towers = self._make_towers(config.expert_dim)
        self.num_gate_experts = visible
        # Expert order in a bank: task 0's own experts, task 1's, ..., then the shared ones.
        # select[t, k, e] = 1 when task t's k-th visible expert is bank expert e: it spreads a
        # task gate [T, B, visible] onto the whole bank [T, B, total] with one small bmm.
        select = torch.zeros(num_tasks, visible, total)
        for t in range(num_tasks):
            for k in range(own):
                select[t, k, t * own + k] = 1.0
            for k in range(shared):
                select[t, own + k, num_tasks * own + k] = 1.0
        self.register_buffer("select", select, persistent=False)
        # owner[e]: which input row (tasks 0..T-1, then T = shared) bank expert e reads above
        # the first level.
        owner = torch.tensor([t for t in range(num_tasks) for _ in range(own)]
                             + [num_tasks] * shared)
        self.register_buffer("owner", owner, persistent=False)

    def _forward(self, dense, cats):
        x = self.input(dense, cats)                                    # [B, F]
        task_h: torch.Tensor = x                                       # [B, F] then [T, B, d]
        shared_h: torch.Tensor = x                                     # [B, F] then [B, d]
        gates = x
        for level, bank in enumerate(self.experts):
            if level == 0:
                out = bank(x)                                          # [total, B, d]
            else:
                rows = torch.cat([task_h, shared_h.unsqueeze(0)]) \
                    if len(self.shared_gates) else task_h              # [T(+1), B, d]
                out = bank(rows[self.owner])                           # [total, B, d]
            gates = self.task_gates[level](task_h)                     # [T, B, visible]
            spread = torch.einsum("tbk,tke->tbe", gates, self.select)  # [T, B, total]
            if level < len(self.shared_gates):
                shared_h = mix(self.shared_gates[level](shared_h), out)[0]  # [B, d]
            task_h = mix(spread, out)                                  # [T, B, d]
        return self._towers(task_h), gates


def build_model(config: ModelConfig, layout: InputLayout, num_tasks: int) -> MultiTaskModel:
    """The model ``config.arch`` names, for ``layout`` inputs and ``num_tasks`` logits."""
    if num_tasks < 1:
        raise ModelConfigError(f"num_tasks must be >= 1, got {num_tasks}")
    if config.gate_prior is not None:
        rows = 1 if config.arch == "omoe" else num_tasks
        cols = config.num_experts + (config.num_shared_experts if config.arch == "ple" else 0)
        got = (len(config.gate_prior), len(config.gate_prior[0]) if config.gate_prior else 0)
        if got != (rows, cols) or any(len(r) != cols for r in config.gate_prior):
            raise ModelConfigError(f"gate_prior for {config.arch} with {num_tasks} task(s) must be "
                                   f"{rows}x{cols} (gates x experts), got {got[0]}x{got[1]}")
    if config.arch == "mmoe":
        return MixtureOfExperts(config, layout, num_tasks, shared_gate=False)
    if config.arch == "omoe":
        return MixtureOfExperts(config, layout, num_tasks, shared_gate=True)
    if config.arch == "ple":
        return PLE(config, layout, num_tasks)
    if config.arch == "shared-bottom":
        return SharedBottom(config, layout, num_tasks)
    return SingleTask(config, layout, num_tasks)
