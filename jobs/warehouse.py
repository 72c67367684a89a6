"""Where every table lives under the warehouse root (CONTRACT.md, "Tables")."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

from jobs.errors import InputError

TABLES = ("features", "labels", "predictions", "quarantine", "metrics", "ab_reports",
          "validation", "recommendations", "_runs")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def parse_date(value: str, what: str = "date") -> dt.date:
    """A strict ``YYYY-MM-DD`` date; anything else is an :class:`InputError`."""
    if not isinstance(value, str) or not _DATE.match(value):
        raise InputError(f"{what} must be YYYY-MM-DD, got {value!r}")
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise InputError(f"{what} {value!r} is not a valid date: {exc}") from None


def date_range(start: str, end: str) -> list[str]:
    first, last = parse_date(start, "--start"), parse_date(end, "--end")
    if last < first:
        raise InputError(f"--end {end} is before --start {start}")
    return [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def safe_name(value: str, what: str) -> str:
    """Names that become path components (dataset, model_version) must not escape the tree."""
    if not _SAFE_NAME.match(value or ""):
        raise InputError(f"{what} {value!r} may only contain letters, digits, '.', '_' and '-'")
    return value


@dataclass(frozen=True)
class Warehouse:
    root: Path

    def table(self, dataset: str, table: str) -> Path:
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        return self.root / safe_name(dataset, "dataset") / table

    def partition(self, dataset: str, table: str, ds: str, **more: str) -> Path:
        path = self.table(dataset, table) / f"ds={parse_date(ds, 'ds').isoformat()}"
        for key, value in more.items():
            path = path / f"{key}={safe_name(value, key)}"
        return path

    def has_partition(self, dataset: str, table: str, ds: str) -> bool:
        path = self.partition(dataset, table, ds)
        return path.is_dir() and any(path.rglob("*.parquet"))

    def partitions(self, dataset: str, table: str) -> list[str]:
        """The ds values present in a table, sorted."""
        base = self.table(dataset, table)
        if not base.is_dir():
            return []
        return sorted(p.name[3:] for p in base.glob("ds=*") if p.is_dir())
