"""An independent oracle for scoring: the probabilities (and gates) of a saved artifact computed
from its files alone, row by row in plain Python and float64 numpy, without ``mmoe_model``'s
encoder, layers or ``ModelArtifact.predict`` (which the Spark tests used to compare against, i.e.
the scoring code compared with itself).

What it re-derives, from the documented behaviour (mmoe_model/features.py's and layers.py's
docstrings), not from the code:

* the encoding: dense ``null → fill``, clip into ``[min, max]``, ``log1p`` for
  ``log1p_standard``, ``(x - mean) / std`` (normalization.json) unless ``normalize: none``;
  vocabulary categoricals ``1 + position`` of ``str(value)`` (0 for null / unknown), hashed long
  ones ``1 + splitmix64(value) mod (buckets - 1)`` with splitmix64 written out here on Python
  ints; the input row is the dense features in spec order, then each categorical's embedding row;
* the forward pass from model.safetensors: experts ``relu(h @ W[e] + b[e])`` per layer, softmax
  gates ``x @ W[g] + b[g]`` (over own + shared experts for PLE), the towers' Linear+ReLU layers and
  their last Linear, then the sigmoid.

Only what the scoring tests' models use is covered: ``mmoe`` and one-level ``ple`` with softmax
gates, ``raw``-encoded dense features and no field-split experts; anything else raises, so the
oracle never silently computes something else.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

_M64 = (1 << 64) - 1


def splitmix64(value: int) -> int:
    """Vigna's splitmix64 output for the 64-bit state ``value`` (Python ints, masked)."""
    z = (value + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _null(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_long(value) -> int | None:
    """A long feature's value as an int (pandas widens nullable longs to float); None if it is
    not a whole number."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    return int(value)


class Oracle:
    """``Oracle(artifact_dir).predict(rows)``: rows are dicts (``Table.to_pylist()``,
    ``DataFrame.to_dict("records")``) → probabilities float64 [B, T] and gates [B, T, E]."""

    def __init__(self, artifact: str | Path) -> None:
        artifact = Path(artifact)
        config = json.loads((artifact / "config.json").read_text())
        self.spec = json.loads((artifact / "spec.json").read_text())
        self.stats = json.loads((artifact / "normalization.json").read_text())
        self.arch = config["arch"]
        model = config["model_config"]
        if self.arch not in ("mmoe", "ple") or model.get("num_levels", 1) != 1 \
                or model.get("gate", "softmax") != "softmax" or model.get("expert_layout"):
            raise NotImplementedError(f"the test oracle does not cover {model}")
        self.temperature = float(model.get("gate_temperature", 1.0))
        self.w = {k: v.astype(np.float64) for k, v in
                  load_file(str(artifact / "model.safetensors")).items()}
        self.tasks = [t["name"] for t in self.spec["tasks"]]
        self.dense = [f for f in self.spec["features"] if f["kind"] == "dense"]
        self.cats = [f for f in self.spec["features"] if f["kind"] == "categorical"]
        if any(f.get("encoding", "raw") != "raw" for f in self.dense):
            raise NotImplementedError("the test oracle covers raw dense encodings only")

    # ------------------------------------------------------------------------------ encoding

    def _dense_value(self, f: dict, value) -> float:
        x = float(f.get("fill", 0.0)) if _null(value) else float(value)
        lo = -math.inf if f.get("min") is None else float(f["min"])
        hi = math.inf if f.get("max") is None else float(f["max"])
        x = min(max(x, lo), hi)
        normalize = f.get("normalize", "standard")
        if normalize == "log1p_standard":
            x = math.log1p(x)
        if normalize != "none":
            x = (x - self.stats[f["name"]]["mean"]) / self.stats[f["name"]]["std"]
        return x

    @staticmethod
    def _category(f: dict, value) -> int:
        if _null(value):
            return 0
        long = f.get("dtype") == "long"
        if f.get("vocabulary") is not None:
            if long:
                value = _as_long(value)
                if value is None:
                    return 0
            key = str(value)
            return f["vocabulary"].index(key) + 1 if key in f["vocabulary"] else 0
        if not long:
            raise NotImplementedError("the test oracle hashes long ids only")
        value = _as_long(value)
        return 1 + splitmix64(value & _M64) % (f["hash_buckets"] - 1)

    def inputs(self, rows: list[dict]) -> np.ndarray:
        """The model input [B, F] in float64: dense features, then the embeddings."""
        out = []
        for row in rows:
            parts = [[self._dense_value(f, row[f["name"]]) for f in self.dense]]
            for i, f in enumerate(self.cats):
                parts.append(self.w[f"input.embeddings.{i}.weight"][self._category(f, row[f["name"]])])
            out.append(np.concatenate(parts))
        return np.array(out, dtype=np.float64)

    # ------------------------------------------------------------------------------ forward

    def _experts(self, x: np.ndarray) -> np.ndarray:
        """[B, F] → [E, B, d]."""
        layers = sum(1 for k in self.w if k.startswith("experts.0.weights."))
        outs = []
        for e in range(self.w["experts.0.weights.0"].shape[0]):
            h = x
            for layer in range(layers):
                h = np.maximum(h @ self.w[f"experts.0.weights.{layer}"][e]
                               + self.w[f"experts.0.biases.{layer}"][e, 0], 0.0)
            outs.append(h)
        return np.stack(outs)

    def _softmax_gates(self, x: np.ndarray, name: str) -> np.ndarray:
        """[B, F] → [G, B, E]."""
        weight, bias = self.w[f"{name}.weight"], self.w[f"{name}.bias"]
        gates = []
        for g in range(weight.shape[0]):
            z = (x @ weight[g] + bias[g]) / self.temperature
            z = np.exp(z - z.max(axis=1, keepdims=True))
            gates.append(z / z.sum(axis=1, keepdims=True))
        return np.stack(gates)

    def _tower(self, t: int, h: np.ndarray) -> np.ndarray:
        hidden = sorted({int(k.split(".")[3]) for k in self.w
                         if k.startswith(f"towers.{t}.mlp.") and k.endswith(".weight")})
        for i in hidden:
            h = np.maximum(h @ self.w[f"towers.{t}.mlp.{i}.weight"].T
                           + self.w[f"towers.{t}.mlp.{i}.bias"], 0.0)
        return h @ self.w[f"towers.{t}.out.weight"][0] + self.w[f"towers.{t}.out.bias"][0]

    def predict(self, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        x = self.inputs(rows)
        experts = self._experts(x)                                   # [E, B, d]
        if self.arch == "mmoe":
            gates = self._softmax_gates(x, "task_gate")              # [T, B, E]
            mixed = [np.einsum("be,ebd->bd", gates[t], experts) for t in range(len(self.tasks))]
        else:  # ple: task t mixes its own experts (t*own ...) and then the shared ones
            gates = self._softmax_gates(x, "task_gates.0")           # [T, B, own + shared]
            total, visible = experts.shape[0], gates.shape[2]
            own = (total - visible) // (len(self.tasks) - 1) if len(self.tasks) > 1 else visible
            shared = visible - own
            mixed = []
            for t in range(len(self.tasks)):
                mine = list(range(t * own, (t + 1) * own)) + list(range(total - shared, total))
                mixed.append(np.einsum("be,ebd->bd", gates[t], experts[mine]))
        logits = np.stack([self._tower(t, m) for t, m in enumerate(mixed)], axis=1)
        return 1.0 / (1.0 + np.exp(-logits)), gates.transpose(1, 0, 2)
