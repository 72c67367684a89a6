"""Factored scoring of (user, item) pairs: the first layer computed once per user and per item.

Every consumer of the model input ``x`` in mmoe / omoe / ple / shared-bottom is linear in it:
the first layer of every expert (one GEMM over the concatenated input), every gate that reads
``x`` (linear + softmax) and the shared bottom's first ``Linear``. ``x`` is the concatenation of
per-column blocks (a dense column's normalised value, a categorical column's embedding), and
encoding is per column, so with the columns split into user-side ``u``, item-side ``i`` and
context ``c`` (null in catalog mode)::

    pre = x @ W + b = x_u @ W_u  +  x_i @ W_i  +  (x_c @ W_c + b)
                      per user      per item      once

:class:`FactoredModel` computes ``x_u @ W_u`` for a frame of users, ``x_i @ W_i`` for a frame of
items, the constant once, and runs the rest of the network (ReLU, deeper expert layers, gate
softmax, mixing, towers) on ``pre`` per pair. It mirrors the architectures' forward passes in
``models.py`` exactly; :func:`factorable` says which models it knows (exact classes only: a new
gate or expert type falls back to row scoring until it is taught here). ``single-task`` (one
input layer per task) is not factored.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from mmoe_model.errors import ModelInputError
from mmoe_model.features import Frame
from mmoe_model.layers import MLP, ExpertBank, Gate, mix

_ARROW = {"long": pa.int64(), "double": pa.float64(), "string": pa.string()}


def _bank_first(bank: ExpertBank) -> tuple[torch.Tensor, torch.Tensor]:
    w, b = bank.weights[0], bank.biases[0]
    experts, fan_in, fan_out = w.shape
    return (w.permute(1, 0, 2).reshape(fan_in, experts * fan_out),
            b.reshape(experts * fan_out))


def _bank_rest(bank: ExpertBank, pre: torch.Tensor) -> torch.Tensor:
    """ExpertBank.forward on a shared input, from its first layer's pre-activations."""
    experts, _, fan_out = bank.weights[0].shape
    h = torch.relu_(pre).view(-1, experts, fan_out).transpose(0, 1)        # [E, B, out]
    for w, b in zip(list(bank.weights)[1:], list(bank.biases)[1:]):
        h = torch.relu_(torch.baddbmm(b, h, w))
    return h


def _gate_first(gate: Gate) -> tuple[torch.Tensor, torch.Tensor]:
    return (gate.weight.permute(1, 0, 2).reshape(gate.in_dim, gate.num_gates * gate.num_experts),
            gate.bias.reshape(gate.num_gates * gate.num_experts))


def _gate_rest(gate: Gate, pre: torch.Tensor) -> torch.Tensor:
    """Gate.forward (eval) from its logits: softmax over experts → [G, B, E]. As in Gate, the
    softmax runs on a [G, E, B] copy: over a short middle axis with a long contiguous inner axis
    it is many times faster on CPU than over a trailing axis of a few experts."""
    logits = pre.view(-1, gate.num_gates, gate.num_experts).permute(1, 2, 0).contiguous()
    if gate.temperature != 1.0:
        logits = logits / gate.temperature
    return torch.softmax(logits, dim=1).transpose(1, 2).contiguous()


def _moe(model) -> tuple[list, Callable]:
    banks, level_gates = list(model.experts), list(model.level_gates)
    parts = [_bank_first(banks[0])] + [_gate_first(g) for g in level_gates] \
        + [_gate_first(model.task_gate)]

    def finish(pieces: list[torch.Tensor]):
        out = _bank_rest(banks[0], pieces[0])
        for level in range(1, len(banks)):
            out = banks[level](mix(_gate_rest(level_gates[level - 1], pieces[level]), out))
        gates = _gate_rest(model.task_gate, pieces[-1])
        if model.shared_gate:
            gates = gates.expand(model.num_tasks, -1, -1)
        return model._towers(mix(gates, out)), gates

    return parts, finish


def _ple(model) -> tuple[list, Callable]:
    banks, task_gates, shared_gates = list(model.experts), list(model.task_gates), \
        list(model.shared_gates)
    parts = [_bank_first(banks[0]), _gate_first(task_gates[0])]
    if shared_gates:
        parts.append(_gate_first(shared_gates[0]))

    def finish(pieces: list[torch.Tensor]):
        out = _bank_rest(banks[0], pieces[0])
        gates = _gate_rest(task_gates[0], pieces[1])
        spread = torch.einsum("tbk,tke->tbe", gates, model.select)
        shared_h = mix(_gate_rest(shared_gates[0], pieces[2]), out)[0] if shared_gates else None
        task_h = mix(spread, out)
        for level in range(1, len(banks)):  # as PLE._forward above the first level
            rows = torch.cat([task_h, shared_h.unsqueeze(0)]) if shared_gates else task_h
            out = banks[level](rows[model.owner])
            gates = task_gates[level](task_h)
            spread = torch.einsum("tbk,tke->tbe", gates, model.select)
            if level < len(shared_gates):
                shared_h = mix(shared_gates[level](shared_h), out)[0]
            task_h = mix(spread, out)
        return model._towers(task_h), gates

    return parts, finish


def _shared_bottom(model) -> tuple[list, Callable]:
    first, rest = model.bottom[0], nn.Sequential(*list(model.bottom)[1:])

    def finish(pieces: list[torch.Tensor]):
        h = rest(pieces[0])
        logits = model._towers(h.unsqueeze(0).expand(model.num_tasks, -1, -1))
        return logits, model._no_gates(h.shape[0], h)

    return [(first.weight.t(), first.bias)], finish


def _softmax_gates(gates) -> bool:
    """Only dense softmax gates are factored: top-k / max / constant gates (issue 13) are not
    reproduced by :func:`_gate_rest`, so their models score joined rows instead."""
    return all(type(g) is Gate and getattr(g, "kind", "softmax") == "softmax" for g in gates)


def _structure(model) -> tuple[list, Callable] | None:
    from mmoe_model.models import PLE, MixtureOfExperts, SharedBottom

    kind = type(model)
    if kind in (MixtureOfExperts, PLE) and not _softmax_gates(
            [*getattr(model, "level_gates", []), *getattr(model, "task_gates", []),
             *getattr(model, "shared_gates", []),
             *([model.task_gate] if hasattr(model, "task_gate") else [])]):
        return None
    if kind is MixtureOfExperts and all(type(b) is ExpertBank for b in model.experts) \
            and all(type(g) is Gate for g in [*model.level_gates, model.task_gate]):
        return _moe(model)
    if kind is PLE and all(type(b) is ExpertBank for b in model.experts) \
            and all(type(g) is Gate for g in [*model.task_gates, *model.shared_gates]):
        return _ple(model)
    if kind is SharedBottom and type(model.bottom) is MLP and type(model.bottom[0]) is nn.Linear:
        return _shared_bottom(model)
    return None


def factorable(model, spec=None) -> bool:
    """Whether :class:`FactoredModel` knows this model's structure (else: score joined rows).
    With ``spec``: also every dense feature must be encoded raw (one input entry per column;
    quantile / piecewise-linear encodings span several entries)."""
    if spec is not None and any(getattr(f, "encoding", "raw") != "raw"
                                for f in spec.dense_features):
        return False
    return _structure(model) is not None


class FactoredModel:
    """A model whose first layer is split into user-side, item-side and constant parts.

    ``user_columns`` / ``item_columns`` are feature names (disjoint); every other feature is
    context and is encoded as null (its ``fill`` / index 0), as in a joined catalog row."""

    def __init__(self, artifact, user_columns: Sequence[str], item_columns: Sequence[str]) -> None:
        structure = _structure(artifact.model)
        if structure is None or not factorable(artifact.model, artifact.spec):
            raise ModelInputError(f"arch {artifact.arch!r} cannot be scored factored "
                                  f"(first layer not linear in one shared input)")
        spec = artifact.spec
        names = set(spec.feature_names)
        unknown = [c for c in (*user_columns, *item_columns) if c not in names]
        if unknown:
            raise ModelInputError(f"factored scoring: {unknown} are not features of the model")
        both = set(user_columns) & set(item_columns)
        if both:
            raise ModelInputError(f"factored scoring: {sorted(both)} are both user- and item-side")
        self.artifact = artifact
        self.model = artifact.model
        self.user_columns, self.item_columns = tuple(user_columns), tuple(item_columns)
        parts, self._finish = structure
        self._splits = [w.shape[1] for w, _ in parts]
        with torch.no_grad():
            weight = torch.cat([w for w, _ in parts], dim=1).detach().contiguous()  # [F, K]
            bias = torch.cat([b for _, b in parts]).detach()                          # [K]
        # which entries of x each feature fills: dense j → j; categorical c → its embedding block
        blocks, start = {}, len(spec.dense_features)
        for j, feature in enumerate(spec.dense_features):
            blocks[feature.name] = [j]
        for feature in spec.categorical_features:
            blocks[feature.name] = list(range(start, start + feature.embedding_dim))
            start += feature.embedding_dim
        self._idx = {side: torch.tensor(sorted(i for c in cols for i in blocks[c]), dtype=torch.long)
                     for side, cols in (("user", self.user_columns), ("item", self.item_columns))}
        self._w = {side: weight[idx].contiguous() for side, idx in self._idx.items()}
        context = [c for c in spec.feature_names
                   if c not in self.user_columns and c not in self.item_columns]
        ctx_idx = torch.tensor(sorted(i for c in context for i in blocks[c]), dtype=torch.long)
        with torch.inference_mode():
            x = self._input(self._frame({}, 1))                       # one all-null row
            self.constant = (x[:, ctx_idx] @ weight[ctx_idx] + bias)[0].contiguous()  # [K]
        self.width = weight.shape[1]
        self.context_columns = tuple(context)

    def _frame(self, columns: dict, rows: int) -> pa.RecordBatch:
        """All the model's features: the given columns, every other one null (spec type)."""
        arrays, fields = [], []
        for feature in self.artifact.spec.features:
            col = columns.get(feature.name)
            if col is None:
                col = pa.nulls(rows, type=_ARROW[feature.dtype])
            arrays.append(col)
            fields.append(feature.name)
        return pa.RecordBatch.from_arrays(arrays, names=fields)

    def _input(self, frame: Frame) -> torch.Tensor:
        dense, cats = self.artifact.encoder.encode(frame)
        return self.model.input(dense, cats)

    def side(self, frame: Frame, side: str) -> torch.Tensor:
        """``x_side @ W_side`` [N, K] for the N rows of ``frame`` (a pyarrow Table/RecordBatch
        with the side's feature columns; a null value encodes as in a joined row)."""
        if side not in self._idx:
            raise ModelInputError(f"side must be 'user' or 'item', got {side!r}")
        columns = self.user_columns if side == "user" else self.item_columns
        rows = frame.num_rows
        got = {}
        for name in columns:
            col = frame.column(name)
            got[name] = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        with torch.inference_mode():
            x = self._input(self._frame(got, rows))
            return x[:, self._idx[side]] @ self._w[side]

    def probabilities(self, pre: torch.Tensor) -> np.ndarray:
        """Probabilities float64 [P, T] from per-pair first-layer pre-activations [P, K]
        (user part + item part + :attr:`constant`); ``pre`` is overwritten (scratch)."""
        with torch.inference_mode():
            pieces = list(torch.split(pre, self._splits, dim=1))
            logits, _ = self._finish(pieces)
            return torch.sigmoid(logits.double()).numpy()

    def pairs(self, user_pre: torch.Tensor, item_pre: torch.Tensor) -> np.ndarray:
        """Probabilities [U, I, T] of every (user, item) pair of two side blocks."""
        with torch.inference_mode():
            pre = (user_pre.unsqueeze(1) + (item_pre + self.constant).unsqueeze(0))
            probs = self.probabilities(pre.reshape(-1, self.width))
        return probs.reshape(user_pre.shape[0], item_pre.shape[0], -1)


__all__ = ["FactoredModel", "factorable"]
