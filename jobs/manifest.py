"""Run manifests: one JSON object per job run, printed as the last stdout line and kept under
``<wh>/<dataset>/_runs/`` (CONTRACT.md)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class RunRecord:
    """What a finished stage reports: the manifest's counts, model, outputs and details."""

    input_rows: int = 0
    output_rows: int = 0
    quarantined_rows: int = 0
    model_version: str | None = None
    model_sha256: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunManifest:
    job: str
    dataset: str
    ds: str | None
    status: Literal["running", "succeeded", "failed"] = "running"
    input_rows: int = 0
    output_rows: int = 0
    quarantined_rows: int = 0
    model_version: str | None = None
    model_sha256: str | None = None
    started_at: str = field(default_factory=utc_now)
    finished_at: str | None = None
    manifest_path: str | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    error: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False, default=str)

    def finish(self, status: Literal["succeeded", "failed"], runs_dir: Path | None,
               error: str | None = None) -> "RunManifest":
        """Stamp the end, and write the manifest under ``runs_dir`` when there is one."""
        self.status = status
        self.error = error
        self.finished_at = utc_now()
        if runs_dir is not None:
            stamp = self.started_at.replace(":", "").replace("-", "").replace(".", "")
            name = f"{self.job}_{self.ds or 'nods'}_{stamp}_{self.run_id}.json"
            path = runs_dir / name
            self.manifest_path = str(path)
            runs_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(self.to_json() + "\n")
            tmp.replace(path)
        return self
