"""Train job: the features and labels tables of a ds range → a model artifact directory.

No Spark: the partitions are read with ``pyarrow.dataset`` (one ds at a time, only the columns the
model needs), joined with their labels on the spec's keys within each ds, and handed to
``mmoe_model.trainer``. The artifact is written with ``mmoe_model.artifact.save_artifact``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from jobs.core.config import JobConfig
from jobs.core.errors import InputError, MissingInputError
from jobs.core.manifest import RunRecord
from jobs.core.tables import DatasetTables, Table
from jobs.core.warehouse import (
    Warehouse,
    date_range,
    replacing,
)
from jobs.validate.feature_drift import PROFILE_KEY, training_profile
from mmoe_model.archs import ARCHS
from mmoe_model.artifact import (
    MANIFEST,
    ModelArtifact,
    build_artifact_files,
    write_artifact_files,
)
from mmoe_model.errors import CheckpointMismatch, MmoeModelError
from mmoe_model.trainer import discard_checkpoint, train
from schemas.spec import DatasetSpec, load_spec

log = logging.getLogger(__name__)



class UnreadablePartition(MissingInputError):
    """A partition whose files cannot be read (truncated, not parquet, schemas disagree)."""


def _read_partition(source: Table, ds: str, columns: list[str]) -> pa.Table:
    """One partition's data files, only ``columns`` (checked by the table)."""
    try:
        return source.read_arrow(ds, columns=columns, error=InputError)
    except ValueError as exc:
        raise UnreadablePartition(f"cannot read {source.table} ds={ds} at {source.where(ds)}: "
                                  f"{exc}") from None


def load_training_frame(tb: DatasetTables, spec: DatasetSpec, days: list[str],
                        skipped: list[str] | None = None) -> tuple[pd.DataFrame, int]:
    """Features joined with labels for every ds in ``days``: ``(frame, feature rows read)``.

    Raises :class:`MissingInputError` naming the first ds/table without a partition. A day
    whose files cannot be read is skipped (one corrupt day never blocks training on the
    others) and described (``ds=D: cannot read ... at PATH: why``) in ``skipped`` when given;
    without ``skipped`` it is an error. When every day is unreadable, the first one's error is
    raised.
    """
    for ds in days:  # check everything first: fail before reading gigabytes
        for table in ("features", "labels"):
            if not tb[table].exists(ds):
                raise MissingInputError(f"{spec.name}: no {table} partition for ds={ds} "
                                        f"({tb[table].where(ds)})")
    keys = spec.key_names
    feature_cols = keys + spec.feature_names
    label_cols = keys + spec.task_names
    frames, rows_read, first_error = [], 0, None
    for ds in days:
        try:
            features = _read_partition(tb["features"], ds, feature_cols)
            labels = _read_partition(tb["labels"], ds, label_cols)
        except UnreadablePartition as exc:
            if skipped is None:
                raise
            skipped.append(f"ds={ds}: {exc}")
            first_error = first_error or exc
            log.warning("skipping ds=%s: %s", ds, exc)
            continue
        rows_read += features.num_rows
        # Keys are unique within a ds; joining per ds keeps a key reused on another day apart.
        joined = features.join(labels, keys=keys, join_type="inner")
        frames.append(joined.to_pandas())
        log.info("ds=%s: %d feature rows, %d labelled", ds, features.num_rows, joined.num_rows)
    if not frames:
        raise first_error
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    # Arrow joins do not keep row order; sort so training sees the same rows in the same order
    # on every run (the shuffle is seeded, the split hashes keys).
    frame = frame.sort_values(keys, kind="stable", ignore_index=True)
    return frame, rows_read


@dataclass
class TrainJobResult:
    model_version: str
    model_sha256: str
    artifact: Path
    rows_read: int
    train_rows: int
    val_rows: int
    details: dict[str, Any] = field(default_factory=dict)

    def record(self) -> RunRecord:
        return RunRecord(input_rows=self.rows_read, output_rows=self.train_rows + self.val_rows,
                         model_version=self.model_version, model_sha256=self.model_sha256,
                         outputs={"artifact": str(self.artifact)}, details=dict(self.details))


def train_model(cfg: JobConfig, dataset: str, arch: str, start: str, end: str, out: Path,
                epochs: int | None, seed: int, *, resume: bool = True,
                checkpoint_dir: Path | None = None, progress: bool = True) -> TrainJobResult:
    """Train ``arch`` on ``dataset``'s ds range [start, end] and write the artifact to ``out``.

    ``out`` may be a new directory, an empty one or an existing artifact (replaced whole, via
    :func:`jobs.core.warehouse.replacing`; the old version is recorded in
    ``details["replaced_model_version"]``); any other non-empty directory is refused.

    After every epoch the training state is checkpointed to ``checkpoint_dir`` (default:
    :meth:`Warehouse.train_checkpoint` of ``out``). An interrupted run, rerun with the same
    arguments, continues after its last finished epoch (``resume``; a checkpoint of different
    settings or data is refused); ``resume=False`` discards it. The checkpoint is removed once
    the artifact is written.
    """
    if arch not in ARCHS:
        raise InputError(f"--arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if epochs is not None and epochs < 1:
        raise InputError(f"--epochs must be >= 1, got {epochs}")
    days = date_range(start, end)
    spec = load_spec(dataset)
    out = Path(out)
    replaced = _check_out(out, MANIFEST)
    model_config = cfg.training.model_config(arch)
    wh = Warehouse(cfg.warehouse)
    checkpoint = Path(checkpoint_dir) if checkpoint_dir is not None \
        else wh.train_checkpoint(dataset, out)
    if not resume:
        discard_checkpoint(checkpoint)
    train_config = replace(cfg.training.train_config(epochs, seed),
                           checkpoint_dir=str(checkpoint), resume=resume,
                           progress=progress)  # False: no per-epoch lines (the demo)

    skipped: list[str] = []
    tables = DatasetTables(cfg, spec.name)
    tables.preflight(inputs=("features", "labels"))
    frame, rows_read = load_training_frame(tables, spec, days, skipped)
    if len(frame) == 0:
        raise MissingInputError(f"{dataset}: no feature row of ds {start}..{end} has labels",
                                details={"input_rows": rows_read})

    try:
        result = train(frame, spec, model_config, train_config)
    except CheckpointMismatch as exc:
        raise InputError(f"{exc}; rerun with --no-resume to start over") from None
    if replaced is not None:
        try:
            replaced = ModelArtifact.load(out).model_version
        except MmoeModelError:
            replaced = "unreadable"
    files = build_artifact_files(result.model, model_config, spec, result.encoder,
                                 {"dataset": dataset, "start": start, "end": end, "seed": seed,
                                  "arch": arch, **result.summary(),
                                  PROFILE_KEY: training_profile(spec, cfg.drift, frame)})
    with replacing(out) as staging:
        write_artifact_files(staging, files)
    artifact = ModelArtifact.from_files(files)
    discard_checkpoint(checkpoint)  # the artifact holds the result; a rerun trains afresh
    details = {
        "arch": arch, "start": start, "end": end, "seed": seed,
        "train_rows": result.train_rows, "val_rows": result.val_rows,
        "rows_without_labels": rows_read - len(frame),
        "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early, "val_auc": result.val_auc,
        "skipped_partitions": skipped,   # unreadable days left out of the range (path, cause)
        "resumed_after_epoch": result.resumed_after_epoch,  # 0: trained from scratch
        "epoch_seconds": [m.get("seconds") for m in result.metrics],  # not in the artifact
    }
    if replaced is not None:
        details["replaced_model_version"] = replaced
        log.warning("replaced the artifact at %s (was %s)", out, replaced)
    return TrainJobResult(artifact.model_version, artifact.sha256, out.resolve(), rows_read,
                          result.train_rows, result.val_rows, details)


def _check_out(out: Path, manifest_name: str) -> str | None:
    """Refuse an ``--out`` we must not clobber; return "artifact" when one will be replaced."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    if (out / manifest_name).is_file():
        return "artifact"
    if any(out.iterdir()):
        raise InputError(f"--out {out} is a non-empty directory that is not a model artifact")
    return None
