"""The training wrapper: it owns the losses, the optimiser, the split and early stopping.

Models only produce logits; here each task gets a binary cross-entropy, weighted by
``task_weights`` (default 1.0) and averaged: ``loss = sum_t w_t * BCE_t / sum_t w_t``. Sparse
gates (``topk``, ``max``) add ``balance_weight`` times their load-balancing loss
(:func:`load_balance_loss`). Adam, shuffled mini-batches, early stopping on the mean validation
AUC over tasks (the best epoch's weights are restored). Runs on CUDA when available unless
``device`` says otherwise.

Progress: a tqdm bar per epoch and, with ``progress``, one line per epoch on stderr (losses,
validation AUC per task). With ``checkpoint_dir`` the state after every epoch (weights, Adam,
RNGs, early-stopping bookkeeping) is written to ``checkpoint_dir/last.pt``; a later run with
the same configuration and ``resume`` continues after that epoch and ends with the same weights
as an uninterrupted run.

Reproducibility: the validation split is a pure function of the key columns (a row always lands
in the same split, whatever the seed, the row order or the ds range), and ``seed`` fixes torch
and numpy before the model is built, so two runs on the same data give identical weights.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from tqdm import tqdm

from mmoe_model.config import ModelConfig, TrainConfig
from mmoe_model.errors import CheckpointMismatch, ModelConfigError, TrainingError
from mmoe_model.features import FeatureEncoder, splitmix64
from mmoe_model.layers import Gate
from mmoe_model.models import MultiTaskModel, build_model
from schemas.spec import DatasetSpec

log = logging.getLogger(__name__)

_SPLIT_SALT = np.uint64(0x5EED_5917_7A11_0001)  # keeps the split independent of feature hashes


@dataclass
class TrainResult:
    model: MultiTaskModel  # on CPU, eval mode, best epoch's weights
    encoder: FeatureEncoder
    model_config: ModelConfig
    task_names: list[str]
    metrics: list[dict[str, Any]]  # one dict per epoch run
    best_epoch: int  # 1-based; the last epoch when there is no validation set
    val_auc: dict[str, float | None]  # per task, at the best epoch (None: no val set / one class)
    train_rows: int
    val_rows: int
    stopped_early: bool
    resumed_after_epoch: int = 0  # > 0: the run continued from a checkpoint written then

    @property
    def epochs_run(self) -> int:
        return len(self.metrics)

    def summary(self) -> dict[str, Any]:
        """What an artifact's metrics.json keeps."""
        return {
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "stopped_early": self.stopped_early,
            "train_rows": self.train_rows,
            "val_rows": self.val_rows,
            "val_auc": self.val_auc,
            # Without the wall-clock seconds: metrics.json is checksummed, and the same training
            # must give the same artifact checksum (the job's manifest keeps the seconds).
            "epochs": [{k: v for k, v in m.items() if k not in WALL_CLOCK} for m in self.metrics],
        }


WALL_CLOCK = ("seconds",)  # per-epoch facts that differ between two identical trainings


def validation_mask(keys: pd.DataFrame, fraction: float) -> np.ndarray:
    """True for the rows of the validation split: ``splitmix64`` of the key columns, mapped to
    [0, 1), below ``fraction``. Deterministic per key, independent of row order and seed."""
    h = np.full(len(keys), _SPLIT_SALT, dtype=np.uint64)
    for name in keys.columns:
        col = keys[name]
        if pd.api.types.is_integer_dtype(col.dtype):
            values = col.to_numpy(dtype=np.int64).view(np.uint64)
        else:
            values = pd.util.hash_array(col.to_numpy(dtype=object))
        h = splitmix64(h ^ splitmix64(values))
    uniform = (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)
    return uniform < fraction


def _labels_matrix(frame: pd.DataFrame, labels: Any, task_names: Sequence[str]) -> np.ndarray:
    if labels is None:
        missing = [t for t in task_names if t not in frame.columns]
        if missing:
            raise TrainingError(f"label column(s) {missing} missing from the training frame")
        labels = frame[list(task_names)]
    if isinstance(labels, pd.DataFrame):
        missing = [t for t in task_names if t not in labels.columns]
        if missing:
            raise TrainingError(f"label column(s) {missing} missing from the labels frame")
        labels = labels[list(task_names)]
        if labels.isna().to_numpy().any():
            bad = [t for t in task_names if labels[t].isna().any()]
            raise TrainingError(f"label column(s) {bad} contain nulls")
        y = labels.to_numpy(dtype=np.float32)
    else:
        y = np.asarray(labels, dtype=np.float32)
    if y.shape != (len(frame), len(task_names)):
        raise TrainingError(f"labels must be [{len(frame)}, {len(task_names)}], "
                            f"got {list(y.shape)}")
    not_binary = ~((y == 0) | (y == 1))
    if not_binary.any():
        task = task_names[int(np.nonzero(not_binary.any(axis=0))[0][0])]
        raise TrainingError(f"labels of task {task!r} must be 0/1 "
                            f"({int(not_binary.sum())} other value(s))")
    return y


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _weighted_bce(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    per_task = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(dim=0)  # [T]
    return (per_task * weights).sum() / weights.sum()


def load_balance_loss(model: torch.nn.Module) -> torch.Tensor | None:
    """The Switch Transformer load-balancing loss (Fedus et al. 2021) of the sparse gates that
    ran in the last training forward pass, averaged over gates, and those gates' stash cleared.

    Per gate row ``g``: ``E * sum_e f_e * P_e``, ``f_e`` the fraction of (row, choice) slots that
    went to expert ``e`` and ``P_e`` its mean softmax probability over the batch. It is 1 when
    the experts are used uniformly and grows to ``E`` when one expert takes everything; only
    ``P`` carries gradient. None when no sparse gate ran.
    """
    terms = []
    for gate in model.modules():
        if isinstance(gate, Gate) and gate.last_probs is not None:
            probs, chosen = gate.last_probs, gate.last_chosen       # [G, E, B] each
            f = chosen.mean(dim=2) / gate.k                         # [G, E], rows sum to 1
            p = probs.mean(dim=2)                                   # [G, E]
            terms.append((gate.num_experts * (f * p).sum(dim=1)).mean())
            gate.last_probs = gate.last_chosen = None
    return torch.stack(terms).mean() if terms else None


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if y.size == 0 or y.min() == y.max():  # one class only: AUC undefined
        return None
    return float(roc_auc_score(y, p))


@torch.no_grad()
def _evaluate(model: MultiTaskModel, dense: torch.Tensor, cats: torch.Tensor, y: torch.Tensor,
              weights: torch.Tensor, batch_size: int, device: torch.device,
              task_names: Sequence[str]) -> tuple[float, dict[str, float | None]]:
    model.eval()
    chunks = []
    for start in range(0, dense.shape[0], batch_size):
        stop = start + batch_size
        chunks.append(model(dense[start:stop].to(device), cats[start:stop].to(device)).cpu())
    logits = torch.cat(chunks)
    loss = float(_weighted_bce(logits, y, weights.cpu()))
    probs = torch.sigmoid(logits).numpy()
    y_np = y.numpy()
    aucs = {t: _auc(y_np[:, i], probs[:, i]) for i, t in enumerate(task_names)}
    return loss, aucs


def _progress_line(entry: Mapping[str, Any], epochs: int) -> str:
    parts = [f"epoch {entry['epoch']}/{epochs}", f"train_loss {entry['train_loss']:.4f}"]
    if "balance_loss" in entry:
        parts.append(f"balance {entry['balance_loss']:.3f}")
    if entry.get("val_loss") is not None:
        parts.append(f"val_loss {entry['val_loss']:.4f}")
        aucs = " ".join(f"{t}={a:.4f}" if a is not None else f"{t}=n/a"
                        for t, a in entry["val_auc"].items())
        parts.append(f"val_auc {aucs}")
    parts.append(f"{entry['seconds']:.1f}s")
    return " | ".join(parts)


def _data_digest(dense: torch.Tensor, cats: torch.Tensor, labels: np.ndarray,
                 is_val: np.ndarray) -> str:
    """SHA-256 of the encoded inputs, labels and split: a checkpoint resumes only on the data
    it was trained on."""
    h = hashlib.sha256()
    for part in (dense.numpy(), cats.numpy(), np.asarray(labels), np.asarray(is_val)):
        h.update(str(part.shape).encode())
        h.update(np.ascontiguousarray(part).tobytes())
    return h.hexdigest()


CHECKPOINT = "last.pt"


def discard_checkpoint(checkpoint_dir: str | Path) -> None:
    """Delete the checkpoint :func:`train` keeps in ``checkpoint_dir`` (and the directory, if
    that leaves it empty); other files there are never touched."""
    directory = Path(checkpoint_dir)
    (directory / CHECKPOINT).unlink(missing_ok=True)
    # A writer killed mid-save leaves its temp file (see _save_checkpoint): ours too.
    for partial in directory.glob(f".{CHECKPOINT}.*.tmp"):
        partial.unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:  # absent, or holds something that is not ours
        pass


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically (temp file + rename), so a crash mid-write keeps the previous one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(frame: pd.DataFrame, spec: DatasetSpec, model_config: ModelConfig,
          config: TrainConfig | None = None, labels: Any = None) -> TrainResult:
    """Train ``model_config.arch`` on ``frame`` (feature columns of ``spec``, its key columns and,
    when ``labels`` is None, one 0/1 column per task; else ``labels`` is a [N, T] array or a frame
    with the task columns, aligned with ``frame``)."""
    config = config or TrainConfig()
    if config.num_threads is None or torch.device(config.device or "cpu").type != "cpu":
        return _train(frame, spec, model_config, config, labels)
    if config.num_threads < 1:
        raise ModelConfigError(f"num_threads must be >= 1, got {config.num_threads}")
    # Small-batch training is dispatch-bound; on a busy machine OpenMP barriers across threads
    # cost more than the maths, so callers may pin the thread count (restored afterwards).
    previous = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        return _train(frame, spec, model_config, config, labels)
    finally:
        torch.set_num_threads(previous)


def _train(frame: pd.DataFrame, spec: DatasetSpec, model_config: ModelConfig,
           config: TrainConfig, labels: Any) -> TrainResult:
    task_names = spec.task_names
    config.validate(task_names)
    if len(frame) == 0:
        raise TrainingError("no rows to train on")
    y_all = _labels_matrix(frame, labels, task_names)
    missing_keys = [k for k in spec.key_names if k not in frame.columns]
    if missing_keys:
        raise TrainingError(f"key column(s) {missing_keys} missing from the training frame")

    is_val = (validation_mask(frame[spec.key_names], config.validation_fraction)
              if config.validation_fraction > 0 else np.zeros(len(frame), dtype=bool))
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if train_idx.size == 0:
        raise TrainingError(f"all {len(frame)} rows fell into the validation split")

    # Normalisation statistics come from the training split only, like the weights.
    encoder = FeatureEncoder.fit(spec, frame.iloc[train_idx])
    dense_all, cats_all = encoder.encode(frame)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tr_idx_t, va_idx_t = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    dense_tr, cats_tr = dense_all[tr_idx_t].to(device), cats_all[tr_idx_t].to(device)
    y_tr = torch.from_numpy(y_all[train_idx]).to(device)
    dense_va, cats_va = dense_all[va_idx_t], cats_all[va_idx_t]
    y_va = torch.from_numpy(y_all[val_idx])
    weights = torch.tensor([float(config.task_weights.get(t, 1.0)) for t in task_names],
                           device=device)

    _seed_everything(config.seed)
    model = build_model(model_config, encoder.layout, len(task_names)).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate,
                                 weight_decay=config.weight_decay)
    shuffle = torch.Generator().manual_seed(config.seed)

    metrics: list[dict[str, Any]] = []
    best_score, best_epoch, best_state = -math.inf, 0, None
    best_auc: dict[str, float | None] = {t: None for t in task_names}
    stale, stopped_early = 0, False
    n_train = train_idx.size
    batches = math.ceil(n_train / config.batch_size)
    first_epoch = 1
    ckpt_path = Path(config.checkpoint_dir) / CHECKPOINT if config.checkpoint_dir else None
    # Everything that shapes the epochs after a resume except ``epochs`` (a resumed run may
    # train longer) and ``patience``; the data enter as a digest of the encoded inputs.
    fingerprint = {"model": model_config.to_dict(), "seed": config.seed,
                   "batch_size": config.batch_size, "learning_rate": config.learning_rate,
                   "weight_decay": config.weight_decay, "balance_weight": config.balance_weight,
                   "task_weights": {t: float(config.task_weights.get(t, 1.0)) for t in task_names},
                   "train_rows": int(n_train), "val_rows": int(val_idx.size)}
    if ckpt_path is not None:
        fingerprint["data"] = _data_digest(dense_all, cats_all, y_all, is_val)
    resumed_after = 0
    if ckpt_path is not None and config.resume and ckpt_path.is_file():
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or not a checkpoint: say so, never guess
            raise CheckpointMismatch(f"checkpoint {ckpt_path} is unreadable "
                                     f"({type(exc).__name__})") from None
        if ckpt.get("fingerprint") != fingerprint:
            changed = sorted(k for k in fingerprint
                             if (ckpt.get("fingerprint") or {}).get(k) != fingerprint[k])
            raise CheckpointMismatch(f"checkpoint {ckpt_path} was written by a different run "
                                     f"({', '.join(changed)} differ)")
        model.load_state_dict(ckpt["model"])
        optimiser.load_state_dict(ckpt["optimiser"])
        shuffle.set_state(ckpt["shuffle"])
        torch.set_rng_state(ckpt["torch_rng"])
        metrics = list(ckpt["metrics"])
        best_score, best_epoch, stale = ckpt["best_score"], ckpt["best_epoch"], ckpt["stale"]
        best_state = ckpt["best_state"]
        best_auc = dict(ckpt["best_auc"])
        stopped_early = bool(ckpt["stopped_early"])
        first_epoch = len(metrics) + 1
        resumed_after = len(metrics)
        log.info("resumed from %s after epoch %d", ckpt_path, len(metrics))
        if config.progress:
            print(f"resumed from {ckpt_path} after epoch {len(metrics)}", file=sys.stderr)
    for epoch in range(first_epoch, config.epochs + 1 if not stopped_early else first_epoch):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(n_train, generator=shuffle).to(device)
        total, total_balance = 0.0, 0.0
        bar = tqdm(range(batches), desc=f"{model_config.arch} epoch {epoch}/{config.epochs}",
                   file=sys.stderr, leave=False,
                   disable=None if config.progress else True)  # None: off when not a TTY
        for b in bar:
            rows = order[b * config.batch_size:(b + 1) * config.batch_size]
            loss = _weighted_bce(model(dense_tr[rows], cats_tr[rows]), y_tr[rows], weights)
            balance = load_balance_loss(model)
            objective = loss if balance is None or config.balance_weight == 0 \
                else loss + config.balance_weight * balance
            optimiser.zero_grad(set_to_none=True)
            objective.backward()
            optimiser.step()
            batch_loss = loss.detach().item()
            total += batch_loss * rows.numel()
            if balance is not None:
                total_balance += balance.detach().item() * rows.numel()
            if b % 20 == 0:
                bar.set_postfix(loss=f"{batch_loss:.4f}")
        bar.close()
        entry: dict[str, Any] = {"epoch": epoch, "train_loss": total / n_train}
        if total_balance:
            entry["balance_loss"] = total_balance / n_train
        if val_idx.size:
            val_loss, aucs = _evaluate(model, dense_va, cats_va, y_va, weights,
                                       config.eval_batch_size, device, task_names)
            known = [a for a in aucs.values() if a is not None]
            mean_auc = float(np.mean(known)) if known else None
            entry.update(val_loss=val_loss, val_auc=aucs, mean_val_auc=mean_auc)
            # No task with both classes in validation: fall back to the validation loss.
            score = mean_auc if mean_auc is not None else -val_loss
        else:
            entry.update(val_loss=None, val_auc={t: None for t in task_names}, mean_val_auc=None)
            score = float(epoch)  # no validation: the last epoch is the best
        entry["seconds"] = round(time.perf_counter() - started, 3)
        metrics.append(entry)
        log.info("epoch %d: %s", epoch, {k: v for k, v in entry.items() if k != "epoch"})
        if config.progress:
            print(_progress_line(entry, config.epochs), file=sys.stderr, flush=True)
        if score > best_score + 1e-7:
            best_score, best_epoch, stale = score, epoch, 0
            best_auc = dict(entry["val_auc"])
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= max(1, config.patience) and epoch < config.epochs:
                stopped_early = True
        if ckpt_path is not None:
            _save_checkpoint(ckpt_path, {
                "fingerprint": fingerprint, "model": model.state_dict(),
                "optimiser": optimiser.state_dict(), "shuffle": shuffle.get_state(),
                "torch_rng": torch.get_rng_state(), "metrics": metrics,
                "best_score": best_score, "best_epoch": best_epoch, "stale": stale,
                "best_state": best_state, "best_auc": best_auc, "stopped_early": stopped_early})
        if stopped_early:
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    model = model.cpu().eval()
    return TrainResult(model=model, encoder=encoder, model_config=model_config,
                       task_names=list(task_names), metrics=metrics, best_epoch=best_epoch,
                       val_auc=best_auc, train_rows=int(n_train), val_rows=int(val_idx.size),
                       stopped_early=stopped_early, resumed_after_epoch=resumed_after)
