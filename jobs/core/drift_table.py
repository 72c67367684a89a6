"""The drift table ``<wh>/<dataset>/drift/ds=D/`` (CONTRACT.md): ``feature, statistic, value,
threshold, drifted, reference`` + ``model_version`` (null for feature rows) + ``reference_days``.

Two writers share a partition: validate writes the feature rows, score the prediction rows of
one model version. :func:`replace_drift_rows` replaces exactly the writer's own rows (a rerun
never duplicates, the other writer's rows stay), holding the partition's lock, through
:func:`~jobs.core.warehouse.replacing`. Small: read and written with pyarrow on the driver.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.core.config import JobConfig
from jobs.core.warehouse import Warehouse, parquet_files, read_table, replacing

DRIFT_SCHEMA = pa.schema([
    ("feature", pa.string()), ("statistic", pa.string()), ("value", pa.float64()),
    ("threshold", pa.float64()), ("drifted", pa.bool_()), ("reference", pa.string()),
    ("model_version", pa.string()), ("reference_days", pa.int32())])


def _own(table: pa.Table, model_version: str | None) -> pa.Array:
    """The rows a writer owns: feature rows (model_version null) or one version's rows."""
    mv = table.column("model_version")
    return pc.is_null(mv) if model_version is None else pc.fill_null(
        pc.equal(mv, model_version), False)


def read_drift(wh: Warehouse, dataset: str, ds: str) -> pa.Table | None:
    directory = wh.partition(dataset, "drift", ds)
    if not parquet_files(directory):
        return None
    return read_table(directory).select(DRIFT_SCHEMA.names).cast(DRIFT_SCHEMA)


def replace_drift_rows(cfg: JobConfig, dataset: str, ds: str, rows: Iterable,
                       model_version: str | None = None) -> Path:
    """Replace the feature rows (``model_version`` None) or one model version's prediction
    rows of ``drift/ds=D`` with ``rows`` (:class:`jobs.validate.drift.DriftRow`)."""
    wh = Warehouse(cfg.warehouse)
    target = wh.partition(dataset, "drift", ds)
    new = pa.Table.from_pylist([{
        "feature": r.feature, "statistic": r.statistic, "value": float(r.value),
        "threshold": None if r.threshold is None else float(r.threshold),
        "drifted": bool(r.drifted), "reference": r.reference, "model_version": model_version,
        "reference_days": int(r.reference_days)} for r in rows], schema=DRIFT_SCHEMA)
    with wh.lock(dataset, "drift", ds, wait_seconds=cfg.locks.wait_seconds,
                 poll_seconds=cfg.locks.poll_seconds):
        old = read_drift(wh, dataset, ds)
        if old is not None:
            new = pa.concat_tables([old.filter(pc.invert(_own(old, model_version))), new])
        with replacing(target) as staging:
            staging.mkdir(parents=True)
            pq.write_table(new, staging / "part-00000.parquet")
    return target


def version_drift(wh: Warehouse, dataset: str, model_version: str,
                  days: list[str]) -> list[dict]:
    """One model version's prediction drift rows over ``days`` (each with its ``ds``)."""
    out = []
    for ds in days:
        table = read_drift(wh, dataset, ds)
        for row in (table.to_pylist() if table is not None else []):
            if row["model_version"] == model_version:
                out.append({**row, "ds": ds})
    return out
