"""`mmoe train`: fit a model on a ds range and save an artifact."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from jobs.cli._app import app, check_choice, load_dataset_spec, run_command
from jobs.core.config import JobConfig
from jobs.core.errors import InputError
from jobs.core.warehouse import date_range, local_path
from mmoe_model.archs import ARCHS
from mmoe_model.config import GATE_KINDS, ExpertGroup
from mmoe_model.errors import ModelConfigError


def model_options(model, gate: str | None, gate_k: int | None,
                  expert_groups: list[str] | None):
    """The config's ModelConfig with ``train``'s model options applied (validated there)."""
    changes: dict[str, object] = {}
    if gate is not None:
        changes["gate"] = check_choice(gate, GATE_KINDS, "--gate")
    if gate_k is not None:
        changes["gate_k"] = gate_k
    if gate_k is not None and changes.get("gate", model.gate) != "topk":
        raise InputError("--gate-k applies to topk gates only (add --gate topk)")
    try:
        if expert_groups:
            changes["expert_layout"] = tuple(expert_groups)
            changes["num_experts"] = sum(ExpertGroup.parse(g).count for g in expert_groups)
        return replace(model, **changes) if changes else model
    except ModelConfigError as exc:
        raise InputError(str(exc)) from None


@app.command(short_help="Train a model on a ds range.")
def train(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", metavar="NAME", help="Dataset spec name (schemas/specs/NAME.yaml)."),
    arch: str = typer.Option(..., "--arch", metavar="ARCH", help=f"One of: {', '.join(ARCHS)}."),
    start: str = typer.Option(..., "--start", metavar="DATE", help="First training ds YYYY-MM-DD."),
    end: str = typer.Option(..., "--end", metavar="DATE", help="Last training ds YYYY-MM-DD (inclusive)."),
    out: Path = typer.Option(..., "--out", metavar="DIR", help="Artifact directory to write."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, metavar="N",
                                         help="Training epochs (default: the config's "
                                              "training.epochs)."),
    seed: int = typer.Option(0, "--seed", metavar="S",
                             help="Random seed of the initial weights and the shuffling."),
    gate: Optional[str] = typer.Option(None, "--gate", metavar="KIND",
                                       help="Gate kind: softmax, topk, max or constant "
                                            "(default: the config's training.gate)."),
    gate_k: Optional[int] = typer.Option(None, "--gate-k", min=1, metavar="K",
                                         help="Experts a topk gate keeps per row "
                                              "(default: the config's training.gate_k)."),
    expert_group: Optional[list[str]] = typer.Option(
        None, "--expert-group", metavar="GROUP",
        help="Repeatable: one expert group of a heterogeneous / field-split bank, e.g. "
             "'6xmlp' '2xcross:2' or '2xmlp:64@work' (replaces training.expert_layout; "
             "num_experts becomes their total)."),
    resume: bool = typer.Option(True, "--resume/--no-resume",
                                help="Continue an interrupted run of the same --out after its "
                                     "last finished epoch (default), or start over."),
    checkpoint_dir: Optional[Path] = typer.Option(
        None, "--checkpoint-dir", metavar="DIR",
        help="Where the per-epoch checkpoint goes (default: under the warehouse's "
             "<dataset>/_checkpoints/, keyed on --out); removed once the artifact is written."),
) -> None:
    """Train a model on the features/labels tables of a ds range and save an artifact."""
    def body(cfg: JobConfig, run_id: str):
        check_choice(arch, ARCHS, "--arch")
        cfg.training.model = model_options(cfg.training.model, gate, gate_k, expert_group)
        date_range(start, end)
        load_dataset_spec(dataset)
        from jobs.train.stage import train_model  # deferred: torch (CLI start-up)

        return train_model(cfg, dataset, arch, start, end, local_path(out, "--out"), epochs, seed,
                           resume=resume, checkpoint_dir=None if checkpoint_dir is None
                           else local_path(checkpoint_dir, "--checkpoint-dir"))

    run_command(ctx, "train", dataset, end, body)
