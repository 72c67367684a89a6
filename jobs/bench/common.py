"""What every bench shares: the bench warehouse and config, the reference model, the machine
facts, timing and the results file."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

from jobs.core.config import JobConfig
from jobs.core.warehouse import Warehouse, parquet_files, read_table, replacing
from jobs.data.synth import generate_synth
from jobs.score.stage import (
    parquet_fragments,
    score_fragments,
)
from mmoe_model.artifact import save_artifact
from mmoe_model.features import FeatureEncoder, InputLayout
from mmoe_model.models import ModelConfig, build_model
from schemas import load_spec

BENCH_DS = "2026-01-01"


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def _bench_config(cfg: JobConfig) -> JobConfig:
    import copy

    bench_cfg = copy.deepcopy(cfg)
    bench_cfg.warehouse = Warehouse(cfg.warehouse).bench_root()
    return bench_cfg


def ensure_synth_partition(cfg: JobConfig, rows: int, seed: int = 0) -> Path:
    """A synth features/labels partition of exactly ``rows`` rows (generated once, then reused)."""
    part = Warehouse(cfg.warehouse).partition("synth", "features", BENCH_DS)
    marker = part.parent / f".rows-{BENCH_DS}"
    snapshot = Warehouse(cfg.warehouse).snapshot("synth", "users", BENCH_DS)
    if not (marker.exists() and marker.read_text() == str(rows) and snapshot.is_dir()):
        generate_synth(cfg, BENCH_DS, 1, rows, seed=seed)
        marker.write_text(str(rows))
    return part


def reference_artifact(cfg: JobConfig, sample_rows: int = 20000) -> Path:
    """The reference MMoE (the model library's defaults) with seeded random weights (speed does not depend on training)."""
    import torch

    spec = load_spec("synth")
    out = Warehouse(cfg.warehouse).scratch("reference-mmoe")
    if (out / "MANIFEST.json").exists():
        return out
    part = Warehouse(cfg.warehouse).partition("synth", "features", BENCH_DS)
    sample = read_table(part).slice(0, sample_rows)
    encoder = FeatureEncoder.fit(spec, sample)
    torch.manual_seed(0)
    model_config = ModelConfig(arch="mmoe")  # the library's default MMoE: the documented reference
    model = build_model(model_config, InputLayout.from_spec(spec), len(spec.tasks)).eval()
    save_artifact(out, model, model_config, spec, encoder, {"note": "benchmark reference, untrained"})
    return out


def _machine() -> dict[str, Any]:
    import pyspark
    import torch

    return {"machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                       f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
            "python": platform.python_version(), "pyspark": pyspark.__version__,
            "torch": torch.__version__}


def results_path(cfg: JobConfig, results: Path | None) -> Path:
    """Where a bench appends its results: the user's path, else under the bench warehouse."""
    return Path(results) if results is not None else Warehouse(cfg.warehouse).scratch("benchmarks.md")


def _append_doc(path: Path, title: str, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text("# Benchmarks\n\nRaw results appended by `mmoe bench`; the summary and "
                        "analysis are in docs/performance.md.\n")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with path.open("a") as fh:
        fh.write(f"\n## {title} — {stamp}\n\n`{' '.join(['mmoe', *sys.argv[1:]])}`\n\n```json\n"
                 f"{json.dumps(result, indent=1, default=str)}\n```\n")


def _score_direct(spark, part: Path, files, artifact, spec, cfg: JobConfig, out: Path,
                  scored_at: dt.datetime, max_fragments: int | None = None) -> int:
    fragments = parquet_fragments(parquet_files(part))[:max_fragments]
    with replacing(out) as staging:
        return score_fragments(spark, fragments, files, artifact, spec, cfg, staging, scored_at,
                               False, None)


def _run_harness(name: str, harness: Callable[[JobConfig, int], dict[str, Any]], cfg: JobConfig,
                 rows: int, results: Path | None, record: bool) -> dict[str, Any]:
    """Run a bench harness on the bench warehouse, add the machine, append to the results."""
    bench_cfg = _bench_config(cfg)
    result = harness(bench_cfg, rows) | _machine()
    if record:
        _append_doc(results_path(bench_cfg, results), f"{name}, {result['rows']:,} rows", result)
    return result
