"""What validation reads of earlier days: the row-count history (footer counts of the trailing
features partitions) and the drift reference (the trailing validated days' drift profiles).
A previous partition that cannot be read is skipped and named, never fatal."""

from __future__ import annotations

import statistics

from jobs.core.drift_table import read_drift
from jobs.core.status import read_validation_status
from jobs.core.tables import DatasetTables
from jobs.core.warehouse import Warehouse, read_footers, read_json
from jobs.validate.drift import DayProfile
from jobs.validate.rules import RowCountBounds
from schemas.spec import DatasetSpec

PROFILE_FILE = "drift_profile.json"   # in validation/ds=D/: the day's drift profile


def row_count_bounds(tb: DatasetTables, spec: DatasetSpec, ds: str) -> RowCountBounds:
    """``row_count.min_rows``, tightened by [min_ratio, max_ratio] x the median row count of up
    to ``trailing_partitions`` previous features partitions (footer counts, no Spark job).
    A previous partition whose files cannot be read is skipped and named in ``unreadable``:
    one corrupt day never fails the validation of another."""
    policy, features = spec.row_count, tb["features"]
    previous = [d for d in features.partitions() if d < ds]
    counts, unreadable = [], []
    for day in reversed(previous):
        if len(counts) == policy.trailing_partitions:
            break
        files = features.files(day)
        if files:
            try:
                counts.append(read_footers(files)[1])
            except ValueError as exc:
                unreadable.append(f"ds={day}: {exc}")
    if not counts:
        return RowCountBounds(min_rows=policy.min_rows, max_rows=None,
                              unreadable=tuple(unreadable))
    median = float(statistics.median(counts))
    lo = max(policy.min_rows, int(-(-policy.min_ratio_to_median * median // 1)))  # ceil
    hi = int(policy.max_ratio_to_median * median)                                    # floor
    return RowCountBounds(min_rows=lo, max_rows=max(hi, lo), median=median, trailing=len(counts),
                          unreadable=tuple(unreadable))




def trailing_profiles(wh: Warehouse, spec: DatasetSpec, ds: str,
                      days: int) -> tuple[list[DayProfile], list[str]]:
    """Up to ``days`` drift profiles of the validated (passed or quarantined) days before
    ``ds``, newest first, and the days skipped as unreadable ("ds=D: why")."""
    out: list[DayProfile] = []
    skipped: list[str] = []
    for day in reversed([d for d in wh.partitions(spec.name, "validation") if d < ds]):
        if len(out) == days:
            break
        try:
            status = read_validation_status(wh, spec.name, day)
            if status is None or not status.scorable:
                continue
            raw = read_json(wh.partition(spec.name, "validation", day) / PROFILE_FILE)
            if raw is not None:
                out.append(DayProfile.from_json(raw))
        except (ValueError, KeyError, TypeError) as exc:
            skipped.append(f"ds={day}: drift profile: {exc}")
    return out, skipped


def drift_history(tb: DatasetTables, ds: str, days: int) -> dict[str, list[tuple[str, float]]]:
    """PSI per feature over the ``days`` drift partitions up to and including ``ds`` (feature
    rows only), oldest first: the report's small line per feature."""
    out: dict[str, list[tuple[str, float]]] = {}
    drift = tb["drift"]
    for day in [d for d in drift.partitions() if d <= ds][-(days + 1):]:
        try:
            table = read_drift(drift, day)
        except (ValueError, OSError):
            continue
        for row in (table.to_pylist() if table is not None else []):
            if row["model_version"] is None and row["segment"] is None \
                    and row["statistic"] == "psi":
                out.setdefault(row["feature"], []).append((day, float(row["value"])))
    return out
