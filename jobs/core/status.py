"""The typed hand-offs between stages that live in the warehouse as small JSON files.

- :class:`ValidationStatus`: ``validation/ds=D/status.json``, the validation decision of a ds.
  Written by the validate stage (:func:`write_validation_status`), read by score, backfill and
  validation's own reuse check (:func:`read_validation_status`).
- :class:`ScoreStamp`: ``predictions/ds=D/model_version=V/_scored.json``, what a predictions
  partition was scored from (model checksum, features fingerprint, gates, precision). Written by the score stage (:func:`write_score_stamp`), read by the
  backfill's skip check (:func:`read_score_stamp`).

One reader and one writer each; nobody else opens these files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from jobs.core.warehouse import SCORE_STAMP, Warehouse, read_json, write_json

SCORABLE = ("passed", "quarantined")


def _known(cls, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class ValidationStatus:
    status: str                      # passed | quarantined | failed
    dataset: str
    ds: str
    input_rows: int = 0
    passed_rows: int = 0
    quarantined_rows: int = 0
    message: str = ""
    reasons: dict[str, int] = field(default_factory=dict)
    failed_rules: list[str] = field(default_factory=list)
    result_json: str | None = None
    data_docs: str | None = None
    report: str | None = None
    quarantine: str | None = None
    validated_at: str | None = None
    run_id: str | None = None
    spark_jobs: int | None = None
    # what the decision was made on: None means "unknown", never reusable
    features_fingerprint: list | None = None
    row_count_bounds: dict[str, Any] | None = None
    skipped_partitions: list[str] = field(default_factory=list)

    @property
    def scorable(self) -> bool:
        return self.status in SCORABLE

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ValidationStatus":
        data = _known(cls, data)
        for name in ("input_rows", "passed_rows", "quarantined_rows"):
            data[name] = int(data.get(name) or 0)
        data["reasons"] = data.get("reasons") or {}
        data["failed_rules"] = data.get("failed_rules") or []
        data["skipped_partitions"] = data.get("skipped_partitions") or []
        return cls(**data)


def read_validation_status(wh: Warehouse, dataset: str, ds: str) -> ValidationStatus | None:
    """The decision of ``ds``, or None when it was never validated (or is being validated).
    ``ValueError`` when the file exists but cannot be read."""
    data = read_json(wh.status_path(dataset, ds))
    return None if data is None else ValidationStatus.from_json(data)


def write_validation_status(wh: Warehouse, status: ValidationStatus) -> Path:
    return write_json(wh.status_path(status.dataset, status.ds), asdict(status))


@dataclass(frozen=True)
class ScoreStamp:
    model_version: str
    model_sha256: str
    features_fingerprint: list
    with_gates: bool = False
    rows: int = 0
    scored_at: str | None = None
    # scoring.precision of the model pass; stamps written before it existed were all fp32
    precision: str = "fp32"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ScoreStamp":
        data = _known(cls, data)
        data["precision"] = data.get("precision") or "fp32"
        return cls(**data)


def read_score_stamp(wh: Warehouse, dataset: str, ds: str, model_version: str) -> ScoreStamp | None:
    """The stamp of a predictions partition; None when absent or unreadable (score again)."""
    try:
        data = read_json(wh.score_stamp_path(dataset, ds, model_version))
        return None if data is None else ScoreStamp.from_json(data)
    except (ValueError, TypeError):
        return None


def write_score_stamp(partition_dir: Path, stamp: ScoreStamp) -> Path:
    """Into the (staged) predictions partition directory, hidden from parquet readers."""
    return write_json(Path(partition_dir) / SCORE_STAMP, asdict(stamp))
