"""gate_summary on hand-built gate tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmoe_model.errors import ModelInputError
from mmoe_model.gates import gate_summary


def test_uniform_and_collapsed_gates():
    batch, experts = 10, 4
    uniform = np.full((batch, experts), 1 / experts)
    collapsed = np.zeros((batch, experts))
    collapsed[:, 2] = 1.0
    mixed = np.tile([0.7, 0.1, 0.1, 0.1], (batch, 1))
    summary = gate_summary(np.stack([uniform, collapsed, mixed]), ["a", "b", "c"])
    assert summary["a"]["entropy"] == pytest.approx(math.log(4))
    assert summary["a"]["normalized_entropy"] == pytest.approx(1.0)
    assert summary["a"]["mean_weight"] == pytest.approx([0.25] * 4)
    assert summary["a"]["collapsed"] is False
    assert summary["b"]["collapsed"] is True and summary["b"]["top_expert"] == 2
    assert summary["b"]["entropy"] == pytest.approx(0.0)
    expected = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1))
    assert summary["c"]["entropy"] == pytest.approx(expected)
    assert summary["c"]["max_mean_weight"] == pytest.approx(0.7)
    assert summary["c"]["collapsed"] is False
    assert gate_summary(np.stack([mixed]), ["c"], collapse_threshold=0.6)["c"]["collapsed"]


def test_no_gates_and_bad_shapes():
    empty = gate_summary(np.zeros((2, 5, 0)), ["a", "b"])
    assert empty["a"]["mean_weight"] == [] and empty["b"]["collapsed"] is False
    with pytest.raises(ModelInputError):
        gate_summary(np.zeros((3, 5, 2)), ["a", "b"])
