"""Issue 22 item 7: an A/B's arms in one command. ``mmoe backfill --model A --model B`` validates
each day once and scores/evaluates every model, writing exactly the tables two single-model
backfills write; a day that fails for one model does not stop the other. Item 5 for backfill:
the per-day table on stderr, no colour codes when stderr is not a terminal."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from _reliability import job_config_file
from tiny_models import tiny_model
from typer.testing import CliRunner

from jobs.backfill.stage import backfill_range
from jobs.core.registry import promote_model, register_model
from jobs.core.warehouse import Warehouse, parquet_files
from schemas import load_spec

START, END = "2025-03-01", "2025-03-02"
DAYS = [START, END]
ROWS = 150
ANSI = re.compile(r"\x1b\[")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("ab-models")
    return tiny_model(base / "a", seed=21), tiny_model(base / "b", seed=22)


def _warehouse(root, models):
    """Two days of synth data, @champion = A from before the range, @challenger = B from the
    range's second day only (so on the first day the challenger has no model in force)."""
    from jobs.core.config import load_config
    from jobs.data.synth import generate_synth

    root.mkdir(parents=True)
    config = job_config_file(root / "config.yaml", validation={"keep_data_docs": False},
                             evaluation={"segments": [], "label_wait_days": 0})
    cfg = load_config(config, root / "wh")
    generate_synth(cfg, START, len(DAYS), ROWS, seed=5)
    register_model(cfg, models[0], alias="champion", effective="2025-01-01")
    b = register_model(cfg, models[1]).version
    promote_model(cfg, b, "challenger", effective=END)
    return cfg, config


def _tables(spark, cfg) -> dict:
    """Every predictions, metrics and quarantine partition, whole (predictions without the run
    timestamp ``scored_at``), keyed by its path under the warehouse."""
    wh = Warehouse(cfg.warehouse)
    out = {}
    for table in ("predictions", "metrics", "quarantine", "validation"):
        root = wh.table("synth", table)
        for part in sorted({f.parent for f in root.rglob("*.parquet")}):
            if any(p.startswith((".", "_")) for p in part.relative_to(root).parts):
                continue
            frame = spark.read.parquet(*[str(f) for f in parquet_files(part)])
            frame = frame.drop("scored_at", "validated_at", "run_id")
            out[str(part.relative_to(wh.root))] = sorted(map(tuple, frame.collect()), key=repr)
    return out


def test_two_models_in_one_backfill_equal_two_single_backfills(spark, tmp_path, models):
    from jobs.cli import app

    one, config = _warehouse(tmp_path / "one", models)
    out = CliRunner().invoke(app, ["--config", str(config), "--warehouse",
                                   str(one.warehouse), "backfill", "--dataset",
                                   "synth", "--start", START, "--end", END, "--model",
                                   "@champion", "--model", "@challenger"])
    # the challenger has nothing in force on the first day: that model-day fails, the run
    # fails, the champion's two days and the challenger's second day are done
    assert out.exit_code == 1, out.output
    manifest = json.loads(out.stdout.strip().splitlines()[-1])
    days = manifest["details"]["days"]
    assert [(d["ds"], d["model"], d["status"]) for d in days] == [
        (START, "@champion", "scored"), (START, "@challenger", "failed"),
        (END, "@champion", "scored"), (END, "@challenger", "scored")]
    assert "no @challenger" in days[1]["error"] or "challenger" in days[1]["error"]
    assert [d["evaluation"] for d in days if d["status"] == "scored"] == ["evaluated"] * 3
    # validated once per day, before the models: no model's row reuses another's validation
    assert [d["validation"] for d in days] == ["passed", None, "passed", "passed"]
    assert manifest["details"]["models"] == ["@champion", "@challenger"]
    assert manifest["details"]["counts_by_model"] == {
        "@champion": {"scored": 2, "skipped": 0, "failed": 0, "not_run": 0},
        "@challenger": {"scored": 1, "skipped": 0, "failed": 1, "not_run": 0}}
    # validated once per day, shared: one validation run each, the quarantine counted once
    runs = Warehouse(one.warehouse).runs_dir("synth")
    assert manifest["quarantined_rows"] == sum({d["ds"]: d["quarantined_rows"] for d in days}
                                               .values())
    assert manifest["output_rows"] == sum(d["output_rows"] for d in days)
    assert runs.is_dir()

    # stderr: one line per model-day, the per-day table with the model column, the counts,
    # the error line last; no colour codes and no progress bar (CliRunner's stderr is no tty)
    err = out.stderr.strip().splitlines()
    assert not ANSI.search(out.stderr) and "\r" not in out.stderr
    assert err[-1].startswith(f"error: backfill synth {START}..{END}: 1 of 4 model-day(s) "
                              f"failed; first {START} @challenger:")
    assert any(line.startswith(f"backfill synth {START} @challenger: failed") for line in err)
    header = next(i for i, line in enumerate(err) if line.split()[:3] == ["ds", "model", "status"])
    table = [line.split() for line in err[header + 1:header + 5]]
    assert [row[:3] for row in table] == [[d["ds"], d["model"], d["status"]] for d in days]
    assert err[header + 5] == "4 model-day(s) (2 models): 3 scored, 1 failed"

    # the same two models, one backfill each, in a second warehouse with the same data
    two, _ = _warehouse(tmp_path / "two", models)
    spec = load_spec("synth")
    singles = [backfill_range(spark, two, spec, START, END, m, as_of=dt.date(2025, 3, 10))
               for m in ("@champion", "@challenger")]
    assert [d.status for d in singles[1].days] == ["failed", "scored"]
    assert singles[1].days[0].error == days[1]["error"]
    mine, theirs = _tables(spark, one), _tables(spark, two)
    assert sorted(mine) == sorted(theirs) and len(mine) == 3 + 2  # 3 model-days, 2 days
    assert any("model_version=" in k for k in mine) and any("metrics" in k for k in mine)
    for key in mine:
        assert mine[key] == theirs[key], key
    # per model, the same counts as its single-model run
    for single in singles:
        mine_days = [d for d in days if d["model"] == single.models[0]]
        assert [(d["status"], d["model_version"], d["input_rows"], d["output_rows"])
                for d in mine_days] == [(d.status, d.model_version, d.input_rows, d.output_rows)
                                        for d in single.days]

    # run again: every model-day that was done is skipped, the failed one fails again
    again = backfill_range(spark, one, spec, START, END, ["@champion", "@challenger"],
                           as_of=dt.date(2025, 3, 10))
    assert [d.status for d in again.days] == ["skipped", "failed", "skipped", "skipped"]
    assert [d.validation for d in again.days if d.status == "skipped"] == \
        ["passed (reused)"] * 3


def test_a_failed_validation_fails_the_day_for_every_model_and_the_same_model_twice_is_refused(
        spark, tmp_path, models):
    from jobs.core.errors import InputError

    cfg, _ = _warehouse(tmp_path / "wh", models)
    promote_model(cfg, register_model(cfg, models[1]).version, "challenger", effective=START)
    for f in parquet_files(Warehouse(cfg.warehouse).partition("synth", "features", START)):
        f.unlink()
    spec = load_spec("synth")
    result = backfill_range(spark, cfg, spec, START, START, ["@champion", "@challenger"],
                            as_of=dt.date(2025, 3, 10))  # the failing day alone: nothing scored
    assert [(d.status, d.validation) for d in result.days] == [("failed", "failed")] * 2
    assert result.days[0].error == result.days[1].error
    assert result.record().details["counts"]["failed"] == 2
    with pytest.raises(InputError, match="given more than once"):
        backfill_range(spark, cfg, spec, START, END, ["@champion", "@champion"])


def test_the_backfill_dag_passes_every_model_and_the_cli_parses_them():
    import typer.main

    from airflow_dags.runner import build_command, model_values
    from jobs.cli import app

    assert model_values("@champion") == ["@champion"]
    assert model_values(["@champion", "@challenger"]) == ["@champion", "@challenger"]
    cmd = build_command(["backfill"], None, "synth", None, None, "mmoe", start=START, end=END,
                        model=model_values(["@champion", "@challenger"]))
    assert cmd == ["mmoe", "backfill", "--dataset", "synth", "--start", START, "--end", END,
                   "--model", "@champion", "--model", "@challenger"]
    sub = typer.main.get_command(app).commands["backfill"].make_context("backfill", cmd[2:])
    assert list(sub.params["model"]) == ["@champion", "@challenger"]


def test_summaries_colour_their_status_words_only_on_a_terminal(monkeypatch):
    import io

    from jobs.cli.summary import summarize, use_colour

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_colour(Terminal()) and not use_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(Terminal())
    day = {"ds": START, "model": "@a", "status": "scored", "model_version": "v1",
           "validation": "passed", "input_rows": 10, "output_rows": 10, "quarantined_rows": 0,
           "evaluation": "evaluated", "seconds": 1.0, "error": None}
    manifest = {"job": "backfill", "dataset": "synth", "ds": START, "status": "failed",
                "details": {"models": ["@a", "@b"], "counts": {"scored": 1, "failed": 1},
                            "days": [day, {**day, "model": "@b", "status": "failed",
                                           "error": "boom"}]}}
    plain, coloured = summarize(manifest), summarize(manifest, colour=True)
    assert not ANSI.search(plain) and ANSI.search(coloured)
    assert re.sub(r"\x1b\[\d+m", "", coloured) == plain  # the same text, aligned the same
    assert "\x1b[31mfailed\x1b[0m" in coloured and "\x1b[32mscored\x1b[0m" in coloured
    # a failed job other than a backfill has no summary: its one error line says it all
    assert summarize({**manifest, "job": "score"}) is None
