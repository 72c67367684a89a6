"""The drift table ``<wh>/<dataset>/drift/ds=D/`` (CONTRACT.md): ``feature, statistic, value,
threshold, drifted, reference`` + ``model_version`` (null for feature rows) + ``reference_days``.

Two writers share a partition: validate writes the feature rows, score the prediction rows of
one model version. :func:`replace_drift_rows` replaces exactly the writer's own rows (a rerun
never duplicates, the other writer's rows stay), holding the partition's lock, through
:meth:`jobs.core.tables.Table.writing` (a path partition swapped in, or one catalog partition
overwritten when ``tables:`` maps drift). Small: read and written with pyarrow on the driver.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.core.config import JobConfig
from jobs.core.tables import Table, table
from jobs.core.warehouse import Warehouse

DRIFT_SCHEMA = pa.schema([
    ("feature", pa.string()), ("statistic", pa.string()), ("value", pa.float64()),
    ("threshold", pa.float64()), ("drifted", pa.bool_()), ("reference", pa.string()),
    ("model_version", pa.string()), ("reference_days", pa.int32()),
    ("segment", pa.string())])   # segmented drift ("platform=ios"); null for the whole day


def _own(table: pa.Table, model_version: str | None) -> pa.Array:
    """The rows a writer owns: feature rows (model_version null) or one version's rows."""
    mv = table.column("model_version")
    return pc.is_null(mv) if model_version is None else pc.fill_null(
        pc.equal(mv, model_version), False)


def read_drift(drift: Table, ds: str) -> pa.Table | None:
    """The drift rows of ``ds`` (None: no partition)."""
    if not drift.exists(ds):
        return None
    table = drift.read_arrow(ds)
    if "segment" not in table.column_names:   # written before segmented drift
        table = table.append_column("segment", pa.nulls(table.num_rows, pa.string()))
    return table.select(DRIFT_SCHEMA.names).cast(DRIFT_SCHEMA)


def replace_drift_rows(cfg: JobConfig, dataset: str, ds: str, rows: Iterable,
                       model_version: str | None = None) -> str:
    """Replace the feature rows (``model_version`` None) or one model version's prediction
    rows of ``drift/ds=D`` with ``rows`` (:class:`jobs.validate.drift.DriftRow`)."""
    wh, drift = Warehouse(cfg.warehouse), table(cfg, dataset, "drift")
    new = pa.Table.from_pylist([{
        "feature": r.feature, "statistic": r.statistic, "value": float(r.value),
        "threshold": None if r.threshold is None else float(r.threshold),
        "drifted": bool(r.drifted), "reference": r.reference, "model_version": model_version,
        "reference_days": int(r.reference_days), "segment": getattr(r, "segment", None)}
        for r in rows], schema=DRIFT_SCHEMA)
    with wh.lock(dataset, "drift", ds, wait_seconds=cfg.locks.wait_seconds,
                 poll_seconds=cfg.locks.poll_seconds):
        old = read_drift(drift, ds)
        if old is not None:
            new = pa.concat_tables([old.filter(pc.invert(_own(old, model_version))), new])
        with drift.writing(None, ds) as staged:
            staged.dir.mkdir(parents=True)
            pq.write_table(new, staged.dir / "part-00000.parquet")
    return drift.where(ds)


def version_drift(drift: Table, model_version: str, days: list[str]) -> list[dict]:
    """One model version's prediction drift rows over ``days`` (each with its ``ds``)."""
    out = []
    for ds in days:
        rows = read_drift(drift, ds)
        for row in (rows.to_pylist() if rows is not None else []):
            if row["model_version"] == model_version:
                out.append({**row, "ds": ds})
    return out
