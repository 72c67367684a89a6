"""Tiny untrained models for the registry, backfill and DAG tests (built in well under a
second; what they predict does not matter, only that scoring is real)."""

from __future__ import annotations

from pathlib import Path


def tiny_model(out: Path, seed: int, dataset: str = "synth", metrics: dict | None = None,
               config=None) -> Path:
    """An artifact of a tiny MMoE for ``dataset``; another ``seed`` gives another version;
    ``metrics``: what its metrics.json records (as training writes it: range, epochs...);
    ``config``: another ModelConfig instead of the tiny one."""
    import torch

    from mmoe_model.artifact import save_artifact
    from mmoe_model.features import FeatureEncoder, InputLayout
    from mmoe_model.models import ModelConfig, build_model
    from mmoe_model.sample import sample_frame
    from schemas import load_spec

    spec = load_spec(dataset)
    torch.manual_seed(seed)
    config = config or ModelConfig(arch="mmoe", num_experts=2, expert_hidden=(8,),
                                   expert_dim=4, tower_hidden=(4,))
    model = build_model(config, InputLayout.from_spec(spec), len(spec.tasks)).eval()
    encoder = FeatureEncoder.fit(spec, sample_frame(spec, 200, seed=seed))
    save_artifact(out, model, config, spec, encoder, metrics)
    return out
