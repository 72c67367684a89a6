"""Tables: the one way a stage reads and writes a logical table (part of the I/O edge).

A dataset's logical table (features, labels, predictions, ...) is either

- a :class:`PathTable` — today's layout, ``<wh>/<dataset>/<table>/ds=D[/model_version=V]/``
  (``catalog/<name>/ds=D/`` for the users / items snapshots), the embedded default; or
- a :class:`CatalogTable` — a Spark catalog table named in the job config's ``tables:``
  section (CONTRACT.md, "Tables"), read with ``spark.table(name)`` + a partition filter and
  written one whole partition at a time (below); created on first write from the staged
  rows' schema (which the spec drives), ``USING parquet PARTITIONED BY (ds[, model_version])``.

Both give the same calls, and no stage asks which kind it has: :meth:`exists`,
:meth:`partitions`, :meth:`sub_partitions`, :meth:`files`, :meth:`schema`, :meth:`count`,
:meth:`fingerprint`, :meth:`read` (Spark, with the one column check), :meth:`read_arrow`
(driver-side, small tables), :meth:`writing` (a staging directory the stage writes parquet
into; swapped in whole for a path table, registered or inserted as the partition of a catalog
table, below) and :meth:`remove`.

A partition is addressed as ``(ds, **more)``: ``ds`` is the date (None for an unpartitioned
table), ``more`` the further partition columns (``model_version=V``; ``report=ID`` for
ab_reports). A catalog table's ``ds`` column is named by its mapping's ``partition_column``
(default ``ds``) and typed ``string`` (``YYYY-MM-DD``, default) or ``date``.

A catalog write first stages the rows as parquet under the warehouse (hidden name). Then:

- **registered** (a partitioned parquet table — Spark's ``USING parquet`` or Hive's parquet
  serde — on a local filesystem, its partitions kept in the catalog, whose data columns have
  the staged files' names and types, with nothing but those files staged): the staged
  directory is renamed into the table's directory
  (``<table>/_mmoe_partitions/<partition>-<id>/``), and one metastore call points the
  partition at it (``ALTER TABLE t PARTITION (...) SET LOCATION``, or ``ADD PARTITION ...
  LOCATION`` for a new one); the partition's old directory inside the table is then deleted.
  No row is copied. A reader sees the old partition or the new one, never an empty or mixed
  one (a query still reading the old files when they go fails, as with any overwrite); a crash
  after the metastore call leaves the old files behind, unread (the next rerun does not delete
  them: delete ``_mmoe_partitions`` directories no partition points at). A rename or a catalog
  that refuses falls back to the insert; a catalog that then lists other files than those
  registered (e.g. a Spark Connect server that does not see this directory) gets the partition
  pointed back at its old files, and the write is refused in one line.
- **inserted** (anything else: another format, a column of another type, a stray non-parquet
  file staged, a remote location, an unpartitioned table): one ``INSERT OVERWRITE TABLE t
  PARTITION (ds='D'[, model_version='V'])``. Spark's file-source commit writes the new files
  under the table's ``.spark-staging-*`` directory and, at job commit, deletes the old
  partition directory and renames the new one in: a reader in that window (milliseconds on one
  filesystem) or after a crash inside it sees the partition empty, never mixed; the rerun
  replaces it.

Either way a failure before the swap leaves the old partition as it was.

Users and items are point-in-time snapshots, one ``ds`` partition per day they were taken: a
job for day D reads :meth:`Table.as_of` D, the latest snapshot on or before D, so a backfill of
an old day reads the values of that day however often it is rerun. An unpartitioned users or
items table (the older layout, or a catalog table without partitions) is still read, whole,
with a warning that it is not point-in-time.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import from_arrow_schema

from jobs.core import signals
from jobs.core.config import JobConfig, TableMapping
from jobs.core.errors import MissingInputError, TableError
from jobs.core.spark import read_partition
from jobs.core.warehouse import (
    Warehouse,
    ds_directories,
    fingerprint,
    parquet_files,
    parse_date,
    read_footers,
    remove,
    replacing,
    require_columns,
    safe_name,
    visible_files,
    write_bytes,
)

log = logging.getLogger(__name__)
# Point-in-time tables: ``ds`` names the day a snapshot was taken (read with Table.as_of);
# ``catalog`` is their path twins' directory.
SNAPSHOTS = ("users", "items")
NO_DS = ("ab_reports", "policy_values")  # not partitioned by date
# Where registered partitions live inside a catalog table's directory (hidden: a scan of the
# table's root, e.g. ``MSCK REPAIR``, skips it).
REGISTERED_DIR = "_mmoe_partitions"
EXTRA_PARTITIONS = {"predictions": ("model_version",), "recommendations": ("model_version",),
                    "ab_reports": ("report",), "policy_values": ("report",)}


@dataclass(frozen=True)
class Partition:
    """One partition's address: ``ds`` (None: the table is not partitioned by date) and the
    further partition columns in table order."""

    ds: str | None
    more: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, ds: str | None, more: dict[str, str]) -> "Partition":
        if ds is not None:
            ds = parse_date(ds, "ds").isoformat()
        return cls(ds, tuple((k, safe_name(v, k)) for k, v in more.items()))

    def label(self, ds_column: str = "ds") -> str:
        parts = ([f"{ds_column}={self.ds}"] if self.ds is not None else []) \
            + [f"{k}={v}" for k, v in self.more]
        return "/".join(parts)


@dataclass(frozen=True)
class Snapshot:
    """The snapshot of a point-in-time table (users, items) a job for day ``for_ds`` reads:
    ``ds`` the latest snapshot on or before it, None for an unpartitioned table."""

    table: str
    for_ds: str
    ds: str | None
    where: str

    @property
    def warning(self) -> str | None:
        if self.ds is not None:
            return None
        return (f"{self.table} is one unpartitioned table ({self.where}), not point-in-time "
                f"snapshots: {self.for_ds} was read with its current values")

    def record(self) -> dict[str, str | None]:
        """What a manifest says of the choice."""
        return {"as_of": f"latest snapshot on or before {self.for_ds}", "snapshot": self.ds,
                "where": self.where}


def snapshot_details(snapshots: list[Snapshot]) -> dict:
    """The manifest's ``details`` of the snapshots a job read (``snapshots``, and ``warnings``
    for the unpartitioned ones, also logged to stderr)."""
    warnings = [s.warning for s in snapshots if s.warning]
    for line in warnings:
        log.warning("warning: %s", line)
    return {"snapshots": {s.table: s.record() for s in snapshots},
            **({"warnings": warnings} if warnings else {})}


@dataclass
class Staged:
    """What :meth:`Table.writing` yields: write the partition's parquet files (and hidden
    extras, e.g. the score stamp) into ``dir``; ``rows`` is filled in when the block ends."""

    dir: Path
    rows: int = 0


class Table:
    """The calls every stage uses; see the module docstring."""

    dataset: str
    table: str

    def where(self, ds: str | None = None, **more: str) -> str:
        """Where a partition lives, for messages and manifests."""
        raise NotImplementedError

    def preflight(self, output: bool = False, columns: list[str] | None = None) -> None:
        """Refuse a table the job cannot use before any work: an input must exist, an
        output may be missing (it is created on first write); both partitioned as mapped; an
        existing output holding other data ``columns`` than the stage writes is refused."""

    def exists(self, ds: str | None = None, **more: str) -> bool:
        raise NotImplementedError

    def partitions(self) -> list[str]:
        raise NotImplementedError

    def sub_partitions(self, ds: str, key: str) -> list[str]:
        raise NotImplementedError

    def files(self, ds: str | None = None, **more: str) -> list[str]:
        """The partition's data files (paths or URIs), sorted."""
        raise NotImplementedError

    def fingerprint(self, ds: str | None = None, **more: str) -> list:
        raise NotImplementedError

    def _spark_frame(self, spark: SparkSession, part: Partition,
                     schema: T.StructType | None) -> DataFrame:
        raise NotImplementedError

    def schema(self, ds: str | None = None, **more: str) -> pa.Schema:
        """The data columns (partition columns excluded), from the files' footers."""
        files = self.files(ds, **more)
        if not files:
            raise MissingInputError(f"{self.table} {self.where(ds, **more)} has no data files")
        return read_footers(files)[0]

    def count(self, ds: str | None = None, **more: str) -> int:
        """Rows of a partition from its footers (0 when it has no files): no Spark job."""
        files = self.files(ds, **more)
        return read_footers(files)[1] if files else 0

    def read(self, spark: SparkSession, ds: str | None = None, columns: list[str] | None = None,
             schema: T.StructType | None = None, **more: str) -> DataFrame:
        """The partition as a DataFrame, partition columns left out; with ``columns``, exactly
        those (a missing one is a :class:`MissingInputError` naming the table and the columns).
        ``schema``: read with it (no inference), for a path table's files."""
        part = Partition.of(ds, more)
        if not self.exists(ds, **more):
            raise MissingInputError(f"{self.dataset} {self.table}: no partition "
                                    f"{self.where(ds, **more)}")
        frame = self._spark_frame(spark, part, schema)
        if columns is None:
            return frame
        self._require(frame.columns, columns, ds, more)
        return frame.select(*columns)

    def _require(self, present: list[str], columns: list[str] | None, ds: str | None,
                 more: dict[str, str], error: type[Exception] = MissingInputError) -> None:
        """The one column check of a read (:func:`require_columns`, naming table and partition)."""
        require_columns(present, columns or [], self.table, self.where(ds, **more), error)

    def read_arrow(self, ds: str | None = None, columns: list[str] | None = None,
                   error: type[Exception] = MissingInputError, **more: str) -> pa.Table:
        """A (small) partition read on the driver with pyarrow, checked like :meth:`read`."""
        files = self.files(ds, **more)
        if not files:
            raise MissingInputError(f"{self.dataset} {self.table}: no partition "
                                    f"{self.where(ds, **more)}")
        self._require(read_footers(files)[0].names, columns, ds, more, error)
        return open_dataset(files).to_table(columns=columns)

    @contextmanager
    def writing(self, spark: SparkSession | None, ds: str | None = None,
                **more: str) -> Iterator[Staged]:
        raise NotImplementedError
        yield

    def remove(self, ds: str | None = None, **more: str) -> None:
        raise NotImplementedError

    def as_of(self, ds: str) -> Snapshot:
        """The snapshot a job for ``ds`` reads: the latest ``ds`` partition on or before it
        that holds data; a table without ``ds`` partitions but with data is read whole (see
        :attr:`Snapshot.warning`). None to read is a :class:`MissingInputError` naming the
        table and the day."""
        ds = parse_date(ds, "ds").isoformat()
        days = self.partitions()
        for day in reversed([d for d in days if d <= ds]):
            if self.exists(day):
                return Snapshot(self.table, ds, day, self.where(day))
        if not days and self.exists():
            return Snapshot(self.table, ds, None, self.where())
        first = f" (the first is {days[0]})" if days else ""
        raise MissingInputError(f"{self.dataset} {self.table}: no snapshot on or before {ds} "
                                f"in {self.where()}{first}")


# --------------------------------------------------------------------------------------------
# The path layout


@dataclass
class PathTable(Table):
    wh: Warehouse
    dataset: str
    table: str

    def path(self, ds: str | None = None, **more: str) -> Path:
        if self.table in SNAPSHOTS:
            return (self.wh.catalog(self.dataset, self.table) if ds is None
                    else self.wh.snapshot(self.dataset, self.table, ds))
        if ds is None:
            base = self.wh.table(self.dataset, self.table)
            for key, value in more.items():
                base = base / f"{key}={safe_name(value, key)}"
            return base
        return self.wh.partition(self.dataset, self.table, ds, **more)

    def where(self, ds=None, **more):
        return str(self.path(ds, **more))

    def exists(self, ds=None, **more):
        return bool(parquet_files(self.path(ds, **more)))

    def partitions(self):
        if self.table in SNAPSHOTS:
            return ds_directories(self.path())
        return self.wh.partitions(self.dataset, self.table)

    def sub_partitions(self, ds, key):
        return self.wh.sub_partitions(self.dataset, self.table, ds, key)

    def files(self, ds=None, **more):
        return [str(p) for p in parquet_files(self.path(ds, **more))]

    def fingerprint(self, ds=None, **more):
        return fingerprint(self.path(ds, **more))

    def _spark_frame(self, spark, part, schema):
        return read_partition(spark, self.path(part.ds, **dict(part.more)), schema=schema)

    @contextmanager
    def writing(self, spark, ds=None, **more):
        with replacing(self.path(ds, **more)) as staging:
            staged = Staged(staging)
            yield staged
            staged.rows = _staged_rows(staging)

    def remove(self, ds=None, **more):
        remove(self.path(ds, **more))


# --------------------------------------------------------------------------------------------
# Catalog tables


def _quote(name: str) -> str:
    return ".".join(f"`{part}`" for part in name.split("."))


@dataclass
class CatalogTable(Table):
    wh: Warehouse
    dataset: str
    table: str
    mapping: TableMapping
    spark: SparkSession | None = None
    _checked: bool = field(default=False, repr=False)
    _schema: T.StructType | None = field(default=None, repr=False)
    _unpartitioned: bool | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.mapping.name

    @property
    def ds_column(self) -> str:
        return self.mapping.partition_column

    def _session(self) -> SparkSession:
        spark = self.spark or SparkSession.getActiveSession()
        if spark is None:
            raise TableError(f"{self.dataset} {self.table} is the catalog table {self.name}: "
                             f"reading it needs a Spark session")
        return spark

    def partition_columns(self) -> list[str]:
        cols = [] if self.table in NO_DS or self._unpartitioned_snapshot() else [self.ds_column]
        return cols + list(EXTRA_PARTITIONS.get(self.table, ()))

    def _declared(self) -> list[str]:
        """The existing table's partition columns, as the catalog declares them."""
        return [c.name for c in self._session().catalog.listColumns(self.name) if c.isPartition]

    def _unpartitioned_snapshot(self) -> bool:
        """A users / items table created without partitions (read whole, not point-in-time)."""
        if self.table not in SNAPSHOTS or self._existing() is None:
            return False
        if self._unpartitioned is None:
            self._unpartitioned = not self._declared()
        return self._unpartitioned

    def where(self, ds=None, **more):
        label = Partition.of(ds, more).label(self.ds_column)
        return f"{self.name}" + (f" ({label})" if label else "")

    # ---- checks (one line naming the table)

    def _existing(self) -> T.StructType | None:
        """The table's schema, or None while it does not exist (kept once it does)."""
        if self._schema is None:
            spark = self._session()
            if spark.catalog.tableExists(self.name):
                self._schema = spark.table(self.name).schema
        return self._schema

    def check(self) -> T.StructType:
        """The table's schema after checking it exists and is partitioned as mapped."""
        schema = self._existing()
        if schema is None:
            raise TableError(f"{self.dataset} {self.table}: catalog table {self.name} does not "
                             f"exist (config tables.{self.dataset}.{self.table})")
        self._check_partitioning(schema)
        return schema

    def preflight(self, output=False, columns=None):
        schema = self._existing()
        if schema is None and output:
            return
        if schema is None:
            self.check()
        self._check_partitioning(schema)
        if output and columns is not None:
            self._check_columns(schema, list(columns))

    def _data_columns(self, schema: T.StructType) -> list[str]:
        return [f.name for f in schema.fields if f.name not in self.partition_columns()]

    def _check_columns(self, schema: T.StructType, written: list[str]) -> None:
        """The rows a stage writes must have exactly the table's data columns."""
        data_cols = self._data_columns(schema)
        missing = [c for c in data_cols if c not in written]
        extra = [c for c in written if c not in data_cols]
        if missing or extra:
            raise TableError(f"{self.dataset} {self.table}: catalog table {self.name}'s columns "
                             f"disagree with the spec: missing {missing}, unexpected {extra}")

    def _check_partitioning(self, schema: T.StructType) -> None:
        if self._checked:
            return
        declared = self._declared()
        wanted = self.partition_columns()
        if declared != wanted:
            raise TableError(f"{self.dataset} {self.table}: catalog table {self.name} is "
                             f"partitioned by ({', '.join(declared) or 'nothing'}), expected "
                             f"({', '.join(wanted)}) (tables.{self.dataset}.{self.table}."
                             f"partition_column / partition_type)")
        if self.ds_column in wanted:
            got = schema[self.ds_column].dataType
            want = T.DateType() if self.mapping.partition_type == "date" else T.StringType()
            if got != want:
                raise TableError(f"{self.dataset} {self.table}: catalog table {self.name}'s "
                                 f"partition column {self.ds_column} is {got.simpleString()}, "
                                 f"expected {want.simpleString()} (tables.{self.dataset}."
                                 f"{self.table}.partition_type: {self.mapping.partition_type})")
        self._checked = True

    def _filter(self, part: Partition):
        conds = []
        if part.ds is not None:
            value = F.to_date(F.lit(part.ds)) if self.mapping.partition_type == "date" \
                else F.lit(part.ds)
            conds.append(F.col(self.ds_column) == value)
        conds += [F.col(k) == F.lit(v) for k, v in part.more]
        out = F.lit(True)
        for c in conds:
            out = out & c
        return out

    def _frame(self, part: Partition) -> DataFrame:
        self.check()
        return self._session().table(self.name).where(self._filter(part))

    # ---- the Table calls

    def files(self, ds=None, **more):
        if self._existing() is None:  # an output not written yet (inputs: see preflight)
            return []
        return sorted(self._frame(Partition.of(ds, more)).inputFiles())

    def exists(self, ds=None, **more):
        return bool(self.files(ds, **more))

    def _partition_values(self, part: Partition) -> list[dict[str, str]]:
        spec = ""
        if part.ds is not None:
            spec = f" PARTITION ({_quote(self.ds_column)}='{part.ds}')"
        self.check()
        rows = self._session().sql(f"SHOW PARTITIONS {_quote(self.name)}{spec}").collect()
        out = []
        for row in rows:
            out.append(dict(item.split("=", 1) for item in row[0].split("/")))
        return out

    def partitions(self):
        if self._existing() is None or self._unpartitioned_snapshot():
            return []
        return sorted({p[self.ds_column] for p in self._partition_values(Partition(None))})

    def sub_partitions(self, ds, key):
        if self._existing() is None:
            return []
        part = Partition.of(ds, {})
        values = sorted({p[key] for p in self._partition_values(part) if key in p})
        return [v for v in values if self.exists(ds, **{key: v})]

    def fingerprint(self, ds=None, **more):
        """The partition's files with sizes and modification times (a rewrite, a file changed in
        place, a file added or removed all change it)."""
        out = []
        for uri in self.files(ds, **more):
            fs, path = pafs.FileSystem.from_uri(uri)
            info = fs.get_file_info(path)
            out.append([uri, info.size, info.mtime_ns])
        return out

    def _spark_frame(self, spark, part, schema):
        return self._frame(part).drop(*self.partition_columns())

    def _create(self, spark: SparkSession, data: T.StructType) -> None:
        db = self.name.rsplit(".", 1)[0] if "." in self.name else None
        if db:
            spark.sql(f"CREATE DATABASE IF NOT EXISTS {_quote(db)}")
        cols = [f"`{f.name}` {f.dataType.simpleString()}" for f in data.fields]
        ptype = "DATE" if self.mapping.partition_type == "date" else "STRING"
        parts = [] if self.table in NO_DS else [f"`{self.ds_column}` {ptype}"]
        parts += [f"`{c}` STRING" for c in EXTRA_PARTITIONS.get(self.table, ())]
        spark.sql(f"CREATE TABLE IF NOT EXISTS {_quote(self.name)} "
                  f"({', '.join(cols + parts)}) USING parquet"
                  + (f" PARTITIONED BY ({', '.join(self.partition_columns())})" if parts else ""))

    @contextmanager
    def writing(self, spark, ds=None, **more):
        spark = spark or self._session()
        part = Partition.of(ds, more)
        base = self.wh.table(self.dataset, self.table if self.table not in SNAPSHOTS
                             else "catalog")
        staging = base / f".catalog-staging-{uuid.uuid4().hex[:12]}"
        schema = self._existing()
        if schema is not None:
            self._check_partitioning(schema)  # a wrongly partitioned table: refused before work
        try:
            staged = Staged(staging)
            yield staged
            staging.mkdir(parents=True, exist_ok=True)
            staged.rows = _staged_rows(staging)
            self._keep_sidecars(self._insert(spark, staging, part), part)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _keep_sidecars(self, staging: Path, part: Partition) -> None:
        """Hidden small files staged beside the rows (the score stamp ``_scored.json``) go to
        the path twin's partition directory under the warehouse, which holds no data for a
        mapped table: the same place their readers look for them."""
        extras = [p for p in staging.iterdir() if p.is_file() and p.name.startswith("_")]
        if not extras:
            return
        twin = PathTable(self.wh, self.dataset, self.table).path(part.ds, **dict(part.more))
        twin.mkdir(parents=True, exist_ok=True)
        for path in extras:
            write_bytes(twin / path.name, path.read_bytes())

    def _spec(self, part: Partition) -> str:
        """The partition as a SQL partition spec's contents (``ds='D', model_version='V'``)."""
        values = ([] if part.ds is None else [(self.ds_column, part.ds)]) + list(part.more)
        dated = self.mapping.partition_type == "date"
        return ", ".join(f"`{k}`=" + (f"DATE'{v}'" if k == self.ds_column and dated else f"'{v}'")
                         for k, v in values)

    def _insert(self, spark: SparkSession, staging: Path, part: Partition) -> Path:
        """Put the staged rows in as the partition; returns where the staged directory is now
        (moved into the table when its files were registered, else still ``staging``)."""
        files = [str(p) for p in parquet_files(staging)]
        existing = self._existing()
        if files:
            frame = spark.read.parquet(*files)
        elif existing is not None:
            frame = spark.createDataFrame([], T.StructType(
                [f for f in existing.fields if f.name not in self.partition_columns()]))
        else:
            raise TableError(f"{self.dataset} {self.table}: nothing to write into {self.name}, "
                             f"which does not exist yet")
        if existing is None:
            self._create(spark, frame.schema)
            existing = self.check()
        self._check_columns(existing, frame.columns)
        table_dir = self._registration_dir(spark, existing, frame.schema, part) \
            if files and _only_parquet(staging, files) else None
        if table_dir is not None:
            moved = self._register(spark, staging, part, table_dir, len(files))
            if moved is not None:
                return moved
        data_cols = self._data_columns(existing)
        view = f"mmoe_staged_{uuid.uuid4().hex[:12]}"
        frame.select(*data_cols).createOrReplaceTempView(view)
        spec = self._spec(part)
        try:
            spark.sql(f"INSERT OVERWRITE TABLE {_quote(self.name)}"
                      + (f" PARTITION ({spec})" if spec else "")
                      + f" SELECT {', '.join(f'`{c}`' for c in data_cols)} FROM {view}")
        finally:
            spark.catalog.dropTempView(view)
        return staging

    # ---- registering the staged files as the partition (no copy); see the module docstring

    def _describe(self, spark: SparkSession, part: Partition | None = None) -> dict[str, str]:
        """The detailed-information rows of ``DESCRIBE TABLE EXTENDED`` (of a partition)."""
        spec = f" PARTITION ({self._spec(part)})" if part is not None else ""
        rows = spark.sql(f"DESCRIBE TABLE EXTENDED {_quote(self.name)}{spec}").collect()
        info, detail = {}, False
        for row in rows:
            key = (row[0] or "").strip()
            if key.startswith("# Detailed"):
                detail = True
            elif detail and key and not key.startswith("#"):
                # the first: a partition's own Location comes before its table's
                info.setdefault(key, (row[1] or "").strip())
        return info

    def _table_dir(self, spark: SparkSession) -> Path | None:
        """The table's directory when its partitions can take registered parquet files: a
        parquet table (Spark's or Hive's parquet serde) on a local filesystem, its partitions
        kept in the catalog."""
        info = self._describe(spark)
        parquet = info.get("Provider", "").lower() == "parquet" or (
            info.get("Provider", "").lower() == "hive"
            and "parquet" in info.get("Serde Library", "").lower())
        managed = spark.conf.get("spark.sql.hive.manageFilesourcePartitions", "true") == "true"
        location = info.get("Location", "")
        if not (parquet and managed and location.startswith(("file:/", "/"))):
            return None
        return Path(_local_path(location))

    def _registration_dir(self, spark: SparkSession, existing: T.StructType,
                          staged: T.StructType, part: Partition) -> Path | None:
        """The table's directory where the staged files can become the partition as they are:
        Spark reads them as the table's own only in a partitioned parquet table whose data
        columns have the staged files' names and types (None: insert the rows instead)."""
        if part.ds is None and not part.more:
            return None

        def types(schema: T.StructType, skip: list[str]) -> dict[str, str]:
            return {f.name: f.dataType.simpleString() for f in schema.fields if f.name not in skip}

        if types(existing, self.partition_columns()) != types(staged, []):
            return None
        return self._table_dir(spark)

    def _partition_dir(self, spark: SparkSession, part: Partition) -> Path | None:
        """The partition's current directory (None: no such partition, or not local)."""
        listed = f" PARTITION ({self._spec(part)})"
        if not spark.sql(f"SHOW PARTITIONS {_quote(self.name)}{listed}").collect():
            return None
        location = self._describe(spark, part).get("Location", "")
        return Path(_local_path(location)) if location.startswith(("file:/", "/")) else None

    def _register(self, spark: SparkSession, staging: Path, part: Partition, table_dir: Path,
                  files: int) -> Path | None:
        """Move the staged directory into the table and point the partition at it (one
        metastore call), then delete the partition's old directory. None where the move or the
        catalog refuses (the caller then inserts the rows); the partition is untouched then."""
        label = part.label(self.ds_column).replace("/", "__")
        target = table_dir / REGISTERED_DIR / f"{label}-{uuid.uuid4().hex[:12]}"
        old = self._partition_dir(spark, part)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(target)  # the same filesystem or OSError: nothing moved
        except OSError:
            return None
        verb = "PARTITION ({}) SET LOCATION" if old is not None else "ADD PARTITION ({}) LOCATION"
        try:
            with signals.deferred():
                spark.sql(f"ALTER TABLE {_quote(self.name)} {verb.format(self._spec(part))} "
                          f"'file:{target}'")
        except Exception:  # a catalog that cannot: insert the rows instead, as if never tried
            target.rename(staging)
            return None
        spark.catalog.refreshTable(self.name)
        seen = self._frame(part).inputFiles()
        if len(seen) != files or not all(_local_path(f).startswith(f"{target}/") for f in seen):
            # e.g. a Spark Connect server that does not see this machine's directory: the
            # partition goes back to its old files before the one-line refusal
            name, spec = _quote(self.name), self._spec(part)
            if old is not None:
                spark.sql(f"ALTER TABLE {name} PARTITION ({spec}) SET LOCATION 'file:{old}'")
            else:
                spark.sql(f"ALTER TABLE {name} DROP IF EXISTS PARTITION ({spec})")
            spark.catalog.refreshTable(self.name)
            where = self.where(part.ds, **dict(part.more))
            raise TableError(f"{self.dataset} {self.table}: {where}: the catalog lists "
                             f"{len(seen)} files of the {files} registered at {target}; the "
                             f"partition was left as it was")
        if old is not None and old != target and _inside(old, table_dir) \
                and not _inside(target, old):
            shutil.rmtree(old, ignore_errors=True)
        return target

    def remove(self, ds=None, **more):
        if self._existing() is None:
            return
        spec = self._spec(Partition.of(ds, more))
        self._session().sql(f"ALTER TABLE {_quote(self.name)} DROP IF EXISTS PARTITION ({spec})")


def _local_path(location: str) -> str:
    """A catalog location (``file:/x``, ``file:///x`` or ``/x``) as a local path."""
    return unquote(urlparse(location).path) if location.startswith("file:") else location


def _only_parquet(staging: Path, files: list[str]) -> bool:
    """Whether the staged parquet files are all Spark would list in the directory (a stray
    non-hidden file, e.g. a README, would be read as data of a registered partition)."""
    return sorted(map(str, visible_files(staging))) == sorted(files)


def _inside(path: Path, parent: Path) -> bool:
    """``path`` lies strictly below ``parent``."""
    return path != parent and path.is_relative_to(parent)


def _staged_rows(staging: Path) -> int:
    files = parquet_files(staging)
    return read_footers(files)[1] if files else 0


# --------------------------------------------------------------------------------------------
# Resolution and filesystems


def table(cfg: JobConfig, dataset: str, name: str, spark: SparkSession | None = None) -> Table:
    """The logical table ``name`` of ``dataset``: its catalog table when ``tables:`` maps it,
    else its path under the warehouse."""
    wh = Warehouse(cfg.warehouse)
    mapping = cfg.tables.get(dataset, {}).get(name)
    if mapping is None:
        return PathTable(wh, dataset, name)
    return CatalogTable(wh, dataset, name, mapping, spark)


def open_dataset(files: list[str]) -> pads.Dataset:
    """A pyarrow dataset over files given as paths or URIs (``file://``, ``hdfs://``, ...)."""
    if files and "://" in files[0]:
        fs, first = pafs.FileSystem.from_uri(files[0])
        paths = [first] + [pafs.FileSystem.from_uri(f)[1] for f in files[1:]]
        return pads.dataset(paths, format="parquet", filesystem=fs)
    return pads.dataset(files, format="parquet")


def pyarrow_opens(file: str) -> bool:
    """Whether pyarrow has a filesystem for a file's URI scheme (else: the Spark reader)."""
    if "://" not in file:
        return True
    try:
        pafs.FileSystem.from_uri(file)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError):
        return False
    return True


def open_parquet(file: str | Path) -> pq.ParquetFile:
    """One parquet file given as a path or a URI, opened with pyarrow's filesystem for it."""
    file = str(file)
    if "://" in file:
        fs, path = pafs.FileSystem.from_uri(file)
        return pq.ParquetFile(fs.open_input_file(path))
    return pq.ParquetFile(file)


def arrow_to_spark(schema: pa.Schema) -> T.StructType | None:
    """The Spark schema of an arrow schema, or None where pyspark cannot map a type."""
    try:
        return from_arrow_schema(schema)
    except (TypeError, ValueError, NotImplementedError):
        return None




@dataclass
class DatasetTables:
    """The logical tables of one dataset under one job config (each resolved once).
    :meth:`preflight` refuses, before any work, the mapped tables a stage cannot use."""

    cfg: JobConfig
    dataset: str
    spark: SparkSession | None = None
    _cache: dict[str, Table] = field(default_factory=dict, repr=False)

    @property
    def wh(self) -> Warehouse:
        return Warehouse(self.cfg.warehouse)

    def __getitem__(self, name: str) -> Table:
        if name not in self._cache:
            self._cache[name] = table(self.cfg, self.dataset, name, self.spark)
        return self._cache[name]

    def preflight(self, inputs: tuple[str, ...] = (), outputs: tuple[str, ...] = (),
                  columns: dict[str, list[str]] | None = None) -> None:
        """``columns``: the data columns a stage writes into an output (checked against an
        existing catalog table before any work)."""
        for name in inputs:
            self[name].preflight(output=False)
        for name in outputs:
            self[name].preflight(output=True, columns=(columns or {}).get(name))
