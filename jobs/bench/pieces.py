"""Where one direct-reader Python worker spends its time, piece by piece, in process:
``python -m jobs.bench.pieces [--rows N] [--warehouse DIR]`` (JSON on the last stdout line).

The same steps as :func:`jobs.score.direct.score_fragments`'s task, timed one at a time on one
thread over the bench's synth partition and its reference MMoE (jobs/bench/common.py): parquet
read of the columns the job reads, encoding (Arrow → numpy → tensors), the torch forward pass,
the onnxruntime forward pass of the same model's exported graph (its feeds included), output
assembly (keys + p_<task> + scored_at as an Arrow batch) and the parquet write. Each figure is
CPU-µs per row (process CPU time, the best of ``repeats``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.parquet as pq
import torch

from jobs.bench.common import _bench_config, ensure_synth_partition, reference_artifact
from jobs.core.config import JobConfig, load_config
from jobs.core.warehouse import parquet_files
from jobs.runtime.kernel import arrow_schema, score_batch, utc_us
from jobs.runtime.onnx import exported_graph
from jobs.score.direct import predictions_writer
from mmoe_model.artifact import ModelArtifact
from mmoe_model.onnx_graph import OnnxRunner, check_graph, graph_feeds
from schemas import load_spec
from schemas.tables import predictions_struct


def _best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        began = time.process_time()
        out = fn()
        best = min(best, time.process_time() - began)
    return best, out


class _Fixed:
    """An 'artifact' whose predictions are already known: score_batch then times the assembly."""

    def __init__(self, probs: list[np.ndarray]) -> None:
        self.probs, self.i = probs, 0

    def predict(self, frame, with_gates=False):
        p = self.probs[self.i % len(self.probs)]
        self.i += 1
        return p


def bench_pieces(cfg: JobConfig, rows: int = 200_000, repeats: int = 3) -> dict[str, Any]:
    cfg = _bench_config(cfg)
    spec = load_spec("synth")
    part = ensure_synth_partition(cfg, rows)
    artifact = ModelArtifact.load(reference_artifact(cfg))
    torch.set_num_threads(1)
    path = parquet_files(part)[0]
    keys, features = spec.key_names, spec.feature_names
    columns = list(dict.fromkeys(keys + features))
    batch_size = cfg.scoring.batch_size

    def read():
        return list(pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns))

    t_read, batches = _best(read, repeats)
    n = sum(b.num_rows for b in batches)
    t_read_all, _ = _best(lambda: list(pq.ParquetFile(path).iter_batches(batch_size=batch_size)),
                          repeats)
    t_encode, encoded = _best(lambda: [artifact.encoder.encode(b.select(features))
                                       for b in batches], repeats)

    def forward():
        with torch.inference_mode():
            return [torch.sigmoid(artifact.model(d, c).double()).numpy() for d, c in encoded]

    t_model, probs = _best(forward, repeats)
    graph = exported_graph(artifact)
    runner = OnnxRunner(graph, spec, check_graph(graph, spec), threads=1)
    t_feeds, feeds = _best(lambda: [graph_feeds(b, spec, runner.signature.inputs)
                                    for b in batches], repeats)
    t_ort, _ = _best(lambda: [runner.session.run(list(runner.signature.outputs), f)
                              for f in feeds], repeats)
    schema = arrow_schema(predictions_struct(spec))
    stamp = utc_us(dt.datetime.now(dt.timezone.utc))
    fixed = _Fixed(probs)
    t_assemble, scored = _best(lambda: [score_batch(fixed, b, features, keys, len(spec.tasks),
                                                    schema, stamp, False) for b in batches],
                               repeats)
    with tempfile.TemporaryDirectory() as tmp:
        def write():
            with predictions_writer(Path(tmp) / "out.parquet", schema) as writer:
                for s in scored:
                    writer.write_batch(s)

        t_write, _ = _best(write, repeats)
    us = {name: round(t / n * 1e6, 3) for name, t in [
        ("parquet_read_model_columns", t_read), ("parquet_read_all_columns", t_read_all),
        ("encode", t_encode), ("torch_forward", t_model), ("onnx_feeds", t_feeds),
        ("onnxruntime_forward", t_ort), ("output_assembly", t_assemble),
        ("parquet_write", t_write)]}
    us["torch_path_total"] = round(us["parquet_read_model_columns"] + us["encode"]
                                   + us["torch_forward"] + us["output_assembly"]
                                   + us["parquet_write"], 3)
    us["onnxruntime_path_total"] = round(us["torch_path_total"] - us["encode"]
                                         - us["torch_forward"] + us["onnx_feeds"]
                                         + us["onnxruntime_forward"], 3)
    return {"rows": n, "batch_size": batch_size, "threads": 1, "cpu_us_per_row": us,
            "loadavg": Path("/proc/loadavg").read_text().split()[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warehouse", type=Path, default=None)
    args = parser.parse_args()
    print(json.dumps(bench_pieces(load_config(warehouse=args.warehouse), args.rows,
                                  args.repeats)))


if __name__ == "__main__":
    main()
