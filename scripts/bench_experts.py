"""Scoring speed of expert banks (issue 13): homogeneous fused ExpertBank vs the same experts
declared as expert groups (ExpertSet) vs a per-expert Python loop, and heterogeneous / field-split
sets; and top-k / max scoring with and without computing only the chosen experts.

    PYTHONPATH=. python scripts/bench_experts.py

One thread, 8192 rows, best of 3 x 10 forward passes in inference mode. Expert banks are timed
with the row-blocked scoring path (ExpertBank.SCORING_ROW_BLOCK) and without it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mmoe_model.config import ModelConfig  # noqa: E402
from mmoe_model.features import InputLayout  # noqa: E402
from mmoe_model.layers import ExpertBank, ExpertSet  # noqa: E402
from mmoe_model.models import build_model  # noqa: E402
from schemas.spec import parse_spec  # noqa: E402

B, F = 8192, 64


def best_ms(fn, reps: int = 10) -> float:
    with torch.inference_mode():
        fn()
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            best = min(best, (time.perf_counter() - start) / reps)
    return best * 1e3


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = parse_spec({"name": "b", "keys": [{"name": "id"}], "tasks": [{"name": "t"}],
                       "features": [{"name": f"x{i}", "kind": "dense",
                                     "group": "left" if i < F // 2 else "right"}
                                    for i in range(F)]})
    layout = InputLayout.from_spec(spec)
    x = torch.randn(B, F)
    fused = ExpertBank(8, F, (64,), 32).eval()
    same = ExpertSet(ModelConfig(num_experts=8, expert_layout=("8xmlp:64",)).expert_groups,
                     layout, (64,), 32).eval()

    def loop() -> torch.Tensor:  # the naive way: one small MLP call per expert
        outs = []
        for e in range(8):
            h = x
            for w, b in zip(fused.weights, fused.biases):
                h = torch.relu(h @ w[e] + b[e])
            outs.append(h)
        return torch.stack(outs)

    rows = [("8 MLP experts 64->64->32, fused ExpertBank", lambda: fused(x)),
            ("same 8 experts as one ExpertSet group", lambda: same(x)),
            ("same 8 experts, per-expert Python loop", loop)]
    for layout_ in (("4xmlp:64", "4xmlp:128,64"), ("4xmlp:64@left", "4xmlp:64@right"),
                    ("6xmlp:64", "2xcross:2"), ("2xmlp:64", "2xmlp:128,64", "2xcross:1@left",
                                                "2xmlp:32@right")):
        bank = ExpertSet(ModelConfig(num_experts=8, expert_layout=layout_).expert_groups,
                         layout, (64,), 32).eval()
        rows.append((f"ExpertSet {list(layout_)}", lambda bank=bank: bank(x)))
    print("| experts | scored in 512-row blocks | in one block |")
    print("|---|---|---|")
    block = ExpertBank.SCORING_ROW_BLOCK
    for label, fn in rows:
        blocked = best_ms(fn)
        ExpertBank.SCORING_ROW_BLOCK = 1 << 62
        whole = best_ms(fn)
        ExpertBank.SCORING_ROW_BLOCK = block
        print(f"| {label} | {blocked:.1f} ms | {whole:.1f} ms |", flush=True)
    dense, cats = torch.randn(B, F), torch.zeros(B, 0, dtype=torch.long)
    for hidden, d in (((64,), 32), ((256, 128), 64)):
        for gate, k in (("softmax", 2), ("topk", 2), ("max", 1)):
            model = build_model(ModelConfig(num_experts=8, expert_hidden=hidden, expert_dim=d,
                                            gate=gate, gate_k=k),
                                InputLayout(dense_dim=F, embeddings=()), 2).eval()
            default = model.sparse_scoring
            model.sparse_scoring = False
            full = best_ms(lambda: model(dense, cats))
            sparse = "–"
            if gate != "softmax":
                model.sparse_scoring = True
                sparse = f"{best_ms(lambda: model(dense, cats)):.1f} ms"
            print(f"| MMoE 8 experts {hidden}->{d}, gate {gate} | all experts {full:.1f} ms | "
                  f"chosen only {sparse} | default: "
                  f"{'chosen only' if default else 'all experts'} |", flush=True)


if __name__ == "__main__":
    main()
