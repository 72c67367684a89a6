"""Prediction drift: each task's score distribution on ``ds`` against the same model version's
trailing ``drift.reference_days`` scored days (PSI and JS over the reference's decile bins).

Each scored partition keeps its profile (``_drift_profile.json``, hidden from parquet readers:
:data:`PROFILE_QUANTILES` quantiles per ``p_<task>``), written into the staged partition so it
is swapped in with the predictions. The rows go to ``drift/ds=D`` with ``model_version``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jobs.core.config import JobConfig
from jobs.core.drift_table import replace_drift_rows
from jobs.core.warehouse import (
    PREDICTION_PROFILE,
    Warehouse,
    read_json,
    read_table,
    write_json,
)
from jobs.validate.drift import (
    DayProfile,
    DriftRow,
    FeatureProfile,
    compare,
    current_counts,
    drifted_features,
    pool,
    profile_probabilities,
    summary,
)
from schemas.spec import DatasetSpec


def prediction_profile(staging: Path, spec: DatasetSpec, ds: str) -> tuple[DayProfile, dict]:
    """The day's profile of every ``p_<task>`` and its values (read with pyarrow: the score
    columns only)."""
    columns = [f"p_{t}" for t in spec.task_names]
    table = read_table(staging, columns=columns)
    values, features = {}, {}
    for c in columns:
        v = table.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
        present = v[~np.isnan(v)]
        values[c] = present
        features[c] = FeatureProfile("dense", len(v), int(len(v) - len(present)), quantiles=(
            np.quantile(present, profile_probabilities()).tolist() if len(present) else []))
    return DayProfile(ds, features), values


def trailing_prediction_profiles(wh: Warehouse, dataset: str, ds: str, model_version: str,
                                 days: int) -> list[DayProfile]:
    out = []
    for day in reversed([d for d in wh.partitions(dataset, "predictions") if d < ds]):
        if len(out) == days:
            break
        try:
            raw = read_json(wh.partition(dataset, "predictions", day,
                                         model_version=model_version) / PREDICTION_PROFILE)
        except ValueError:
            continue
        if raw is not None:
            out.append(DayProfile.from_json(raw))
    return out


def prediction_drift(cfg: JobConfig, spec: DatasetSpec, ds: str, model_version: str,
                     staging: Path, skew: list[DriftRow] = ()) -> dict[str, Any]:
    """Profile the staged predictions, compare them with the version's trailing days, write the
    drift rows (with the version's training-skew rows ``skew``, jobs/score/skew.py: one writer
    of the version's rows); returns the manifest's ``details.prediction_drift``."""
    wh = Warehouse(cfg.warehouse)
    profile, values = prediction_profile(staging, spec, ds)
    write_json(Path(staging) / PREDICTION_PROFILE, profile.to_json())
    reference = trailing_prediction_profiles(wh, spec.name, ds, model_version,
                                             cfg.drift.reference_days)
    rows: list[DriftRow] = []
    for column, prof in profile.features.items():
        ref = pool(column, reference, cfg.drift.bins)
        if ref is None or ref.expected is None:
            continue
        rows += compare(column, ref, prof, current_counts(ref, prof, values[column]),
                        cfg.drift.thresholds, cfg.drift.reference_days,
                        model_version=model_version, statistics=("psi", "js"))
    table = replace_drift_rows(cfg, spec.name, ds, rows + list(skew),
                               model_version=model_version)
    judged = len(reference) >= cfg.drift.reference_days
    return {"judged": judged, "reference_days": len(reference),
            "wanted_days": cfg.drift.reference_days, "drifted": drifted_features(rows),
            "summary": summary(rows), "table": str(table)}
