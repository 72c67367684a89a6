"""Run `mmoe` commands (and the public UDF) as ONE Spark Connect client process.

A classic and a Connect session cannot share a process (pyspark switches its functions to
Connect process-wide once a remote session exists), so the tests run this in a subprocess:

    python tests/_connect_client.py PLAN.json   # [{"args": [...]}, {"udf": {...}}, ...]

It prints one JSON line per step: ``{"exit_code", "stdout_last", "stderr_last", "seconds"}`` for
a command (run in-process through typer's CliRunner, so the session and its shipped code are
set up once), ``{"rows": [...]}`` for a UDF step.
"""

from __future__ import annotations

import json
import sys
import time

from typer.testing import CliRunner

from jobs.cli import app


def run_command(runner: CliRunner, args: list[str]) -> dict:
    started = time.perf_counter()
    result = runner.invoke(app, args)
    out = result.stdout.strip().splitlines()
    err = result.stderr.strip().splitlines()
    return {"args": args, "exit_code": result.exit_code, "stdout_last": out[-1] if out else "",
            "stderr_last": err[-1] if err else "", "seconds": time.perf_counter() - started,
            "exception": None if result.exit_code == 0 or result.exception is None
            else repr(result.exception)[:500]}


def run_udf(step: dict) -> dict:
    """The public UDF over Connect, through select and SQL, on a parquet table."""
    from pyspark.sql import SparkSession

    from jobs.core.spark import ship_code
    from jobs.runtime.udf import mmoe_udf

    spark = SparkSession.builder.remote(step["remote"]).getOrCreate()
    ship_code(spark)
    score = mmoe_udf(step["model"])
    frame = spark.read.parquet(step["features"])
    key = step["key"]
    selected = frame.select(key, score(*score.input_columns).alias("p")).select(key, "p.*")
    frame.createOrReplaceTempView("features_t")
    spark.udf.register("mmoe_score", score)
    tasks = ", ".join(f"s.{c} AS {c}" for c in score.output_columns)
    sql = spark.sql(f"SELECT {key}, {tasks} FROM (SELECT {key}, "
                    f"mmoe_score({', '.join(score.input_columns)}) AS s FROM features_t)")
    return {"select": [r.asDict() for r in selected.collect()],
            "sql": [r.asDict() for r in sql.collect()], "columns": score.output_columns}


def main(plan_path: str) -> None:
    runner = CliRunner()
    for step in json.load(open(plan_path)):
        result = run_udf(step["udf"]) if "udf" in step else run_command(runner, step["args"])
        print(json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
