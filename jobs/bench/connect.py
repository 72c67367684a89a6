"""The Spark Connect column of `mmoe bench scoring --connect URL`: the same data and model scored
by the two readers (direct: fragments → mapInArrow; spark: parquet → mapInArrow) from a Connect
client of ``URL``.

A classic and a Connect session cannot share a Python process (pyspark switches its functions to
Connect process-wide), so the bench runs this module as a subprocess and merges its JSON line:

    python -m jobs.bench.connect REQUEST.json   # {"remote", "warehouse", "batch_size", "conf", ...}
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from jobs.bench.common import _score_direct, _timed
from jobs.core.config import JobConfig, load_config
from jobs.core.spark import get_spark, session_conf
from jobs.score.stage import score_frame, spread_partitions
from mmoe_model.artifact import ModelArtifact, read_artifact_files
from schemas import load_spec


def connect_runs(cfg: JobConfig, part: Path, model_dir: Path) -> dict[str, float]:
    """Seconds of each reader over Connect (after an untimed warm-up of the server's workers)."""
    spec = load_spec("synth")
    files = read_artifact_files(model_dir)
    artifact = ModelArtifact.from_files(files)
    spark = get_spark(cfg.spark)
    out_root = Path(cfg.warehouse) / "bench-out-connect"
    scored_at = dt.datetime.now(dt.timezone.utc)
    batch = cfg.scoring.batch_size
    with session_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch": str(batch)}):
        features = spread_partitions(spark, spark.read.parquet(str(part)))
        score_frame(spark, features.limit(4 * batch), files, artifact, spec, cfg,
                    scored_at).write.mode("overwrite").parquet(str(out_root / "warmup"))
        direct, _ = _timed(lambda: _score_direct(spark, part, files, artifact, spec, cfg,
                                                 out_root / "direct", scored_at))
        reader, _ = _timed(lambda: score_frame(spark, features, files, artifact, spec, cfg,
                                               scored_at).write.mode("overwrite").parquet(
            str(out_root / "spark_reader")))
    return {"direct_seconds": direct, "spark_reader_seconds": reader}


def connect_columns(remote: str, cfg: JobConfig, part: Path, model_dir: Path, rows: int,
                    classic: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`connect_runs` in a Connect client subprocess (same warehouse, Spark settings
    and scoring settings as the classic runs); the bench's Connect columns and their speed
    ratios to the classic ones of the same run (Connect rows/s ÷ classic rows/s)."""
    request = {"remote": remote, "warehouse": str(cfg.warehouse), "part": str(part),
               "model": str(model_dir), "conf": dict(cfg.spark.conf),
               "scoring": {"batch_size": cfg.scoring.batch_size, "pipeline": cfg.scoring.pipeline,
                           "threads_per_task": cfg.scoring.threads_per_task}}
    request_path = Path(cfg.warehouse) / "_bench" / "connect-request.json"
    request_path.parent.mkdir(parents=True, exist_ok=True)
    request_path.write_text(json.dumps(request))
    proc = subprocess.run([sys.executable, "-m", "jobs.bench.connect", str(request_path)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the Connect bench failed: {proc.stderr.strip().splitlines()[-1:]}")
    seconds = json.loads(proc.stdout.strip().splitlines()[-1])
    direct, reader = seconds["direct_seconds"], seconds["spark_reader_seconds"]
    return {
        "connect_rows_per_s": round(rows / direct),
        "connect_spark_reader_rows_per_s": round(rows / reader),
        "connect_vs_classic": round(rows / direct / classic["ours_rows_per_s"], 2),
        "connect_spark_reader_vs_classic": round(
            rows / reader / classic["ours_spark_reader_rows_per_s"], 2),
    }


if __name__ == "__main__":
    req = json.loads(Path(sys.argv[1]).read_text())
    job_cfg = load_config(None, req["warehouse"], req["remote"])
    job_cfg.spark.conf.update(req["conf"])
    for key, value in req["scoring"].items():
        setattr(job_cfg.scoring, key, value)
    print(json.dumps(connect_runs(job_cfg, Path(req["part"]), Path(req["model"]))))
