"""Census ingest: one raw UCI Census-Income (KDD) file -> the features and labels tables of the
``census-group1`` and ``census-group2`` data sets (``mmoe data census``).

Input format (the raw UCI format, see ``shared/data/census/README.md``): no header, one record
per line, comma-separated, values padded with a leading space, ``?`` for unknown, the last field
the income label `` - 50000.`` / `` 50000+.``. Gzip (``.gz``) or plain text. The column names and
their order come from the spec (``source.columns``), the null token from ``source.null_token``.

What the ingest writes, for each data set and the given ``ds``:

- ``<wh>/<dataset>/features/ds=D/``: exactly ``schemas.tables.features_struct(spec)``: the key
  ``row_id`` (the 0-based line number in the input file), the spec's features (dense ones cast to
  double, categoricals as trimmed strings, ``?`` -> null) and the attributes (``instance_weight``,
  never a feature).
- ``<wh>/<dataset>/labels/ds=D/``: ``labels_struct(spec)``: ``row_id`` + one 0/1 int per task,
  1 when the task's ``source`` column (trimmed, the income label without its trailing ``.``)
  is one of the task's ``positive`` values.

Leaky household columns: ``det_hh_fam_stat`` and ``det_hh_summ`` encode household roles such as
"Child <18 never marr...", which give the never-married label away (marital AUC ~0.99). The
spec lists them under ``exclude`` (and ``source.leaky``), so they are not features; the ingest
writes only the columns the spec defines, hence they are not stored at all. Task source columns
(``income_50k``, ``marital_stat``, and ``education`` for Group 2) are likewise never features.
To study the leak, add the columns back to a spec of your own; the ingest follows the spec.

Rows are never dropped silently: a line with the wrong number of fields, a non-numeric value in
a numeric column, or an unreadable file is an :class:`InputError` naming the line and the counts,
and nothing is written. Whitespace-only lines (e.g. a blank line at the end of a hand-edited
file) are not records: they are skipped, keep their line number consumed, and are counted in the
manifest (``details.blank_lines``). A rerun for the same ds overwrites the partition directories.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.core.config import JobConfig
from jobs.core.errors import ConfigError, InputError
from jobs.core.manifest import RunRecord
from jobs.core.warehouse import Warehouse, parse_date, replacing
from jobs.data import CENSUS_DATASETS
from schemas.spec import DatasetSpec, SpecError, load_spec
from schemas.tables import features_struct, labels_struct

DATASETS = CENSUS_DATASETS
_NFIELDS = "_nfields"
_TRIM = " \t\r"
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class CensusResult:
    rows: int                      # rows written per data set (every data set gets every row)
    written: dict[str, int]
    outputs: dict[str, str]
    details: dict[str, Any]

    def record(self) -> RunRecord:
        return RunRecord(input_rows=self.rows, output_rows=self.rows,
                         outputs=dict(self.outputs), details=dict(self.details))


def ingest_census(spark: SparkSession, cfg: JobConfig, input_path: Path, ds: str,
                  datasets: Sequence[str] = DATASETS) -> CensusResult:
    """Read one raw UCI census file with Spark and write the features and labels partitions of
    every data set in ``datasets`` for ``ds`` (each staged and swapped in)."""
    parse_date(ds, "--ds")
    try:
        specs = [load_spec(name) for name in datasets]
    except SpecError as exc:
        raise InputError(str(exc)) from None
    if not specs:
        raise InputError("no census data sets to write")
    columns, null_token = _source_layout(specs)
    path = _check_input(Path(input_path))

    raw = _read_indexed_lines(spark, path)
    parsed = _parse(raw, columns, null_token).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        stats = _check_and_count(parsed, path, columns, specs)
        wh = Warehouse(cfg.warehouse)
        written: dict[str, int] = {}
        outputs: dict[str, str] = {}
        per_dataset: dict[str, Any] = {}
        for spec in specs:
            features = _features_frame(parsed, spec)
            labels = _labels_frame(parsed, spec)
            for table, frame in (("features", features), ("labels", labels)):
                out = wh.partition(spec.name, table, ds)
                with wh.lock(spec.name, table, ds, wait_seconds=cfg.locks.wait_seconds,
                             poll_seconds=cfg.locks.poll_seconds), replacing(out) as staging:
                    frame.write.mode("overwrite").parquet(str(staging))
                outputs[f"{spec.name}/{table}"] = str(out)
            written[spec.name] = stats["rows"]
            per_dataset[spec.name] = {
                "rows": stats["rows"],
                "positives": {t.name: stats["positives"][spec.name][t.name] for t in spec.tasks},
            }
    finally:
        parsed.unpersist()

    return CensusResult(rows=stats["rows"], written=written, outputs=outputs, details={
        "input": str(path),
        "lines_read": stats["lines"],
        "blank_lines": stats["blank"],
        "datasets": per_dataset,
    })


# --------------------------------------------------------------------------------------------
# Reading


def _source_layout(specs: Sequence[DatasetSpec]) -> tuple[list[str], str]:
    """The raw column order and null token, which every census spec must agree on."""
    first = specs[0]
    columns = list(first.source.get("columns") or [])
    if not columns:
        raise ConfigError(f"spec {first.name}: source.columns is missing")
    null_token = str(first.source.get("null_token", "?"))
    for spec in specs:
        if list(spec.source.get("columns") or []) != columns:
            raise ConfigError(f"specs {first.name} and {spec.name} disagree on source.columns")
        needed = [c for c in spec.features_table_columns if c not in spec.key_names]
        needed += [t.source for t in spec.tasks if t.source]
        missing = [c for c in needed if c not in columns]
        if missing:
            raise ConfigError(f"spec {spec.name}: column(s) {missing} not in source.columns")
        if any(t.source is None for t in spec.tasks):
            raise ConfigError(f"spec {spec.name}: every census task needs a source column")
    return columns, null_token


def _check_input(path: Path) -> Path:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise InputError(f"census input {path} does not exist or is not a file")
    try:
        with path.open("rb") as fh:
            magic = fh.read(2)
    except OSError as exc:
        raise InputError(f"cannot read census input {path}: {exc}") from None
    if magic == _GZIP_MAGIC and path.suffix != ".gz":
        raise InputError(f"census input {path} is gzip-compressed: its name must end in .gz")
    return path


def _read_indexed_lines(spark: SparkSession, path: Path) -> DataFrame:
    """(row_id, line): row_id is the 0-based line number, without RDDs (so also over Spark
    Connect). The text source reads the file in byte-range splits, each in line order;
    ``monotonically_increasing_id`` numbers a partition's rows consecutively, so a line's number
    is its split's first line number (a prefix sum of the per-split counts in byte order: one
    small aggregate, collected) + its distance from the split's first row."""
    text = spark.read.text(str(path)).select(
        F.input_file_block_start().alias("_block"), F.monotonically_increasing_id().alias("_mid"),
        F.col("value").alias("line"))
    splits = sorted((int(r["_block"]), int(r["first_mid"]), int(r["n"])) for r in text.groupBy(
        "_block").agg(F.min("_mid").alias("first_mid"), F.count(F.lit(1)).alias("n")).collect())
    starts, total = [], 0
    for block, first_mid, n in splits:
        starts.append((block, first_mid, total))
        total += n
    offsets = spark.createDataFrame(starts or [(0, 0, 0)], T.StructType(  # non-null: so is row_id
        [T.StructField(c, T.LongType(), nullable=False) for c in ("_block", "_first_mid", "_first")]))
    return (text.join(F.broadcast(offsets), "_block")
            .select((F.col("_first") + F.col("_mid") - F.col("_first_mid")).alias("row_id"), "line"))


def _parse(raw: DataFrame, columns: list[str], null_token: str) -> DataFrame:
    """One trimmed string column per raw field; ``?`` -> null; the label's trailing '.' gone.
    Blank lines are kept (flagged by ``_nfields == 0``) so they can be counted."""
    # Split once into an array column: a separate projection keeps Spark from re-splitting the
    # line for each of the 42 fields.
    split = raw.select(
        "row_id",
        F.when(F.trim(F.col("line"), F.lit(_TRIM)) == "", F.lit(0))
         .otherwise(F.size(F.split(F.col("line"), ",", -1))).alias(_NFIELDS),
        F.split(F.col("line"), ",", -1).alias("_f"),
    )
    out: list[Column] = [F.col("row_id"), F.col(_NFIELDS)]
    for i, name in enumerate(columns):
        value = F.trim(F.get(F.col("_f"), i), F.lit(_TRIM))
        if i == len(columns) - 1:
            value = F.regexp_replace(value, r"\.$", "")
        out.append(F.nullif(value, F.lit(null_token)).alias(name))
    return split.select(*out)


def _numeric_columns(specs: Sequence[DatasetSpec]) -> list[tuple[str, str]]:
    """(column, spark type) of every non-string column any spec writes (besides keys)."""
    seen: dict[str, str] = {}
    for spec in specs:
        for f in features_struct(spec).fields:
            if f.name in spec.key_names or isinstance(f.dataType, T.StringType):
                continue
            seen.setdefault(f.name, f.dataType.simpleString())
    return list(seen.items())


def _check_and_count(parsed: DataFrame, path: Path, columns: list[str],
                     specs: Sequence[DatasetSpec]) -> dict[str, Any]:
    """One pass: line counts, malformed lines, non-numeric values, positives per task."""
    expected = len(columns)
    nf = F.col(_NFIELDS)
    bad = (nf != 0) & (nf != expected)
    aggs: list[Column] = [
        F.count(F.lit(1)).alias("lines"),
        F.sum(F.when(nf == 0, 1).otherwise(0)).alias("blank"),
        F.sum(F.when(bad, 1).otherwise(0)).alias("bad"),
        F.min(F.when(bad, F.col("row_id"))).alias("bad_row"),
    ]
    numeric = _numeric_columns(specs)
    for i, (name, dtype) in enumerate(numeric):
        unparsable = (nf == expected) & F.col(name).isNotNull() & F.col(name).try_cast(dtype).isNull()
        aggs.append(F.sum(F.when(unparsable, 1).otherwise(0)).alias(f"num_bad_{i}"))
        aggs.append(F.min(F.when(unparsable, F.col("row_id"))).alias(f"num_row_{i}"))
    for s, spec in enumerate(specs):
        for t, task in enumerate(spec.tasks):
            aggs.append(F.sum(_positive(task.source, task.positive)).alias(f"pos_{s}_{t}"))
    try:
        row = parsed.agg(*aggs).collect()[0]
    except Exception as exc:  # Py4J / Python worker errors: corrupt gzip, bad encoding, I/O
        raise InputError(f"cannot read census input {path}: {_first_line(exc)}") from None

    lines, blank, n_bad = int(row["lines"]), int(row["blank"] or 0), int(row["bad"] or 0)
    if lines == 0 or lines == blank:
        raise InputError(f"census input {path} has no records")
    if n_bad:
        bad_row = int(row["bad_row"])
        found = parsed.where(F.col("row_id") == bad_row).select(_NFIELDS).first()[0]
        raise InputError(
            f"census input {path}: line {bad_row + 1} (row_id {bad_row}) has {found} "
            f"comma-separated fields, expected {expected}; {n_bad} of {lines} lines are malformed")
    for i, (name, dtype) in enumerate(numeric):
        count = int(row[f"num_bad_{i}"] or 0)
        if count:
            bad_row = int(row[f"num_row_{i}"])
            value = parsed.where(F.col("row_id") == bad_row).select(name).first()[0]
            raise InputError(
                f"census input {path}: line {bad_row + 1} (row_id {bad_row}): column {name} "
                f"value {value!r} is not a {dtype}; {count} of {lines} lines have such values")
    positives = {spec.name: {task.name: int(row[f"pos_{s}_{t}"] or 0)
                             for t, task in enumerate(spec.tasks)}
                 for s, spec in enumerate(specs)}
    return {"lines": lines, "blank": blank, "rows": lines - blank, "positives": positives}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if "Exception" in line or "Error" in line:
            return line.strip()[:300]
    return (text.splitlines() or [type(exc).__name__])[0][:300]


# --------------------------------------------------------------------------------------------
# Tables


def _positive(source: str | None, positive: tuple[str, ...]) -> Column:
    return F.when(F.col(source).isin(list(positive)), F.lit(1)).otherwise(F.lit(0)).cast("int")


def _features_frame(parsed: DataFrame, spec: DatasetSpec) -> DataFrame:
    struct = features_struct(spec)
    cols: list[Column] = []
    for field in struct.fields:
        if field.name in spec.key_names:
            cols.append(F.col(field.name))
        elif isinstance(field.dataType, T.StringType):
            cols.append(F.col(field.name).alias(field.name))
        else:
            cols.append(F.col(field.name).try_cast(field.dataType).alias(field.name))
    frame = parsed.where(F.col(_NFIELDS) != 0).select(*cols)
    _check_schema(frame, struct, spec.name, "features")
    return frame


def _labels_frame(parsed: DataFrame, spec: DatasetSpec) -> DataFrame:
    struct = labels_struct(spec)
    cols = [F.col(k) for k in spec.key_names]
    cols += [_positive(t.source, t.positive).alias(t.name) for t in spec.tasks]
    frame = parsed.where(F.col(_NFIELDS) != 0).select(*cols)
    _check_schema(frame, struct, spec.name, "labels")
    return frame


def _check_schema(frame: DataFrame, struct: T.StructType, dataset: str, table: str) -> None:
    got = [(f.name, f.dataType) for f in frame.schema.fields]
    want = [(f.name, f.dataType) for f in struct.fields]
    if got != want:  # a bug here, not bad input: fail before writing anything
        raise RuntimeError(f"{dataset} {table}: built schema {got} != spec schema {want}")


__all__ = ["DATASETS", "ingest_census"]
