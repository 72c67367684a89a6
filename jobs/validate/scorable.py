"""Is this ds scorable? The gate score and backfill call: the stored decision
(:func:`read_status`), checked against the features as they are now (:func:`checked_status`),
and the rows that passed (:func:`passed_rows`)."""

from __future__ import annotations

from functools import reduce

from pyspark.sql import DataFrame, SparkSession

from jobs.core.config import JobConfig
from jobs.core.errors import NotValidated
from jobs.core.status import ValidationStatus, read_validation_status
from jobs.core.tables import DatasetTables
from jobs.core.warehouse import Warehouse
from schemas.spec import DatasetSpec
from schemas.tables import features_struct


def passed_rows(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, ds: str) -> DataFrame:
    """The features rows of ``ds`` that passed validation: the partition minus the quarantined
    keys (a null-safe left-anti join, so null-key rows stay out too).

    Raises :class:`NotValidated` when the ds was never validated, failed, or its features
    partition changed since it was validated.
    """
    tb = DatasetTables(cfg, spec.name, spark)
    status = checked_status(cfg, spec, ds, tb)
    rows = tb["features"].read(spark, ds, schema=features_struct(spec))
    if status.quarantined_rows == 0:
        return rows
    keys = tb["quarantine"].read(spark, ds, columns=spec.key_names).distinct()
    cond = reduce(lambda a, b: a & b, [rows[k].eqNullSafe(keys[k]) for k in spec.key_names])
    return rows.join(keys, on=cond, how="left_anti")


def checked_status(cfg: JobConfig, spec: DatasetSpec, ds: str,
                   tb: DatasetTables | None = None) -> ValidationStatus:
    """The ds's validation status when its rows may be scored; :class:`NotValidated` when it
    was never validated, failed, changed since, or its quarantine partition went missing."""
    tb = tb or DatasetTables(cfg, spec.name)
    status = read_status(cfg, spec, ds)
    where = f"{spec.name} ds={ds}"
    if status is None:
        raise NotValidated(f"{where} has not been validated; run: mmoe validate "
                           f"--dataset {spec.name} --ds {ds}")
    if not status.scorable:
        raise NotValidated(f"{where} did not pass validation: {status.message or '?'}")
    if tb["features"].fingerprint(ds) != status.features_fingerprint:
        raise NotValidated(f"{where}: the features partition changed after it was validated; "
                           f"run mmoe validate --dataset {spec.name} --ds {ds} again")
    if status.quarantined_rows and not tb["quarantine"].exists(ds):
        raise NotValidated(f"{where}: status says {status.quarantined_rows} rows were "
                           f"quarantined but {tb['quarantine'].where(ds)} is missing; "
                           f"validate again")
    return status


def read_status(cfg: JobConfig, spec: DatasetSpec, ds: str) -> ValidationStatus | None:
    """The validation decision of a ds, or None when it was never validated (or is being
    validated)."""
    try:
        return read_validation_status(Warehouse(cfg.warehouse), spec.name, ds)
    except ValueError as exc:
        raise NotValidated(str(exc)) from None
