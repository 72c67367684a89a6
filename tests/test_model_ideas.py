"""Issue 13: gate kinds, load balancing, field-split / heterogeneous / cross experts, numeric
encodings, checkpoint resume. Every check compares against an independent plain-loop oracle."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from mmoe_model import artifact as art
from mmoe_model.artifact import ModelArtifact, build_artifact_files, save_artifact
from mmoe_model.config import ModelConfig, TrainConfig
from mmoe_model.errors import ModelConfigError, TrainingError
from mmoe_model.features import FeatureEncoder, InputLayout
from mmoe_model.gates import gate_summary
from mmoe_model.layers import CrossBank, ExpertBank, ExpertSet, Gate
from mmoe_model.models import build_model
from mmoe_model.sample import sample_frame
from mmoe_model.trainer import load_balance_loss, train
from schemas import load_spec
from schemas.spec import SpecError, parse_spec

KINDS = ("softmax", "topk", "max", "constant")


def _gate_oracle(gate: Gate, x: torch.Tensor) -> np.ndarray:
    """Plain numpy, one gate and one row at a time: [G, B, E]."""
    W = None if gate.weight is None else gate.weight.detach().double().numpy()
    b = gate.bias.detach().double().numpy()
    xs = x.double().numpy()
    out = np.zeros((gate.num_gates, xs.shape[0], gate.num_experts))
    for g in range(gate.num_gates):
        for r in range(xs.shape[0]):
            z = (b[g] if W is None else xs[r] @ W[g] + b[g]) / gate.temperature
            order = sorted(range(len(z)), key=lambda e: -z[e])
            keep = {"softmax": len(z), "constant": len(z), "topk": gate.k, "max": 1}[gate.kind]
            chosen = order[:keep]
            ez = {e: np.exp(z[e] - z[chosen[0]]) for e in chosen}
            for e in chosen:
                out[g, r, e] = 1.0 if gate.kind == "max" else ez[e] / sum(ez.values())
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_gate_kinds_match_a_loop_oracle(kind):
    torch.manual_seed(0)
    gate = Gate(6, 5, num_gates=3, temperature=0.7, kind=kind, k=2).eval()
    with torch.no_grad():
        gate.bias.normal_()  # a non-uniform constant mixture
    x = torch.randn(40, 6)
    with torch.no_grad():
        w = gate(x)
    assert w.shape == (3, 40, 5)
    assert float(w.min()) >= 0 and float(w.max()) <= 1
    np.testing.assert_allclose(w.sum(dim=2).numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(w.double().numpy(), _gate_oracle(gate, x), atol=1e-6)
    nonzero = (w > 0).sum(dim=2)
    expected = {"softmax": 5, "constant": 5, "topk": 2, "max": 1}[kind]
    assert bool((nonzero == expected).all())


def test_max_gate_picks_the_argmax_and_constant_ignores_the_input():
    torch.manual_seed(1)
    gate = Gate(4, 6, num_gates=2, kind="max").eval()
    x = torch.randn(100, 4)
    logits = np.einsum("bi,gie->gbe", x.numpy(), gate.weight.detach().numpy()) \
        + gate.bias.detach().numpy()[:, None, :]
    assert np.array_equal(gate(x).argmax(dim=2).numpy(), logits.argmax(axis=2))
    const = Gate(4, 6, num_gates=2, kind="constant").eval()
    with torch.no_grad():
        const.bias.copy_(torch.randn(2, 6))
    with torch.no_grad():
        a, b = const(torch.randn(7, 4)), const(100 * torch.randn(7, 4))
    assert torch.equal(a, b)
    bias = const.bias.detach().numpy()
    mixture = np.exp(bias) / np.exp(bias).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(a[:, 0].numpy(), mixture, atol=1e-6)
    assert "weight" not in dict(const.named_parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter_that_should_learn(kind):
    torch.manual_seed(2)
    layout = InputLayout(dense_dim=5, embeddings=((7, 3),))
    config = ModelConfig(arch="mmoe", num_experts=4, expert_hidden=(8,), expert_dim=4,
                         tower_hidden=(4,), gate=kind, gate_k=2)
    model = build_model(config, layout, 2).train()
    dense, cats = torch.randn(64, 5), torch.randint(0, 7, (64, 1))
    loss = model(dense, cats).pow(2).mean()
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("experts") and kind in ("topk", "max"):
            continue  # an expert no row chose gets no gradient in this batch; checked below
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    # The gate learns (straight-through for max), and the chosen experts get gradients.
    assert float(model.task_gate.bias.grad.abs().sum()) > 0
    assert float(model.experts[0].weights[0].grad.abs().sum()) > 0


def test_load_balance_loss_matches_its_formula_and_trains_the_gate():
    torch.manual_seed(3)
    gate = Gate(3, 4, num_gates=2, kind="topk", k=2).train()
    x = torch.randn(50, 3)
    gate(x)
    probs, chosen = gate.last_probs.detach().numpy(), gate.last_chosen.numpy()
    expected = np.mean([4 * np.sum(chosen[g].mean(axis=1) / 2 * probs[g].mean(axis=1))
                        for g in range(2)])
    module = torch.nn.ModuleList([gate])
    loss = load_balance_loss(module)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert gate.last_probs is None  # consumed
    loss.backward()
    assert float(gate.weight.grad.abs().sum()) > 0
    assert load_balance_loss(module) is None
    # Uniform use gives 1, one expert taking everything gives E.
    with torch.no_grad():
        gate.weight.zero_()
        gate.bias.copy_(torch.tensor([[9.0, 0, 0, 0]] * 2))
    gate = Gate(3, 4, num_gates=1, kind="max").train()
    with torch.no_grad():
        gate.weight.zero_()
        gate.bias.copy_(torch.tensor([[30.0, 0, 0, 0]]))
    gate(x)
    assert float(load_balance_loss(torch.nn.ModuleList([gate]))) == pytest.approx(4.0, rel=1e-4)


def test_gate_summary_reports_usage_of_sparse_gates():
    g = np.zeros((1, 4, 3))
    g[0, :, 0] = 1.0
    g[0, 3] = [0.5, 0.5, 0.0]
    s = gate_summary(g, ["t"])["t"]
    assert s["usage"] == pytest.approx([1.0, 0.25, 0.0])


# ------------------------------------------------------------------------------------ experts


@pytest.fixture(scope="module")
def spec():
    return parse_spec({
        "name": "fields", "keys": [{"name": "id", "dtype": "long"}],
        "features": [
            {"name": "a", "kind": "dense", "group": "money"},
            {"name": "b", "kind": "dense", "group": "money", "encoding": "pwl", "bins": 4},
            {"name": "c", "kind": "dense", "encoding": "quantile", "bins": 5,
             "embedding_dim": 2},
            {"name": "d", "kind": "categorical", "vocabulary": ["x", "y", "z"],
             "embedding_dim": 3, "group": "who"},
            {"name": "e", "kind": "categorical", "hash_buckets": 11, "embedding_dim": 2},
        ],
        "tasks": [{"name": "t1"}, {"name": "t2"}],
    })


def test_layout_columns_follow_the_encodings(spec):
    layout = InputLayout.from_spec(spec)
    # dense: a (1) + b (4 pwl); embeddings: d (3), e (2), then c's quantile bins (2)
    assert layout.dense_dim == 5
    assert layout.embeddings == ((4, 3), (11, 2), (6, 2))
    assert layout.field_columns(["money"]) == [0, 1, 2, 3, 4]
    assert layout.field_columns(["c"]) == [10, 11]
    assert layout.field_columns(["who", "e"]) == [5, 6, 7, 8, 9]
    with pytest.raises(ModelConfigError, match="neither a feature nor"):
        layout.field_columns(["nope"])


def test_field_split_experts_see_only_their_fields(spec):
    torch.manual_seed(4)
    layout = InputLayout.from_spec(spec)
    groups = ModelConfig(expert_layout=("2xmlp:8@money", "1xcross:2@who,c", "1xmlp"),
                         num_experts=4).expert_groups
    bank = ExpertSet(groups, layout, (8,), 4).eval()
    x = torch.randn(30, layout.input_dim)
    base = bank(x)
    for cols, unchanged, changed in (([0, 3], [2], [0, 1, 3]), ([6, 11], [0, 1], [2, 3])):
        y = x.clone()
        y[:, cols] += torch.randn(30, len(cols)) * 3
        out = bank(y)
        for e in unchanged:
            assert torch.equal(out[e], base[e]), e
        for e in changed:
            assert not torch.allclose(out[e], base[e]), e


def _mlp_ref(bank: ExpertBank, e: int, x: torch.Tensor) -> torch.Tensor:
    h = x
    for w, b in zip(bank.weights, bank.biases):
        h = torch.relu(h @ w[e] + b[e, 0])
    return h


def _cross_ref(bank: CrossBank, e: int, x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(x.shape[0], bank.out_dim)
    for r in range(x.shape[0]):  # one row at a time
        x0 = x[r]
        h = x0
        for layer in range(bank.cross_weights.shape[0]):
            h = x0 * (h @ bank.cross_weights[layer, e] + bank.cross_biases[layer, e, 0]) + h
        out[r] = torch.relu(h @ bank.proj_weight[e] + bank.proj_bias[e, 0])
    return out


def test_heterogeneous_bank_matches_a_loop_reference(spec):
    torch.manual_seed(5)
    layout = InputLayout.from_spec(spec)
    groups = ModelConfig(num_experts=6, expert_layout=(
        "2xmlp:16,8", "1xcross:3", "2xmlp:4@money,who", "1xcross@c")).expert_groups
    bank = ExpertSet(groups, layout, (8,), 5).eval()
    x = torch.randn(12, layout.input_dim)
    with torch.no_grad():
        out = bank(x)
        assert out.shape == (6, 12, 5)
        refs = []
        for group, sub in zip(groups, bank.banks):
            cols = layout.field_columns(group.fields) if group.fields else \
                list(range(layout.input_dim))
            xin = x[:, cols]
            for e in range(group.count):
                refs.append(_mlp_ref(sub, e, xin) if group.type == "mlp"
                            else _cross_ref(sub, e, xin))
    np.testing.assert_allclose(out.numpy(), torch.stack(refs).numpy(), atol=1e-5)
    assert [type(b).__name__ for b in bank.banks] == ["ExpertBank", "CrossBank", "ExpertBank",
                                                      "CrossBank"]
    assert bank.banks[0].weights[1].shape == (2, 16, 8)


@pytest.mark.parametrize("gate,k", [("topk", 2), ("max", 1)])
def test_sparse_scoring_equals_the_dense_path(gate, k):
    torch.manual_seed(6)
    layout = InputLayout(dense_dim=32, embeddings=())
    config = ModelConfig(num_experts=8, expert_hidden=(256,), expert_dim=64, gate=gate, gate_k=k)
    model = build_model(config, layout, 3).eval()
    assert model.sparse_scoring
    dense, cats = torch.randn(500, 32), torch.zeros(500, 0, dtype=torch.long)
    with torch.no_grad():
        sparse_logits, sparse_gates = model(dense, cats, return_gates=True)
        model.sparse_scoring = False
        logits, gates = model(dense, cats, return_gates=True)
    assert torch.equal(sparse_gates, gates)
    np.testing.assert_allclose(sparse_logits.numpy(), logits.numpy(), atol=1e-5)


def test_model_config_refuses_bad_gates_and_expert_layouts():
    with pytest.raises(ModelConfigError, match="gate must be one of"):
        ModelConfig(gate="argmax")
    with pytest.raises(ModelConfigError, match="gate_k"):
        ModelConfig(gate="topk", gate_k=9)
    with pytest.raises(ModelConfigError, match="declares 3 expert"):
        ModelConfig(num_experts=4, expert_layout=("3xmlp",))
    with pytest.raises(ModelConfigError, match="type must be one of"):
        ModelConfig(num_experts=2, expert_layout=("2xtree",))
    with pytest.raises(ModelConfigError, match="is not"):
        ModelConfig(num_experts=2, expert_layout=("two mlps",))
    with pytest.raises(ModelConfigError, match="one layer count"):
        ModelConfig(num_experts=2, expert_layout=("2xcross:2,3",))
    with pytest.raises(ModelConfigError, match="not 'ple'"):
        ModelConfig(arch="ple", num_experts=2, expert_layout=("2xmlp",))
    with pytest.raises(ModelConfigError, match="a string"):
        ModelConfig(num_experts=2, expert_layout="2xmlp")
    cfg = ModelConfig(num_experts=3, gate="topk", gate_k=3, expert_layout=["2xmlp:4", "1xcross"])
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ModelConfigError, match="neither a feature"):
        build_model(ModelConfig(num_experts=2, expert_layout=("2xmlp@zzz",)),
                    InputLayout.from_spec(load_spec("synth")), 3)


# ---------------------------------------------------------------------------------- encodings


def test_numeric_encodings_match_a_loop_oracle(spec):
    rng = np.random.default_rng(0)
    import pandas as pd

    frame = pd.DataFrame({"id": np.arange(400), "a": rng.normal(size=400),
                          "b": np.where(rng.random(400) < 0.5, 0.0, rng.exponential(size=400)),
                          "c": rng.normal(size=400), "d": rng.choice(["x", "y", "q"], 400),
                          "e": rng.choice(["u", "v"], 400)})
    enc = FeatureEncoder.fit(spec, frame)
    b_edges = np.quantile(frame["b"], np.linspace(0, 1, 5))
    c_edges = np.quantile(frame["c"], np.linspace(0, 1, 6))
    assert enc.stats["b"]["edges"] == pytest.approx(list(b_edges))
    assert enc.stats["c"]["edges"] == pytest.approx(list(c_edges))
    test = frame.iloc[:50].copy()
    test.loc[0, "b"], test.loc[1, "c"] = 1e9, -1e9  # beyond the training range
    dense, cats = enc.encode(test)
    assert dense.shape == (50, 5) and cats.shape == (50, 3)
    for r in range(50):
        x = float(test["b"].iloc[r])
        for t in range(4):
            lo, hi = b_edges[t], b_edges[t + 1]
            want = (1.0 if x >= hi else 0.0) if hi == lo else min(max((x - lo) / (hi - lo), 0), 1)
            assert float(dense[r, 1 + t]) == pytest.approx(want, abs=1e-6), (r, t)
        xc = float(test["c"].iloc[r])
        bin_ = sum(1 for edge in c_edges[1:-1] if xc >= edge)
        assert int(cats[r, 2]) == 1 + bin_


def test_encodings_and_experts_round_trip_through_the_artifact(tmp_path):
    synth = load_spec("synth")
    names = [f.name for f in synth.dense_features]
    dense = tuple(dataclasses.replace(f, encoding=("pwl", "quantile", "raw")[i % 3], bins=8,
                                      group="numbers" if i % 2 else None)
                  for i, f in enumerate(synth.dense_features))
    spec = dataclasses.replace(synth, features=dense + synth.categorical_features)
    frame = sample_frame(spec, 1500, seed=7)
    config = ModelConfig(num_experts=5, gate="max", expert_dim=4, tower_hidden=(4,),
                         expert_layout=(f"2xmlp:8@numbers,{names[0]}", "2xcross:1",
                                        "1xmlp:8@item_category"))
    result = train(frame, spec, config, TrainConfig(epochs=1, progress=False))
    saved = save_artifact(tmp_path / "m", result.model, config, spec, result.encoder)
    loaded = ModelArtifact.load(tmp_path / "m")
    assert loaded.model_config == config
    assert loaded.encoder.stats == result.encoder.stats
    assert "edges" in json.loads((tmp_path / "m" / art.NORMALIZATION).read_text())[names[0]]
    with torch.no_grad():
        dense_t, cats_t = result.encoder.encode(frame)
        direct = torch.sigmoid(result.model(dense_t, cats_t).double()).numpy()
    p, g = loaded.predict(frame, with_gates=True, batch_size=333)
    np.testing.assert_allclose(p, direct, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(p, saved.predict(frame, batch_size=333))
    assert set(np.unique(g)) <= {0.0, 1.0}  # max gate: one-hot
    # An encoding change in the data spec is refused.
    other = dataclasses.replace(spec, features=tuple(
        dataclasses.replace(f, bins=9) if f.name == names[0] else f for f in spec.features))
    with pytest.raises(art.SpecMismatch, match="bins"):
        loaded.check_spec(other)


def test_old_artifacts_without_the_new_keys_still_load(tmp_path):
    synth = load_spec("synth")
    frame = sample_frame(synth, 300, seed=1)
    config = ModelConfig(num_experts=2, expert_hidden=(4,), expert_dim=4, tower_hidden=(4,))
    torch.manual_seed(0)
    model = build_model(config, InputLayout.from_spec(synth), 3).eval()
    files = build_artifact_files(model, config, synth, FeatureEncoder.fit(synth, frame))
    cfg = json.loads(files[art.CONFIG])
    for key in ("gate", "gate_k", "expert_layout"):
        del cfg["model_config"][key]
    spec_raw = json.loads(files[art.SPEC])
    for f in spec_raw["features"]:
        for key in ("encoding", "bins", "embedding_dim") if f["kind"] == "dense" else ():
            del f[key]
    files[art.CONFIG], files[art.SPEC] = art._json_bytes(cfg), art._json_bytes(spec_raw)
    version = art.model_version_of("mmoe", files)
    files[art.VERSION] = (version + "\n").encode()
    files[art.MANIFEST] = art._json_bytes({"format": art.FORMAT, "model_version": version,
                                           "files": {n: art._sha256(files[n])
                                                     for n in art.CONTENT_FILES}})
    old = ModelArtifact.from_files(files)
    assert old.model_config == config
    np.testing.assert_allclose(old.predict(frame), ModelArtifact.from_files(
        build_artifact_files(model, config, synth, FeatureEncoder.fit(synth, frame))
    ).predict(frame), atol=0)


def test_bad_bin_edges_are_refused(spec):
    import pandas as pd

    frame = pd.DataFrame({"id": [1, 2, 3], "a": [1.0, 2, 3], "b": [0.0, 1, 2], "c": [3.0, 2, 1],
                          "d": ["x", "y", "z"], "e": ["u", "v", "w"]})
    stats = FeatureEncoder.fit(spec, frame).stats
    stats["b"] = dict(stats["b"], edges=stats["b"]["edges"][::-1])
    with pytest.raises(ModelConfigError, match="non-decreasing"):
        FeatureEncoder(spec, stats)
    del stats["b"]["edges"]
    with pytest.raises(ModelConfigError, match="bin edges"):
        FeatureEncoder(spec, stats)


def test_spec_validates_encoding_fields():
    base = {"name": "s", "keys": [{"name": "id"}], "tasks": [{"name": "t"}]}
    for feature, match in (({"encoding": "bucket"}, "encoding"), ({"bins": 1}, "bins"),
                           ({"bins": "8"}, "bins"), ({"embedding_dim": 0}, "embedding_dim"),
                           ({"group": "Bad Group"}, "group"), ({"group": "b"}, "also a feature")):
        raw = dict(base, features=[{"name": "a", "kind": "dense", **feature},
                                   {"name": "b", "kind": "dense"}])
        with pytest.raises(SpecError, match=match):
            parse_spec(raw)


# ------------------------------------------------------------------------------ trainer resume


def test_resume_from_checkpoint_ends_with_the_same_weights(tmp_path, capsys):
    synth = load_spec("synth")
    frame = sample_frame(synth, 800, seed=2)
    config = ModelConfig(num_experts=3, expert_hidden=(8,), expert_dim=4, tower_hidden=(4,),
                         gate="topk", gate_k=2, dropout=0.1)
    full = train(frame, synth, config, TrainConfig(epochs=4, patience=10, batch_size=128,
                                                   progress=False))
    ckpt = str(tmp_path / "ckpt")
    first = train(frame, synth, config, TrainConfig(epochs=2, patience=10, batch_size=128,
                                                    progress=False, checkpoint_dir=ckpt))
    assert first.epochs_run == 2
    rest = train(frame, synth, config, TrainConfig(epochs=4, patience=10, batch_size=128,
                                                   progress=True, checkpoint_dir=ckpt))
    err = capsys.readouterr().err
    assert "resumed from" in err and "epoch 3/4" in err and "epoch 1/4" not in err
    assert "val_auc click=" in err and "balance" in err
    assert rest.epochs_run == 4 and rest.best_epoch == full.best_epoch
    for (name, a), b in zip(full.model.state_dict().items(), rest.model.state_dict().values()):
        assert torch.equal(a, b), name
    other = dataclasses.replace(config, gate_k=3)
    with pytest.raises(TrainingError, match=r"different run \(model differ\)"):
        train(frame, synth, other, TrainConfig(epochs=5, batch_size=128, progress=False,
                                               checkpoint_dir=ckpt))
    changed = frame.copy()
    changed.loc[0, "user_activity"] = float(changed["user_activity"].max()) + 5.0  # one value
    with pytest.raises(TrainingError, match=r"different run \(data differ\)"):
        train(changed, synth, config, TrainConfig(epochs=5, patience=10, batch_size=128,
                                                  progress=False, checkpoint_dir=ckpt))
    with pytest.raises(TrainingError, match=r"\(weight_decay differ\)"):
        train(frame, synth, config, TrainConfig(epochs=5, patience=10, batch_size=128,
                                                weight_decay=1e-3, progress=False,
                                                checkpoint_dir=ckpt))
    (tmp_path / "ckpt" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="is unreadable"):
        train(frame, synth, config, TrainConfig(epochs=5, progress=False, checkpoint_dir=ckpt))
