"""Model shapes, gate invariants, and the fused expert/gate maths against plain-loop references."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from mmoe_model.errors import ModelConfigError, ModelInputError
from mmoe_model.features import InputLayout
from mmoe_model.layers import ExpertBank, Gate
from mmoe_model.models import ARCHS, ModelConfig, build_model

LAYOUT = InputLayout(dense_dim=3, embeddings=((5, 2), (7, 3)))
B = 6


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(previous)


def inputs(batch: int = B):
    g = torch.Generator().manual_seed(1)
    dense = torch.randn(batch, 3, generator=g)
    cats = torch.stack([torch.randint(0, c, (batch,), generator=g)
                        for c, _ in LAYOUT.embeddings], 1)
    return dense, cats


def small(arch: str, **kw) -> ModelConfig:
    base = dict(arch=arch, num_experts=3, expert_hidden=(5,), expert_dim=4, tower_hidden=(3,),
                num_shared_experts=2)
    base.update(kw)
    return ModelConfig(**base)


def reference_expert(bank: ExpertBank, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert e as a plain MLP: one matmul per layer, ReLU after each."""
    h = x
    for w, b in zip(bank.weights, bank.biases):
        h = torch.relu(h @ w[e] + b[e, 0])
    return h


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("levels", [1, 2])
def test_shapes_and_gate_rows(arch, levels):
    model = build_model(small(arch, num_levels=levels), LAYOUT, num_tasks=3).eval()
    dense, cats = inputs()
    logits = model(dense, cats)
    assert logits.shape == (B, 3) and logits.dtype == torch.float32
    logits2, gates = model(dense, cats, return_gates=True)
    assert torch.equal(logits, logits2)
    expected_e = {"mmoe": 3, "omoe": 3, "ple": 3 + 2}.get(arch, 0)
    assert model.num_gate_experts == expected_e
    assert gates.shape == (3, B, expected_e)
    if expected_e:
        torch.testing.assert_close(gates.sum(-1), torch.ones(3, B))
        assert bool((gates >= 0).all())
    # Every parameter gets a gradient: nothing is built but left unused.
    model.train()
    model(dense, cats).sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []


def test_ple_without_shared_experts_has_no_dangling_shared_gate():
    model = build_model(small("ple", num_shared_experts=0, num_levels=2), LAYOUT, num_tasks=2)
    assert len(model.shared_gates) == 0
    model(*inputs()).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_fused_expert_bank_equals_plain_loop():
    bank = ExpertBank(num_experts=4, in_dim=6, hidden=(5, 7), out_dim=3)
    x = torch.randn(9, 6)
    out = bank(x)                                            # shared input
    ref = torch.stack([reference_expert(bank, e, x) for e in range(4)])
    assert out.shape == (4, 9, 3)
    torch.testing.assert_close(out, ref)
    per_expert = torch.randn(4, 9, 6)                        # one input per expert
    ref2 = torch.stack([reference_expert(bank, e, per_expert[e]) for e in range(4)])
    torch.testing.assert_close(bank(per_expert), ref2)
    with pytest.raises(ModelInputError):
        bank(torch.randn(3, 9, 6))


def test_expert_bank_scores_in_row_blocks_like_the_plain_loop():
    """Scoring (no grad) runs the bank in blocks of SCORING_ROW_BLOCK rows; a batch that ends in
    a partial block must still equal the plain loop, row for row."""
    bank = ExpertBank(num_experts=3, in_dim=6, hidden=(5,), out_dim=4)
    x = torch.randn(2 * ExpertBank.SCORING_ROW_BLOCK + 37, 6)
    ref = torch.stack([reference_expert(bank, e, x) for e in range(3)])
    with torch.no_grad():
        out = bank(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref)


def test_fused_gate_equals_per_gate_softmax():
    gate = Gate(in_dim=5, num_experts=4, num_gates=3, temperature=2.0)
    with torch.no_grad():
        gate.bias.normal_()
    x = torch.randn(8, 5)
    ref = torch.stack([torch.softmax((x @ gate.weight[g] + gate.bias[g]) / 2.0, -1)
                       for g in range(3)])
    torch.testing.assert_close(gate(x), ref)
    per_gate = torch.randn(3, 8, 5)
    ref2 = torch.stack([torch.softmax((per_gate[g] @ gate.weight[g] + gate.bias[g]) / 2.0, -1)
                        for g in range(3)])
    torch.testing.assert_close(gate(per_gate), ref2)


def test_gate_dropout_keeps_distributions_and_only_acts_in_training():
    gate = Gate(in_dim=5, num_experts=4, num_gates=2, dropout=0.5)
    x = torch.randn(200, 5)
    gate.train()
    w = gate(x)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 200))
    assert int((w == 0).sum()) > 0                           # some experts were dropped
    gate.eval()
    assert int((gate(x) == 0).sum()) == 0


def test_gate_prior_initialises_bias_and_is_shape_checked():
    prior = [[2.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 1.0, 0.0]]
    model = build_model(small("mmoe", gate_prior=prior), LAYOUT, num_tasks=3)
    torch.testing.assert_close(model.task_gate.bias.detach(), torch.tensor(prior))
    with pytest.raises(ModelConfigError, match="3x3"):
        build_model(small("mmoe", gate_prior=prior[:2]), LAYOUT, num_tasks=3)
    ple = build_model(small("ple", gate_prior=[[0.0] * 5] * 2), LAYOUT, num_tasks=2)
    assert ple.task_gates[-1].bias.shape == (2, 5)
    with pytest.raises(ModelConfigError, match="no gates"):
        small("shared-bottom", gate_prior=prior)


def hand_written_experts(model, dense, cats, num_experts=3):
    """The input (dense features, then each embedding) and every expert's output, by hand."""
    embs = [emb(cats[:, i]) for i, emb in enumerate(model.input.embeddings)]
    x = torch.cat([dense] + embs, 1)
    return x, [reference_expert(model.experts[0], e, x) for e in range(num_experts)]


def test_mmoe_matches_hand_written_forward():
    model = build_model(small("mmoe"), LAYOUT, num_tasks=2).eval()
    dense, cats = inputs()
    with torch.no_grad():
        x, experts = hand_written_experts(model, dense, cats)
        expected = []
        for t in range(2):
            g = torch.softmax(x @ model.task_gate.weight[t] + model.task_gate.bias[t], -1)
            mixed = sum(g[:, e:e + 1] * experts[e] for e in range(3))
            expected.append(model.towers[t](mixed))
        torch.testing.assert_close(model(dense, cats), torch.stack(expected, 1))


def test_ple_task_gates_see_only_own_and_shared_experts():
    model = build_model(small("ple"), LAYOUT, num_tasks=2).eval()
    dense, cats = inputs()
    with torch.no_grad():
        x = model.input(dense, cats)
        bank = model.experts[0]
        experts = [reference_expert(bank, e, x) for e in range(2 * 3 + 2)]
        expected = []
        for t in range(2):
            visible = [t * 3 + k for k in range(3)] + [6, 7]   # own experts, then shared
            gate = model.task_gates[0]
            g = torch.softmax(x @ gate.weight[t] + gate.bias[t], -1)
            mixed = sum(g[:, k:k + 1] * experts[e] for k, e in enumerate(visible))
            expected.append(model.towers[t](mixed))
        torch.testing.assert_close(model(dense, cats), torch.stack(expected, 1))


def test_omoe_matches_hand_written_forward():
    """OMoE: one gate's mixture of the experts feeds every task's tower."""
    model = build_model(small("omoe"), LAYOUT, num_tasks=3).eval()
    dense, cats = inputs()
    with torch.no_grad():
        x, experts = hand_written_experts(model, dense, cats)
        g = torch.softmax(x @ model.task_gate.weight[0] + model.task_gate.bias[0], -1)
        mixed = sum(g[:, e:e + 1] * experts[e] for e in range(3))
        expected = torch.stack([model.towers[t](mixed) for t in range(3)], 1)
        logits, gates = model(dense, cats, return_gates=True)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(gates, g.expand(3, -1, -1))


def test_omoe_equals_mmoe_with_one_task():
    mmoe = build_model(small("mmoe", num_levels=2), LAYOUT, num_tasks=1).eval()
    omoe = build_model(small("omoe", num_levels=2), LAYOUT, num_tasks=1).eval()
    assert set(mmoe.state_dict()) == set(omoe.state_dict())
    omoe.load_state_dict(mmoe.state_dict())
    dense, cats = inputs()
    lm, gm = mmoe(dense, cats, return_gates=True)
    lo, go = omoe(dense, cats, return_gates=True)
    torch.testing.assert_close(lm, lo)
    torch.testing.assert_close(gm, go)


def test_omoe_shares_one_gate_across_tasks():
    model = build_model(small("omoe"), LAYOUT, num_tasks=3).eval()
    _, gates = model(*inputs(), return_gates=True)
    torch.testing.assert_close(gates[0], gates[1])
    torch.testing.assert_close(gates[0], gates[2])
    mmoe = build_model(small("mmoe"), LAYOUT, num_tasks=3).eval()
    _, g2 = mmoe(*inputs(), return_gates=True)
    assert not torch.allclose(g2[0], g2[1])


def test_single_task_shares_nothing():
    model = build_model(small("single-task"), LAYOUT, num_tasks=2).eval()
    dense, cats = inputs()
    model.zero_grad()
    model(dense, cats)[:, 0].sum().backward()
    # Task 0's loss must not reach task 1's embeddings, bottom or tower.
    assert model.inputs[1].embeddings[0].weight.grad is None or \
        float(model.inputs[1].embeddings[0].weight.grad.abs().sum()) == 0.0
    assert float(model.bottoms.weights[0].grad[1].abs().sum()) == 0.0
    assert float(model.bottoms.weights[0].grad[0].abs().sum()) > 0.0


def test_config_and_input_errors():
    with pytest.raises(ModelConfigError, match="arch"):
        ModelConfig(arch="moe")
    with pytest.raises(ModelConfigError, match="num_experts"):
        ModelConfig(num_experts=0)
    with pytest.raises(ModelConfigError, match="temperature"):
        ModelConfig(gate_temperature=0.0)
    with pytest.raises(ModelConfigError, match="unknown"):
        ModelConfig.from_dict({"arch": "mmoe", "experts": 3})
    cfg = small("ple", gate_prior=[[1.0] * 5] * 2)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    model = build_model(small("mmoe"), LAYOUT, num_tasks=2)
    dense, cats = inputs()
    with pytest.raises(ModelInputError, match="dense"):
        model(dense[:, :2], cats)
    with pytest.raises(ModelInputError, match="rows"):
        model(dense[:3], cats)
    with pytest.raises(ModelConfigError):
        build_model(small("mmoe"), LAYOUT, num_tasks=0)


def test_empty_batch():
    for arch in ARCHS:
        model = build_model(small(arch), LAYOUT, num_tasks=2).eval()
        logits, gates = model(*inputs(0), return_gates=True)
        assert logits.shape == (0, 2) and gates.shape[:2] == (2, 0)


def test_logits_train_towards_labels_with_bce():
    """Sanity: the fused layers are differentiable end to end (a few Adam steps fit a batch)."""
    model = build_model(small("mmoe"), LAYOUT, num_tasks=2)
    dense, cats = inputs(32)
    y = (dense[:, :2] > 0).float()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    first = None
    for _ in range(30):
        loss = F.binary_cross_entropy_with_logits(model(dense, cats), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
