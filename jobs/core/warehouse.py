"""The warehouse: the one I/O edge of the jobs (CONTRACT.md, "Tables").

Everything that touches the warehouse's files lives here, and nothing else builds a warehouse
path or lists files:

- **paths** — :class:`Warehouse` builds every table, partition, catalog and run-manifest path
  from validated parts (dates are strict ``YYYY-MM-DD``, names cannot escape the tree);
- **listing** — :func:`parquet_files` (the data files of a directory: names starting with ``.``
  or ``_`` anywhere under it are staging debris or Spark bookkeeping, never data),
  :meth:`Warehouse.has_partition`, :meth:`Warehouse.partitions`, :func:`fingerprint`;
- **footers** — :func:`read_footers` / :func:`count_rows`: schema and row counts without a Spark
  job;
- **atomic replace** — :func:`replacing`, the only way a partition (or an artifact directory)
  is written: the new content goes to a hidden staging sibling, then two renames swap it in;
- **small JSON files** — :func:`write_json` (write to a temporary name, rename),
  :func:`read_json`; the validation ``status.json``, the run manifests and the score stamps
  (``predictions/ds=D/model_version=V/_scored.json``) use them; :func:`append_json_line` /
  :func:`read_json_lines` for append-only logs (the model registry's history);
- **plain file sets** — :func:`read_files` / :func:`write_files_once` (the registry's
  content-addressed artifact copies);
- **locks** — :meth:`Warehouse.lock`, one writer per partition (:mod:`jobs.core.locks`).

Registry layout (per dataset, ``<wh>/<dataset>/models/``, see :mod:`jobs.core.registry`)::

    models/history.jsonl           append-only events: register / promote (who, when, why)
    models/artifacts/<sha256>/     the artifact's files; <sha256> = SHA-256 of its MANIFEST.json

Locks: two kinds, for two jobs. The partition locks (:mod:`jobs.core.locks`) say which job
writes a partition, across processes, with the holder named in a refusal and stale holders
broken; they are files, because a waiter must be able to read who holds them. The ``flock``
inside :func:`replacing` only serialises the two renames of one target and its crash
recovery; the kernel drops it when its process dies, so it can never go stale, and it also
guards writers that are not partitions (a training artifact's directory).

Crash window of :func:`replacing` (documented, tested by ``tests/test_faults.py``, which
kills a job with ``kill -9`` at each point below): the swap is ``target → .old-<name>-<id>``
then ``staging → target``.

- a crash while the body writes, or after it wrote but before the first rename (point
  ``staged``): the previous content is in place, untouched, plus hidden staging debris;
- a crash between the two renames (points ``swapping`` and ``renaming``): no ``target`` (a reader sees the
  partition as absent, never half of it) but a complete ``.old-`` copy, which the next
  :func:`replacing` of that target (or :func:`recover`) renames back before doing anything else;
- a crash after the second rename: the new content is in place; the ``.old-`` copy is debris.

Readers skip hidden names, so debris is never mistaken for data, and the next
:func:`replacing` of the target removes it. Concurrent :func:`replacing` of one target (two
runs of the same job and ds, in any processes on this filesystem) are serialised by an
exclusive ``flock`` on a hidden ``.lock-<name>`` file beside it (deleted when the run is done):
the last to finish wins whole, and one run's recovery never deletes another's staging
directory. The kernel releases the lock when its process dies, so a killed run leaves no stale
lock (at most its hidden, unlocked file, which the next run removes).

Test hook (off by default, for the kill tests only): with ``MMOE_TEST_PAUSE_AT=<point>`` (or
``<point>@<table>``, e.g. ``staged@predictions``) and ``MMOE_TEST_PAUSE_DIR=<dir>``,
:func:`replacing` touches ``<dir>/<point>`` when it reaches that point and then sleeps (up to
10 minutes, or ``MMOE_TEST_PAUSE_SECONDS``) so that a test can ``kill -9`` (or signal) the
process there. Points: ``staged``, ``swapping``
(right after the old copy is renamed away), ``renaming`` (right before the new one is renamed in);
:func:`write_bytes`: ``file_written`` (the temporary file written, not yet renamed over the target).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from jobs.core import signals
from jobs.core.errors import InputError, MissingInputError
from jobs.core.locks import partition_lock

TABLES = ("features", "labels", "predictions", "quarantine", "metrics", "ab_reports",
          "validation", "recommendations", "catalog", "candidates", "models", "_runs", "_locks",
          "_checkpoints", "drift", "candidate_truth", "policy_values")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
HIDDEN = (".", "_")  # staging / old copies, Spark's _temporary, _SUCCESS, .crc files
STATUS_FILE = "status.json"
SCORE_STAMP = "_scored.json"  # in a predictions partition: what it was scored from (hidden name)
PREDICTION_PROFILE = "_drift_profile.json"  # in a predictions partition: its score distribution (drift)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# --------------------------------------------------------------------------------------------
# Validated parts


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
    if not _SAFE_NAME.match(value or "") or ".." in value:
        raise InputError(f"{what} {value!r} may only contain letters, digits, '.', '_' and '-'")
    return value


# Filesystems: the warehouse (locks, staging renames, the model registry, run manifests) needs
# POSIX semantics: O_EXCL creates, flock, atomic rename. Schemes Hadoop (the JVM side) and
# pyarrow (the Python side) can both open may hold catalog tables' files, not the warehouse.
TABLE_SCHEMES = ("hdfs", "viewfs", "s3a", "gs", "abfs", "abfss")
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(//[^/]*)?(/.*)?$")


def local_path(value: str | Path, what: str = "--warehouse") -> Path:
    """A plain path, or a ``file:`` URI (``file:///dir``, ``file:/dir``; also what ``Path``
    makes of ``file:///dir``) for the same place; any other scheme is an :class:`InputError`
    naming it, so nothing is ever created under a directory named like ``file:``."""
    text = str(value)
    match = _URI.match(text)
    if match is None:
        return Path(text).expanduser()
    scheme, authority = match.group(1).lower(), (match.group(2) or "//")[2:]
    if scheme == "file":
        if authority not in ("", "localhost"):
            raise InputError(f"{what} {text!r}: a file:// URI names a local path (file:///dir), "
                             f"not host {authority!r}")
        return Path(match.group(3) or "/")
    if scheme in TABLE_SCHEMES:
        raise InputError(
            f"{what} {text!r}: scheme {scheme!r} cannot hold the warehouse or a job's files: "
            f"the partition locks (O_EXCL files, flock), atomic renames and model registry need "
            f"a POSIX filesystem (a local disk or a mounted NFS path); keep tables there through "
            f"the config's tables: section instead")
    raise InputError(f"{what} {text!r}: unknown filesystem scheme {scheme!r} (a plain path or "
                     f"file://; tables on {', '.join(TABLE_SCHEMES)} go through tables:)")


# --------------------------------------------------------------------------------------------
# Paths


@dataclass(frozen=True)
class Warehouse:
    root: Path

    def table(self, dataset: str, table: str) -> Path:
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        return Path(self.root) / safe_name(dataset, "dataset") / table

    def partition(self, dataset: str, table: str, ds: str, **more: str) -> Path:
        path = self.table(dataset, table) / f"ds={parse_date(ds, 'ds').isoformat()}"
        for key, value in more.items():
            path = path / f"{key}={safe_name(value, key)}"
        return path

    def catalog(self, dataset: str, name: str) -> Path:
        """``<wh>/<dataset>/catalog/<name>`` (``users``, ``items``): their ``ds=D/`` snapshots,
        or (an older layout, still read) one unpartitioned table."""
        return self.table(dataset, "catalog") / safe_name(name, "catalog table")

    def snapshot(self, dataset: str, name: str, ds: str) -> Path:
        """``<wh>/<dataset>/catalog/<name>/ds=D/``: the snapshot of users / items taken on D."""
        return self.catalog(dataset, name) / f"ds={parse_date(ds, 'ds').isoformat()}"

    def runs_dir(self, dataset: str) -> Path:
        return self.table(dataset, "_runs")

    def bench_root(self) -> Path:
        """``<wh>/_bench``: the benches' own warehouse (hidden from every dataset)."""
        return Path(self.root) / "_bench"

    def scratch(self, *parts: str) -> Path:
        """A working path under the root that is no dataset's table (the benches' inputs,
        outputs, results and reference model)."""
        return Path(self.root).joinpath(*[safe_name(p, "scratch path") for p in parts])

    def beside(self, *parts: str) -> Path:
        """A path next to the warehouse root, outside it (the demo's ``artifacts/``)."""
        return Path(self.root).parent.joinpath(*[safe_name(p, "path") for p in parts])

    def ab_report(self, dataset: str, baseline: str, candidate: str, start: str, end: str) -> Path:
        """``ab_reports/report=<baseline>_vs_<candidate>_<start>_<end>/``: one comparison's rows
        (a rerun of the same pair and range replaces it)."""
        return self.table(dataset, "ab_reports") / f"report={report_id(baseline, candidate, start, end)}"

    def ab_report_docs(self, dataset: str, baseline: str, candidate: str, start: str, end: str) -> Path:
        """``ab_reports/_docs/<id>/``: its HTML report and Markdown summary (hidden from parquet
        readers: Spark would try to read any visible file of the table as parquet)."""
        return self.table(dataset, "ab_reports") / "_docs" / report_id(baseline, candidate, start, end)

    def status_path(self, dataset: str, ds: str) -> Path:
        """The validation decision of a ds (``validation/ds=D/status.json``)."""
        return self.partition(dataset, "validation", ds) / STATUS_FILE

    def score_stamp_path(self, dataset: str, ds: str, model_version: str) -> Path:
        """What a predictions partition was scored from (model checksum, features fingerprint);
        written inside the partition by the score stage, read by the backfill's skip check."""
        return self.partition(dataset, "predictions", ds, model_version=model_version) / SCORE_STAMP

    def train_checkpoint(self, dataset: str, out: Path) -> Path:
        """``_checkpoints/<out name>-<hash>/``: the per-epoch checkpoint of ``mmoe train --out
        OUT`` (keyed on OUT's absolute path, so rerunning the same command finds it)."""
        target = Path(out).expanduser().resolve()
        digest = hashlib.sha256(str(target).encode()).hexdigest()[:12]
        name = re.sub(r"[^A-Za-z0-9._-]", "_", target.name).lstrip("._") or "model"
        return self.table(dataset, "_checkpoints") / f"{name}-{digest}"

    # ---- the model registry (jobs/core/registry.py)

    def registry_history(self, dataset: str) -> Path:
        return self.table(dataset, "models") / "history.jsonl"

    def registry_artifact(self, dataset: str, sha256: str) -> Path:
        """The content-addressed copy of an artifact: named by the SHA-256 of its MANIFEST.json."""
        if not _SHA256.match(sha256 or ""):
            raise InputError(f"artifact checksum {sha256!r} is not a SHA-256 hex digest")
        return self.table(dataset, "models") / "artifacts" / sha256

    def registry_datasets(self) -> list[str]:
        """The datasets that have a model registry, sorted."""
        root = Path(self.root)
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir()
                      if _SAFE_NAME.match(p.name) and (p / "models" / "history.jsonl").is_file())

    # ---- locks

    def lock_path(self, dataset: str, table: str, ds: str | None = None,
                  model_version: str | None = None) -> Path:
        """``_locks/<table>[.ds=D][.model_version=V].lock``: one lock per written partition."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        name = table
        if ds is not None:
            name += f".ds={parse_date(ds, 'ds').isoformat()}"
        if model_version is not None:
            name += f".model_version={safe_name(model_version, 'model_version')}"
        return self.table(dataset, "_locks") / f"{name}.lock"

    def ab_report_lock(self, dataset: str, baseline: str, candidate: str, start: str, end: str,
                       *, wait_seconds: float = 0.0, poll_seconds: float = 0.5):
        """The lock of one comparison's rows and report (one pair and range)."""
        report = report_id(baseline, candidate, start, end)
        return partition_lock(self.table(dataset, "_locks") / f"ab_reports.report={report}.lock",
                              f"{dataset} ab_reports report={report}",
                              wait_seconds=wait_seconds, poll_seconds=poll_seconds)

    def lock(self, dataset: str, table: str, ds: str | None = None,
             model_version: str | None = None, *, wait_seconds: float = 0.0,
             poll_seconds: float = 0.5):
        """The context manager holding the lock of one partition (see :func:`partition_lock`)."""
        what = " ".join([dataset, table] + ([f"ds={ds}"] if ds else [])
                        + ([f"model_version={model_version}"] if model_version else []))
        return partition_lock(self.lock_path(dataset, table, ds, model_version), what,
                              wait_seconds=wait_seconds, poll_seconds=poll_seconds)

    def has_partition(self, dataset: str, table: str, ds: str, **more: str) -> bool:
        """True when the partition holds at least one data file."""
        return bool(parquet_files(self.partition(dataset, table, ds, **more)))

    def partitions(self, dataset: str, table: str) -> list[str]:
        """The ds values present in a table (visible ``ds=`` directories), sorted."""
        return ds_directories(self.table(dataset, table))

    def sub_partitions(self, dataset: str, table: str, ds: str, key: str) -> list[str]:
        """The values of ``key`` under one ds that hold data, e.g. the model versions with
        predictions for a day."""
        base = self.partition(dataset, table, ds)
        if not base.is_dir():
            return []
        prefix = f"{key}="
        return sorted(p.name[len(prefix):] for p in base.iterdir()
                      if p.is_dir() and p.name.startswith(prefix) and parquet_files(p))


def report_id(baseline: str, candidate: str, start: str, end: str) -> str:
    return (f"{safe_name(baseline, 'baseline')}_vs_{safe_name(candidate, 'candidate')}_"
            f"{parse_date(start, 'start').isoformat()}_{parse_date(end, 'end').isoformat()}")


# --------------------------------------------------------------------------------------------
# Listing and footers


def visible_files(directory: Path, pattern: str = "*") -> list[Path]:
    """The files of a directory tree matching ``pattern``, sorted, as Spark lists them: nothing
    under a hidden name (``_``/``.``, e.g. ``_SUCCESS`` or a failed attempt's partial file)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob(pattern) if p.is_file()
                  and not any(part.startswith(HIDDEN) for part in p.relative_to(directory).parts))


def ds_directories(base: Path) -> list[str]:
    """The ds values of the visible ``ds=YYYY-MM-DD`` directories under ``base``, sorted."""
    if not base.is_dir():
        return []
    return sorted(p.name[3:] for p in base.iterdir()
                  if p.is_dir() and p.name.startswith("ds=") and _DATE.match(p.name[3:]))


def parquet_files(directory: Path) -> list[Path]:
    """The data files of a directory, sorted; nothing under a hidden name counts."""
    return visible_files(directory, "*.parquet")


def spark_paths(directory: Path) -> list[str]:
    """The data files of a partition, for ``spark.read.parquet(*paths)``: Spark then reads
    exactly what :func:`parquet_files` lists (a stray non-parquet file, e.g. a README dropped
    into a partition, is not data) instead of everything non-hidden in the directory."""
    files = parquet_files(directory)
    if not files:
        raise FileNotFoundError(f"{directory} has no parquet files")
    return [str(p) for p in files]


def require_columns(present: list[str], columns: list[str], what: str, where: Path | str,
                    error: type[Exception] = MissingInputError) -> None:
    """The one column check of a partition read: ``error`` naming what lacks which columns."""
    missing = [c for c in columns if c not in present]
    if missing:
        raise error(f"{what} at {where} lacks column(s) {missing}", details={"path": str(where)})


def discard_hidden(directory: Path) -> None:
    """Delete the hidden files directly in ``directory`` (partial files of failed task attempts
    in a staging directory); data files are untouched."""
    directory = Path(directory)
    for path in directory.iterdir() if directory.is_dir() else ():
        if path.name.startswith(".") and path.is_file():
            path.unlink(missing_ok=True)


def fingerprint(directory: Path) -> list[list]:
    """Names and sizes of a partition's files: a rewrite (new part-file names) or a file changed
    in place (a new size) changes it."""
    directory = Path(directory)
    return [[str(p.relative_to(directory)), p.stat().st_size] for p in parquet_files(directory)]


def read_footers(files: list[Path]):
    """The unified arrow schema (field metadata dropped) and total row count of parquet files,
    from their footers. Raises ``ValueError`` naming the file that cannot be read, or the
    directory whose files disagree on the schema."""
    # deferred: the CLI imports this module and must start without pyarrow
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas, rows = [], 0
    for path in files:
        try:
            meta = pq.read_metadata(path)
        except (OSError, pa.ArrowException) as exc:
            raise ValueError(f"cannot read parquet file {path}: "
                             f"{(str(exc).splitlines() or [''])[0]}") from None
        rows += meta.num_rows
        schemas.append(meta.schema.to_arrow_schema())
    try:
        schema = pa.unify_schemas(schemas)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"the files of {os.path.dirname(str(files[0]))} disagree on their "
                         f"schema: "
                         f"{(str(exc).splitlines() or [''])[0]}") from None
    return pa.schema([f.remove_metadata() for f in schema]), rows


def footer_ranges(files: list[Path], columns: list[str]) -> dict[str, tuple[Any, Any]]:
    """(min, max) of each of ``columns`` over the files' row groups, from the footers'
    statistics (no data read); a column some non-empty row group keeps no min/max for (all
    null, or a writer that skips them) is left out."""
    import pyarrow.parquet as pq  # deferred: the CLI imports this module, without pyarrow

    seen: dict[str, list] = {c: [] for c in columns}
    for path in files:
        meta = pq.read_metadata(path)
        index = {meta.schema.column(i).name: i for i in range(meta.num_columns)}
        for group in (meta.row_group(g) for g in range(meta.num_row_groups)):
            for c in columns:
                st = group.column(index[c]).statistics if c in index else None
                ok = st is not None and st.has_min_max
                seen[c].append((st.min, st.max) if ok else None)
    return {c: (min(v[0] for v in got), max(v[1] for v in got)) for c, got in seen.items()
            if got and None not in got}


def count_rows(directory: Path) -> int:
    """Rows of a directory's data files, from their footers (0 when it has none)."""
    files = parquet_files(directory)
    return read_footers(files)[1] if files else 0


def read_table(directory: Path, columns: list[str] | None = None):
    """A (small) directory's data files as one arrow table, read on the driver."""
    import pyarrow.dataset as pads  # deferred: see read_footers

    files = parquet_files(directory)
    if not files:
        raise FileNotFoundError(f"{directory} has no parquet files")
    return pads.dataset([str(p) for p in files], format="parquet").to_table(columns=columns)


# --------------------------------------------------------------------------------------------
# Atomic replace


def _sibling(target: Path, kind: str, token: str) -> Path:
    return target.parent / f".{kind}-{target.name}-{token}"


def recover(target: Path) -> None:
    """Undo a swap interrupted between its two renames: no ``target`` but an ``.old-`` copy of
    it → rename the newest copy back. Leftover staging, old and removed copies are deleted.
    Call it only while holding the target's lock (:func:`replacing` does)."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    name = glob_escape(target.name)
    olds = sorted(target.parent.glob(f".old-{name}-*"), key=lambda p: p.stat().st_mtime)
    if olds and not target.exists():
        olds.pop().rename(target)
    debris = olds + list(target.parent.glob(f".staging-{name}-*")) \
        + list(target.parent.glob(f".removed-{name}-*"))
    for path in debris:
        shutil.rmtree(path, ignore_errors=True)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


PAUSE_ENV, PAUSE_DIR_ENV = "MMOE_TEST_PAUSE_AT", "MMOE_TEST_PAUSE_DIR"
PAUSE_SECONDS_ENV = "MMOE_TEST_PAUSE_SECONDS"   # how long the pause lasts (default 600)


def _pause_point(point: str, target: Path) -> None:
    """The kill tests' hook (module docstring); a no-op unless ``MMOE_TEST_PAUSE_AT`` names
    ``point`` (optionally ``point@table``, matched against the target's path components)."""
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted:
        return
    name, _, table = wanted.partition("@")
    if name != point or (table and table not in target.parts):
        return
    marker_dir = Path(os.environ.get(PAUSE_DIR_ENV) or target.parent)
    marker_dir.mkdir(parents=True, exist_ok=True)
    (marker_dir / point).write_text(str(target))
    time.sleep(float(os.environ.get(PAUSE_SECONDS_ENV) or 600))


@contextmanager
def _locked(target: Path) -> Iterator[None]:
    """An exclusive lock on ``target`` (a hidden ``.lock-<name>`` file beside it), held until
    the block ends; the kernel drops it if the process dies. The holder deletes the lock file
    before releasing it, so none is left behind; a waiter that then gets the lock on the deleted
    file notices (the path no longer names the inode it locked) and locks afresh."""
    lock = target.parent / f".lock-{target.name}"
    while True:
        handle = open(lock, "a+")
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            current = os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        handle.close()
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        handle.close()  # releases the lock


@contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """Replace the directory ``target`` as a whole.

    Yields a hidden staging path beside it (not yet created: Spark's writer creates it, direct
    writers ``mkdir`` it). When the body returns, the staging directory is swapped in for
    ``target`` (created empty when the body wrote nothing); when the body raises, it is removed
    and ``target`` is left as it was. Holds the target's lock throughout. See the module
    docstring for the crash window.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target):
        recover(target)
        token = uuid.uuid4().hex[:12]
        staging = _sibling(target, "staging", token)
        try:
            yield staging
            staging.mkdir(parents=True, exist_ok=True)
            _pause_point("staged", target)
            old = _sibling(target, "old", token)
            with signals.deferred():  # a SIGTERM waits until the two renames are done
                if target.exists():
                    target.rename(old)
                    _pause_point("swapping", target)
                _pause_point("renaming", target)  # the last moment before the new copy goes in
                staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def remove(target: Path) -> None:
    """Delete a partition (e.g. a stale quarantine) so that no reader sees it."""
    target = Path(target)
    if target.exists():
        doomed = _sibling(target, "removed", uuid.uuid4().hex[:12])
        target.rename(doomed)  # one rename: readers see all of it or none
        shutil.rmtree(doomed, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Small JSON files


def write_text(path: Path, text: str) -> Path:
    """Write a small text file (an HTML report) atomically (temporary name, then rename)."""
    return write_bytes(path, text.encode())


def write_bytes(path: Path, data: bytes) -> Path:
    """Write a file (an exported model) atomically (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    _pause_point("file_written", path)
    tmp.replace(path)
    return path


def write_json(path: Path, payload: Any, indent: int | None = 1) -> Path:
    """Write JSON atomically (temporary name, then rename)."""
    text = json.dumps(payload, indent=indent, default=str) + "\n"
    return write_bytes(path, text.encode())


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it does not exist; ``ValueError`` when it is unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None


def append_json_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON object as one line. One ``write`` on an ``O_APPEND`` descriptor: concurrent
    appenders never interleave inside a line; fsync'ed, since the history is the record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """Every object of a JSON-lines file ([] when it does not exist); ``ValueError`` names the
    first unreadable line."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as exc:
            raise ValueError(f"{path} line {number} is not JSON: {exc}") from None
    return records


# --------------------------------------------------------------------------------------------
# Plain file sets (content-addressed artifact copies)


def read_files(directory: Path) -> dict[str, bytes]:
    """The top-level, non-hidden files of a directory by name ({} when it does not exist)."""
    directory = Path(directory)
    if not directory.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())
            if p.is_file() and not p.name.startswith(HIDDEN)}


def read_bytes(path: Path, what: str) -> bytes:
    """One file's bytes (a model file a user names), or a one-line MissingInputError."""
    try:
        return Path(path).read_bytes()
    except IsADirectoryError:
        raise MissingInputError(f"{what} {path} is a directory, not a file") from None
    except OSError as exc:
        raise MissingInputError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None


def write_files_once(target: Path, files: dict[str, bytes]) -> bool:
    """Write a content-addressed directory unless it exists (its name is its content): staged
    and swapped in whole by :func:`replacing`. Returns True when it was written now."""
    target = Path(target)
    recover(target)
    if target.is_dir():
        return False
    with replacing(target) as staging:
        staging.mkdir(parents=True)
        for name, data in files.items():
            (staging / name).write_bytes(data)
    return True


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
