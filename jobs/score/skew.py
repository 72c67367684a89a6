"""Training–serving skew: the features of a scored day against the data the model was trained on.

``mmoe train`` records the training rows' profile of every watched feature (the same profile
validate keeps of each day: 101 quantiles of a dense feature, counts per category, nulls) in
the artifact's ``metrics.json`` under ``feature_profile``. Scoring a day compares that day's
profile (validate's ``validation/ds=D/drift_profile.json``) with it: PSI and JS over the
training data's decile bins, and the null share, the same statistics and thresholds as the
trailing-days drift. The rows go to the drift table with ``reference = training`` and the
scored ``model_version``, beside the prediction drift rows.

The day's dense counts on the training bins come from its 101 quantiles (no further pass over
the data): within 1 % of the rows per bin, far below what a PSI threshold of 0.1–0.25 sees.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from jobs.core.config import JobConfig
from jobs.core.warehouse import Warehouse, read_json
from jobs.validate.drift import DayProfile, DriftRow, compare, drifted_features, pool, summary
from jobs.validate.feature_drift import PROFILE_KEY, TRAINING
from jobs.validate.history import PROFILE_FILE
from mmoe_model.artifact import METRICS
from schemas.spec import DatasetSpec



def training_skew(cfg: JobConfig, spec: DatasetSpec, ds: str, model_files: dict[str, bytes],
                  model_version: str) -> tuple[list[DriftRow], dict[str, Any]]:
    """The skew rows of ``ds`` against the model's training profile and what the manifest
    says; no rows (and a note saying why) when the model records no profile or the day has
    no validation profile."""
    raw = json.loads(model_files.get(METRICS, b"{}") or b"{}").get(PROFILE_KEY)
    if raw is None:
        return [], {"note": f"{model_version} records no training profile (trained before "
                            f"skew was recorded, or imported): no skew measured"}
    day = read_json(Warehouse(cfg.warehouse).partition(spec.name, "validation", ds)
                    / PROFILE_FILE)
    if day is None:
        return [], {"note": f"no validation profile of {ds} (drift disabled, or scored "
                            f"--validate-inline without it): no skew measured"}
    trained, today = DayProfile.from_json(raw), DayProfile.from_json(day)
    rows: list[DriftRow] = []
    for name, profile in today.features.items():
        reference = pool(name, [trained], cfg.drift.bins)
        if reference is None or reference.expected is None:
            continue
        rows += [dataclasses.replace(row, reference=TRAINING)
                 for row in compare(name, reference, profile, None, cfg.drift.thresholds, 1,
                                    model_version=model_version)]
    return rows, {"drifted": drifted_features(rows), "summary": summary(rows),
                  "features": len({r.feature for r in rows})}
