"""The scoring bench's anchors: the model alone, and each precision's parity with fp32.

``model_limit``: the bench rows split into one share per core, one process per share (spawned,
one torch thread each, as a Spark task runs), every share read and encoded into tensors BEFORE
the clock starts; then each process runs the model's forward (+ sigmoid) over its pre-encoded
batches ``repeats`` times, all processes starting together (a barrier). Each process reports
its median rows/s; the limit is their sum: no I/O, no Arrow, no encoding, no Spark, what the
model pass alone can do on this machine.

``precision_parity``: bf16 and int8 against fp32 on the same labelled bench rows (in the
driver): max |Δp| and the AUC difference per task.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np


def _worker(files: Mapping[str, bytes], part: str, columns: list[str], start: int, stop: int,
            batch: int, precision: str, repeats: int, barrier, results) -> None:
    import torch

    from jobs.core.warehouse import read_table
    from mmoe_model.artifact import ModelArtifact

    torch.set_num_threads(1)
    artifact = ModelArtifact.from_files(files).with_precision(precision)
    table = read_table(Path(part), columns=columns).slice(start, stop - start)
    encoded = [artifact.encoder.encode(table.slice(s, batch))
               for s in range(0, table.num_rows, batch)]
    rows = table.num_rows
    model = artifact.model
    with torch.inference_mode():
        model(*encoded[0])  # warm
        barrier.wait()
        rates = []
        for _ in range(repeats):
            began = time.perf_counter()
            for dense, cats in encoded:
                torch.sigmoid(model(dense, cats).double())
            rates.append(rows / (time.perf_counter() - began))
    results.put((start, float(np.median(rates))))


def model_limit(files: Mapping[str, bytes], part: Path, columns: list[str], rows: int,
                batch: int, precision: str, workers: int, repeats: int = 3) -> dict[str, Any]:
    """{"rows_per_s": the sum over ``workers`` processes, "worker_rows_per_s": each one's}."""
    ctx = mp.get_context("spawn")  # no fork of a process that holds a JVM and torch threads
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    bounds = np.linspace(0, rows, workers + 1).astype(int)
    procs = [ctx.Process(target=_worker, args=(dict(files), str(part), columns, int(a), int(b),
                                               batch, precision, repeats, barrier, results))
             for a, b in zip(bounds[:-1], bounds[1:])]
    for proc in procs:
        proc.start()
    try:
        got = sorted(results.get(timeout=1800) for _ in procs)
    finally:
        for proc in procs:
            proc.join(timeout=60)
    per_worker = [round(rate) for _, rate in got]
    return {"rows_per_s": sum(per_worker), "worker_rows_per_s": per_worker}


def precision_parity(artifact, features, labels, task_names: list[str], batch: int
                     ) -> dict[str, Any]:
    """For bf16 and int8 vs fp32 on ``features`` (Arrow) with ``labels`` (pandas, aligned):
    max |Δp| over rows and tasks, and AUC(precision) - AUC(fp32) per task."""
    from sklearn.metrics import roc_auc_score

    base = artifact.predict(features, batch_size=batch)
    auc = {t: roc_auc_score(labels[t], base[:, i]) for i, t in enumerate(task_names)}
    out: dict[str, Any] = {"rows": features.num_rows,
                           "fp32_auc": {t: round(v, 6) for t, v in auc.items()}}
    for precision in ("bf16", "int8"):
        p = artifact.with_precision(precision).predict(features, batch_size=batch)
        out[precision] = {
            "max_abs_dp": float(np.abs(p - base).max()),
            "auc_delta": {t: round(float(roc_auc_score(labels[t], p[:, i]) - auc[t]), 6)
                          for i, t in enumerate(task_names)},
        }
    return out
