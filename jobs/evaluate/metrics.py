"""Offline metrics of scored multi-task predictions, computed in Spark (no driver collect).

``compute_metrics`` turns a wide scored frame (``model_version``, segment columns, the user
column, and per task ``t`` a 0/1 label column ``t`` and a score column ``p_t``) into the long
metrics table (``schemas.tables.METRICS_STRUCT``): one row per model_version x task x segment x
metric. Segments are ``all`` and ``<column>=<value>`` for every value of every segment column
(a null value reads ``<column>=null``).

Metrics (``n`` is always the number of rows of the group):

- ``count``, ``positives``;
- ``auc``: exact ROC AUC, tied scores count 1/2 (equals ``sklearn.metrics.roc_auc_score``);
  null when the group has a single class;
- ``pr_auc``: average precision, step-wise, tied scores forming one threshold (equals
  ``sklearn.metrics.average_precision_score``); null without positives;
- ``gauc``: per-user AUC weighted by the user's rows in the group, over the users having both
  classes (null when there is none); ``gauc_users`` / ``gauc_excluded_users`` count the users
  used / the single-class users left out. Rows with a null user are left out of these three.
  Without a user column the three values are null;
- ``logloss`` (p clipped to [1e-15, 1 - 1e-15]), ``ne`` = logloss / entropy of the group's base
  rate (null when the base rate is 0 or 1), ``calibration`` = mean(p) / observed rate (null
  without positives); ``mean_prediction`` = mean(p) and ``label_rate`` = the observed rate
  (each metrics partition is one day: the two side by side show prediction drift against the
  labels).

Labels count as positive when > 0. Per task, rows whose label or score is null or NaN are left
out of that task's metrics; rows with a null model_version are left out.

How it scales
-------------
Exact rank metrics need each group's rows in score order. Spark's row sorter and window
functions cost microseconds per row and per segment level, and so does handing stacked rows to
Python one by one, so the plan is a single chain with one shuffle of the data:

1. ``mapInArrow`` over the input (each row crosses to Python once, with all its tasks): numpy
   stacks the tasks and, per row and task, computes a score bucket - a non-decreasing function
   of the score built from its IEEE-754 bits (32 buckets per octave of p, and of 1 - p above
   0.5), so a bucket holds a contiguous score range and tied scores never straddle buckets. Rows
   are cut by destination - (task, bucket) for the global metrics, user for GAUC - and leave as
   compact Arrow IPC blobs (a handful per input partition and destination).
2. One Spark shuffle of those blobs (bytes, not rows) to max(``spark.sql.shuffle.partitions``,
   default parallelism) partitions, each destination mapped to its own partition; with hundreds
   of occupied buckets per task the global work spreads evenly.
3. ``mapInArrow`` per shuffle partition: numpy sorts once by score and, per segment level
   (``all`` + one per segment column), only re-orders by small integer codes (radix passes),
   then emits one record per (model_version, task, segment, bucket) with counts, loss sums, the
   exact within-bucket AUC pair count and the cumulative counts at its positive thresholds, and
   one record per (model_version, task, segment) with the GAUC sums of its users (all of a
   user's rows are in the partition).
4. A grouped pandas step per (model_version, task, segment) adds the cross-bucket terms
   exactly: AUC pairs += positives(b) x negatives(buckets below b); precision at a threshold
   adds the rows / positives of the higher buckets. AUC numerators are int64 pair counts. The
   group's sums become values through ``jobs.core.metric_registry`` (names, order, formulas).

Work is O(rows x tasks x (log rows + segment columns)) numpy operations spread over the shuffle
partitions; the shuffled volume is ~20 bytes per row and task (plus the user side for GAUC).
Memory per receiving partition is its share of the stacked rows; one (task, bucket) - e.g.
millions of identical scores - cannot be split. The scored frame is scanned once; what is
aggregated after the shuffle is at most a few thousand records per group. Lazy until an action.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs.core import metric_registry
from jobs.core.errors import MissingInputError
from jobs.core.spark import default_parallelism
from mmoe_model.hashing import splitmix64, value_hash64
from schemas.tables import METRICS_STRUCT, ddl_arrow_schema

EPS = 1e-15
METRICS = metric_registry.ENGINE  # the metrics table's metrics, in display order
FLUSH_ROWS = 1 << 20          # input rows a sender gathers before cutting blobs
_MANTISSA_SHIFT = 52 - 5      # keep 5 mantissa bits: 32 buckets per octave
_HALF_BUCKET = int(np.array(0.5).view(np.int64)) >> _MANTISSA_SHIFT

_MV, _U = "model_version", "__u"
_G = ["model_version", "task", "segment"]
_GLOBAL, _GAUC = 0, 1

_BLOB_SCHEMA = "dest int, kind byte, blob binary"
_PARTIAL_SCHEMA = ("model_version string, task string, segment string, kind byte, b int, "
                   "cb long, pb long, ll double, ps double, w2 long, ap_w binary, ap_a binary, "
                   "ap_c binary, wsum double, wcount long, users long, excluded long")
_GROUP_SCHEMA = ", ".join(["model_version string, task string, segment string, n long",
                           *(f"{m} double" for m in METRICS)])


# --------------------------------------------------------------------------------------------
# Small numpy helpers


def score_bucket(s: np.ndarray) -> np.ndarray:
    """Non-decreasing int32 bucket of scores (clipped to [0, 1]); equal scores share a bucket.

    Built from the IEEE-754 bits (monotone for non-negative doubles): 32 buckets per octave of
    p up to 0.5 and, mirrored, of 1 - p above it, so both tails get fine buckets."""
    p = np.clip(s, 0.0, 1.0) + 0.0  # + 0.0 turns -0.0 into 0.0
    low = p <= 0.5
    b = np.empty(len(p), dtype=np.int64)
    b[low] = p[low].view(np.int64) >> _MANTISSA_SHIFT
    high = ~low
    b[high] = 2 * _HALF_BUCKET + 1 - ((1.0 - p[high]).view(np.int64) >> _MANTISSA_SHIFT)
    return b.astype(np.int32)


def _value_hashes(values: pa.Array) -> np.ndarray:
    """A deterministic (process independent) uint64 hash per value of a non-null array."""
    if pa.types.is_integer(values.type):
        return splitmix64(values.to_numpy(zero_copy_only=False).astype(np.int64))
    return value_hash64(values.to_pylist(), integer=False)


def _spark_hash_int(value: int, seed: int = 42) -> int:
    """Spark's Murmur3 hash of an int column value (``hash(col)``, hash partitioning)."""
    mask = 0xFFFFFFFF

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & mask

    k1 = rotl((value & mask) * 0xCC9E2D51 & mask, 15) * 0x1B873593 & mask
    h1 = (rotl(seed ^ k1, 13) * 5 + 0xE6546B64) & mask
    h1 ^= 4
    h1 ^= h1 >> 16
    h1 = h1 * 0x85EBCA6B & mask
    h1 ^= h1 >> 13
    h1 = h1 * 0xC2B2AE35 & mask
    h1 ^= h1 >> 16
    return h1 - (1 << 32) if h1 >= 1 << 31 else h1


def _dest_keys(partitions: int) -> list[int]:
    """For each shuffle partition p, a ``dest`` value that Spark's hash partitioning sends to p
    (so blobs spread evenly; were Spark's hash to change, only the balance would suffer)."""
    keys: dict[int, int] = {}
    value = 0
    while len(keys) < partitions:
        keys.setdefault(_spark_hash_int(value) % partitions, value)
        value += 1
    return [keys[p] for p in range(partitions)]


def _codes(arr: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list]:
    """Dense int64 codes of a (non-null) Arrow column and the values they stand for."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()  # unifies the dictionaries of dictionary chunks
    enc = arr if pa.types.is_dictionary(arr.type) else arr.dictionary_encode()
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary.to_pylist()


def _encode(arr: pa.ChunkedArray | pa.Array) -> pa.DictionaryArray:
    """Dictionary-encode a column with the narrowest index type (small blobs)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    enc = arr.dictionary_encode()
    if len(enc.dictionary) < 2**15:
        enc = pa.DictionaryArray.from_arrays(enc.indices.cast(pa.int16()), enc.dictionary)
    return enc


def _combine(*codes: np.ndarray) -> np.ndarray:
    """One int64 key per row, equal exactly when all the code columns are equal."""
    key = np.zeros(len(codes[0]), dtype=np.int64)
    for c in codes:
        c = c.astype(np.int64)
        card = int(c.max()) + 1 if len(c) else 1
        top = int(key.max()) + 1 if len(key) else 1
        if top * card >= 2**62:
            key = np.unique(key, return_inverse=True)[1].astype(np.int64).reshape(-1)
            top = int(key.max()) + 1
        key = key * card + c
    return key


def _small(codes: np.ndarray) -> np.ndarray:
    """Non-negative codes in the narrowest type (numpy's stable sort is a radix sort to 16 bits)."""
    top = int(codes.max()) if len(codes) else 0
    return codes.astype(np.int16 if top < 2**15 else np.int32 if top < 2**31 else np.int64)


def _then_by(order: np.ndarray, codes: np.ndarray | None) -> np.ndarray:
    """``order`` re-sorted stably by ``codes[order]``: ordered by (codes, previous order)."""
    if codes is None or not len(order):
        return order
    keyed = codes[order]
    if keyed.min() == keyed.max():
        return order
    return order[np.argsort(keyed, kind="stable")]


class _Sorted:
    """Counts per group (run of equal key) and per tie run (equal key and score) of rows ordered
    so that every group is contiguous and in ascending score order inside."""

    def __init__(self, key: np.ndarray, s: np.ndarray, y: np.ndarray):
        n = len(key)
        new_group = np.ones(n, dtype=bool)
        new_group[1:] = key[1:] != key[:-1]
        new_run = new_group.copy()
        new_run[1:] |= s[1:] != s[:-1]
        self.group_rows = np.flatnonzero(new_group)            # first row of each group
        run_rows = np.flatnonzero(new_run)
        self.pos_run = np.add.reduceat(y, run_rows)
        self.cnt_run = np.diff(np.append(run_rows, n))
        first_run = new_group[run_rows]
        self.group_of_run = np.cumsum(first_run) - 1
        self.group_runs = np.flatnonzero(first_run)             # first run of each group
        self.pos_before = self._before(self.pos_run)
        self.cnt_before = self._before(self.cnt_run)
        self.positives = np.add.reduceat(self.pos_run, self.group_runs)
        self.count = np.add.reduceat(self.cnt_run, self.group_runs)
        neg_before = self.cnt_before - self.pos_before
        neg_run = self.cnt_run - self.pos_run
        # 2 x (pairs where the positive scores higher + tied pairs / 2): exact, int64
        self.w2 = np.add.reduceat(self.pos_run * (2 * neg_before + neg_run), self.group_runs)

    def _before(self, x: np.ndarray) -> np.ndarray:
        """Per run: the sum of ``x`` over the earlier runs of its group."""
        excl = np.cumsum(x) - x
        return excl - excl[self.group_runs][self.group_of_run]

    def sums(self, values: np.ndarray) -> np.ndarray:
        """Per-group sums of a per-row array (in the sorted order)."""
        return np.add.reduceat(values, self.group_rows)


def _blob(table: pa.Table) -> pa.Array:
    """``table`` as a one-element binary array holding its Arrow IPC stream (no extra copy)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    data = sink.getvalue()
    offsets = pa.py_buffer(np.array([0, data.size], dtype=np.int32))
    return pa.Array.from_buffers(pa.binary(), 1, [None, offsets, data])


def _unblob(blobs: list[pa.Buffer]) -> pa.Table | None:
    if not blobs:
        return None
    tables = []
    for blob in blobs:
        table = pa.ipc.open_stream(blob).read_all()
        # the senders' dictionaries differ and their index widths may too: align the types
        schema = pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), f.type.value_type))
                            if pa.types.is_dictionary(f.type) else f for f in table.schema])
        tables.append(table.cast(schema))
    return pa.concat_tables(tables)


# --------------------------------------------------------------------------------------------
# Step 1: senders (one pass over the input)


def _send(batches: Iterator[pa.RecordBatch], tasks: list[str], n_segments: int,
          with_user: bool, dest_keys: list[int]) -> Iterator[pa.RecordBatch]:
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        pending.append(batch)
        rows += batch.num_rows
        if rows >= FLUSH_ROWS:
            yield from _cut(pa.Table.from_batches(pending), tasks, n_segments, with_user, dest_keys)
            pending, rows = [], 0
    if rows:
        yield from _cut(pa.Table.from_batches(pending), tasks, n_segments, with_user, dest_keys)


def _split(table: pa.Table, part: np.ndarray, kind: int, dest_keys: list[int]) -> Iterator[pa.RecordBatch]:
    order = np.argsort(_small(part), kind="stable")
    table = table.take(pa.array(order))
    bounds = np.searchsorted(part[order], np.arange(len(dest_keys) + 1))
    for p in range(len(dest_keys)):
        if bounds[p + 1] > bounds[p]:
            blob = _blob(table.slice(bounds[p], bounds[p + 1] - bounds[p]))
            yield pa.RecordBatch.from_arrays(
                [pa.array([dest_keys[p]], pa.int32()), pa.array([kind], pa.int8()), blob],
                names=["dest", "kind", "blob"])


def _labels_scores(table: pa.Table, ti: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int8 (1 positive, 0 negative, -1 left out) and scores as float64 of task ti."""
    label = table.column(f"__y{ti}").combine_chunks()
    s = table.column(f"__s{ti}").to_numpy().astype(np.float64)  # null -> NaN
    y = (label.fill_null(0).to_numpy(zero_copy_only=False) > 0).astype(np.int8)
    y[np.asarray(label.is_null()) | np.isnan(s)] = -1
    return y, s


def _cut(table: pa.Table, tasks: list[str], n_segments: int, with_user: bool,
         dest_keys: list[int]) -> Iterator[pa.RecordBatch]:
    parts = len(dest_keys)
    segs = [f"__seg{i}" for i in range(n_segments)]
    labels_scores = [_labels_scores(table, ti) for ti in range(len(tasks))]
    keys = pa.table({c: _encode(table.column(c)) for c in [_MV, *segs]})
    # Global: stacked (model_version, segments, task, label, score); destination by (task,
    # score bucket), so all rows of a task's bucket meet in one partition.
    pieces, dest = [], []
    for ti, (y, s) in enumerate(labels_scores):
        keep = np.flatnonzero(y >= 0)
        piece = keys.take(pa.array(keep))
        pieces.append(piece.append_column("t", pa.array(np.full(len(keep), ti, np.int8)))
                      .append_column("y", pa.array(y[keep]))
                      .append_column("s", pa.array(s[keep])))
        bucket = score_bucket(s[keep]).astype(np.int64)
        dest.append((splitmix64(bucket * 64 + ti) % np.uint64(parts)).astype(np.int64))
    yield from _split(pa.concat_tables(pieces), np.concatenate(dest), _GLOBAL, dest_keys)
    if not with_user:
        return
    # GAUC: the wide rows that have a user, by user (all rows of a user meet in one partition).
    users = _encode(table.column(_U))
    has_user = np.asarray(users.is_valid())
    codes = users.indices.to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(has_user)
    if not len(rows):
        return
    part = (_value_hashes(users.dictionary)[codes[rows].astype(np.int64)] % np.uint64(parts)).astype(np.int64)
    take = pa.array(rows)
    wide = keys.take(take).append_column(_U, users.take(take))
    for ti, (y, s) in enumerate(labels_scores):
        wide = wide.append_column(f"y{ti}", pa.array(y[rows])).append_column(f"s{ti}", pa.array(s[rows]))
    yield from _split(wide, part, _GAUC, dest_keys)


# --------------------------------------------------------------------------------------------
# Step 3: receivers (per shuffle partition)


def _receive(batches: Iterator[pa.RecordBatch], tasks: list[str],
             segments: list[str]) -> Iterator[pa.RecordBatch]:
    blobs: dict[int, list[pa.Buffer]] = {_GLOBAL: [], _GAUC: []}
    for batch in batches:
        column = batch.column("blob")
        for i, kind in enumerate(batch.column("kind").to_pylist()):
            blobs[kind].append(column[i].as_buffer())  # zero-copy view
    schema = ddl_arrow_schema(_PARTIAL_SCHEMA)
    table = _unblob(blobs.pop(_GLOBAL))
    if table is not None:
        task = table.column("t").to_numpy()
        for ti in np.unique(task):  # one task at a time: smaller sorts, less memory
            for cols in _bucket_records(table.filter(pa.array(task == ti)), tasks, segments):
                yield _record_batch(cols, _GLOBAL, schema)
        del table, task
    table = _unblob(blobs.pop(_GAUC))
    if table is not None:
        for cols in _gauc_records(table, tasks, segments):
            yield _record_batch(cols, _GAUC, schema)


def _record_batch(cols: dict, kind: int, schema: pa.Schema) -> pa.RecordBatch:
    n = len(cols["model_version"])
    cols["kind"] = np.full(n, kind, np.int8)
    return pa.RecordBatch.from_pydict(
        {f.name: cols.get(f.name, pa.nulls(n, f.type)) for f in schema}, schema=schema)


def _segment_levels(table: pa.Table, segments: list[str]) -> list[tuple[str | None, np.ndarray | None, list]]:
    levels: list[tuple[str | None, np.ndarray | None, list]] = [(None, None, ["all"])]
    for i, col in enumerate(segments):
        codes, values = _codes(table.column(f"__seg{i}"))
        levels.append((col, _small(codes), values))
    return levels


def _segment_names(col: str | None, seg: np.ndarray | None, values: list, rows: np.ndarray) -> list[str]:
    if seg is None:
        return ["all"] * len(rows)
    return [f"{col}={values[k]}" for k in seg[rows]]


def _bucket_records(table: pa.Table, tasks: list[str], segments: list[str]) -> Iterator[dict]:
    """One record per (model_version, task, segment, bucket) present in the partition."""
    mv, mv_names = _codes(table.column(_MV))
    task = table.column("t").to_numpy().astype(np.int64)
    s = table.column("s").to_numpy()
    b = score_bucket(s).astype(np.int64)
    y = table.column("y").to_numpy().astype(np.int64)
    p = np.clip(s, EPS, 1.0 - EPS)
    loss = -np.log(np.where(y == 1, p, 1.0 - p))
    base = _combine(mv, task, b - b.min())
    # Buckets are monotone in the score, so score order is (bucket, score) order; two stable
    # radix passes make it (model_version, task, bucket, score).
    by_base = _then_by(_then_by(np.argsort(s), _small(task)), _small(mv))
    for col, seg, values in _segment_levels(table, segments):
        order = _then_by(by_base, seg)
        key = base if seg is None else _combine(seg, base)
        s_sorted = s[order]
        st = _Sorted(key[order], s_sorted, y[order])
        first = order[st.group_rows]
        # AP: at each positive threshold, the bucket's positives / rows scoring >= it
        has_pos = st.pos_run > 0
        w = st.pos_run[has_pos]
        a = (st.positives[st.group_of_run] - st.pos_before)[has_pos]
        c = (st.count[st.group_of_run] - st.cnt_before)[has_pos]
        cuts = np.searchsorted(np.flatnonzero(has_pos), st.group_runs[1:])
        yield {
            "model_version": [mv_names[k] for k in mv[first]],
            "task": [tasks[k] for k in task[first]],
            "segment": _segment_names(col, seg, values, first),
            "b": b[first].astype(np.int32),
            "cb": st.count, "pb": st.positives,
            "ll": st.sums(loss[order]), "ps": st.sums(s_sorted), "w2": st.w2,
            "ap_w": [x.tobytes() for x in np.split(w.astype(np.int64), cuts)],
            "ap_a": [x.tobytes() for x in np.split(a.astype(np.int64), cuts)],
            "ap_c": [x.tobytes() for x in np.split(c.astype(np.int64), cuts)],
        }


def _gauc_records(table: pa.Table, tasks: list[str], segments: list[str]) -> Iterator[dict]:
    """Per (model_version, task, segment): the row-weighted sum of the AUCs of the users with
    both classes, its weight, and the counts of used / single-class users."""
    mv, mv_names = _codes(table.column(_MV))
    user, _ = _codes(table.column(_U))
    base = _combine(mv, user)
    levels = _segment_levels(table, segments)
    mv_small, user_small = _small(mv), _small(user)
    for ti, t in enumerate(tasks):
        y_all = table.column(f"y{ti}").to_numpy()
        rows = np.flatnonzero(y_all >= 0)
        if not len(rows):
            continue
        y = y_all[rows].astype(np.int64)
        s = table.column(f"s{ti}").to_numpy()[rows]
        # (model_version, user, score) order; a segment level adds one radix pass in front
        by_user = _then_by(_then_by(np.argsort(s), user_small[rows]), mv_small[rows])
        for col, seg, values in levels:
            seg_rows = None if seg is None else seg[rows]
            order = _then_by(by_user, seg_rows)
            key = base[rows] if seg_rows is None else _combine(seg_rows, base[rows])
            st = _Sorted(key[order], s[order], y[order])  # a group per (segment, version, user)
            first = rows[order[st.group_rows]]
            both = (st.positives > 0) & (st.positives < st.count)
            pairs = np.maximum(2.0 * st.positives * (st.count - st.positives), 1.0)
            weighted = np.where(both, st.count * (st.w2 / pairs), 0.0)
            out_key = mv[first] if seg is None else _combine(mv[first], seg[first])
            uniq, inv = np.unique(out_key, return_inverse=True)
            inv = inv.reshape(-1)
            pick = np.zeros(len(uniq), dtype=np.int64)
            pick[inv] = first
            yield {
                "model_version": [mv_names[k] for k in mv[pick]],
                "task": [t] * len(uniq),
                "segment": _segment_names(col, seg, values, pick),
                "wsum": np.bincount(inv, weights=weighted, minlength=len(uniq)),
                "wcount": np.bincount(inv, weights=np.where(both, st.count, 0),
                                      minlength=len(uniq)).astype(np.int64),
                "users": np.bincount(inv, weights=both, minlength=len(uniq)).astype(np.int64),
                "excluded": np.bincount(inv, weights=~both, minlength=len(uniq)).astype(np.int64),
            }


# --------------------------------------------------------------------------------------------
# Step 4: per group


def _combine_group(pdf: pd.DataFrame, with_user: bool) -> pd.DataFrame:
    """All partial records of one (model_version, task, segment) -> its sums -> its metric
    values (``jobs.core.metric_registry``, the formulas compare uses too)."""
    buckets = pdf[pdf["kind"] == _GLOBAL].sort_values("b")
    users = pdf[pdf["kind"] == _GAUC]
    pb = buckets["pb"].to_numpy(np.int64)
    cb = buckets["cb"].to_numpy(np.int64)
    nb = cb - pb
    neg_below = np.cumsum(nb) - nb
    pos_above = pb.sum() - np.cumsum(pb)
    cnt_above = cb.sum() - np.cumsum(cb)
    auc2 = int(buckets["w2"].sum()) + 2 * int((pb * neg_below).sum())
    w = [np.frombuffer(x, dtype=np.int64) for x in buckets["ap_w"]]
    lengths = np.array([len(x) for x in w], dtype=np.int64)
    ap_sum = 0.0
    if lengths.sum():
        a = np.concatenate([np.frombuffer(x, dtype=np.int64) for x in buckets["ap_a"]])
        c = np.concatenate([np.frombuffer(x, dtype=np.int64) for x in buckets["ap_c"]])
        tp_ge = a + np.repeat(pos_above, lengths)
        n_ge = c + np.repeat(cnt_above, lengths)
        ap_sum = float(np.sum(np.concatenate(w) * (tp_ge / n_ge)))
    gauc_users = gauc_excluded = np.nan  # no user column: the three GAUC values are null
    if with_user:
        gauc_users, gauc_excluded = int(users["users"].sum()), int(users["excluded"].sum())
    sums = metric_registry.Sums(
        count=int(cb.sum()), positives=int(pb.sum()), p_sum=float(buckets["ps"].sum()),
        logloss_sum=float(buckets["ll"].sum()), auc2=auc2, ap_sum=ap_sum,
        gauc_sum=float(users["wsum"].sum()), gauc_rows=int(users["wcount"].sum()),
        gauc_users=gauc_users, gauc_excluded=gauc_excluded)
    first = pdf.iloc[0]
    out = {"model_version": [first["model_version"]], "task": [first["task"]],
           "segment": [first["segment"]], "n": [int(cb.sum())]}
    out.update({name: [float(v)] for name, v in metric_registry.values(sums, METRICS).items()})
    return pd.DataFrame(out)


# --------------------------------------------------------------------------------------------
# Spark plumbing


def shuffle_partitions(scored: DataFrame) -> int:
    """spark.sql.shuffle.partitions, raised to the default parallelism (every core busy)."""
    session = scored.sparkSession
    try:
        configured = int(session.conf.get("spark.sql.shuffle.partitions"))
    except (TypeError, ValueError):
        configured = 200
    return max(1, configured, default_parallelism(session))


def compute_metrics(scored: DataFrame, tasks: list[str], segment_columns: list[str],
                    user_column: str | None) -> DataFrame:
    """The metrics table (``METRICS_STRUCT``) of a wide scored frame; see the module docstring.

    Raises :class:`MissingInputError` when a needed column is absent.
    """
    tasks = list(dict.fromkeys(tasks))
    segment_columns = list(dict.fromkeys(segment_columns))
    if not tasks:
        raise MissingInputError("compute_metrics: no tasks given")
    needed = [_MV, *segment_columns, *tasks, *(f"p_{t}" for t in tasks)]
    if user_column is not None:
        needed.append(user_column)
    missing = [c for c in dict.fromkeys(needed) if c not in scored.columns]
    if missing:
        raise MissingInputError(f"scored frame lacks column(s) {missing}")

    cols: list[Column] = [F.col(_MV).cast("string").alias(_MV)]
    cols += [F.coalesce(F.col(c).cast("string"), F.lit("null")).alias(f"__seg{i}")
             for i, c in enumerate(segment_columns)]
    for i, t in enumerate(tasks):
        cols += [F.col(t).cast("int").alias(f"__y{i}"), F.col(f"p_{t}").cast("double").alias(f"__s{i}")]
    if user_column is not None:
        cols.append(F.col(user_column).alias(_U))
    rows = scored.where(F.col(_MV).isNotNull()).select(*cols)

    parts = shuffle_partitions(scored)
    blobs = rows.mapInArrow(
        partial(_send, tasks=tasks, n_segments=len(segment_columns),
                with_user=user_column is not None, dest_keys=_dest_keys(parts)),
        _BLOB_SCHEMA)
    partials = blobs.repartition(parts, "dest").mapInArrow(
        partial(_receive, tasks=tasks, segments=segment_columns), _PARTIAL_SCHEMA)
    with_user = user_column is not None

    def combine(pdf: pd.DataFrame) -> pd.DataFrame:  # a plain function: Spark reads its hints
        return _combine_group(pdf, with_user)

    groups = partials.groupBy(*_G).applyInPandas(combine, _GROUP_SCHEMA)
    # NaN (undefined: one class, no positives, no user) is stored as null
    metric = F.explode(F.array(*[
        F.struct(F.lit(name).alias("metric"),
                 F.when(~F.isnan(F.col(name)), F.col(name)).alias("value"))
        for name in METRICS])).alias("m")
    long = groups.select(*_G, "n", metric)
    return (long.select(*_G, F.col("m.metric").alias("metric"), F.col("m.value").alias("value"), "n")
            .select(*(F.col(f.name).cast(f.dataType) for f in METRICS_STRUCT.fields)))
