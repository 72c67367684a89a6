"""The CLI refuses bad input before any work, with one line on stderr and a failed manifest."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from jobs.cli import app
from jobs.core.config import load_config
from jobs.core.errors import ConfigError

runner = CliRunner()


def _run(args, tmp_path, env=None):
    return runner.invoke(app, ["--warehouse", str(tmp_path / "wh"), *args], env=env)


@pytest.mark.parametrize("bad_ds", ["2026-13-01", "../x", "2026-1-01", "20261101", "2026-02-30"])
@pytest.mark.parametrize("command", [
    ["validate", "--dataset", "synth"],
    ["evaluate", "--dataset", "synth"],
    ["score", "--dataset", "synth", "--model", "/nonexistent"],
    ["data", "census", "--input", "/nonexistent"],
])
def test_bad_dates_are_refused_before_any_work(tmp_path, bad_ds, command):
    result = _run([*command, "--ds", bad_ds], tmp_path)
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--ds must be YYYY-MM-DD" in result.stderr or "is not a valid date" in result.stderr
    manifest = json.loads(result.stdout.strip().splitlines()[-1])
    assert manifest["status"] == "failed"
    assert manifest["ds"] == bad_ds
    assert not (tmp_path / "wh").exists()  # nothing written, not even a manifest


def test_bad_dataset_and_arch_are_refused(tmp_path):
    result = _run(["validate", "--dataset", "../etc", "--ds", "2026-11-01"], tmp_path)
    assert result.exit_code == 2 and "--dataset '../etc'" in result.stderr
    result = _run(["validate", "--dataset", "nope", "--ds", "2026-11-01"], tmp_path)
    assert result.exit_code != 0 and "unknown dataset 'nope'" in result.stderr
    result = _run(["train", "--dataset", "synth", "--arch", "xgboost", "--start", "2026-11-01",
                   "--end", "2026-11-02", "--out", str(tmp_path / "m")], tmp_path)
    assert result.exit_code == 2 and "--arch must be one of" in result.stderr
    result = _run(["train", "--dataset", "synth", "--arch", "mmoe", "--start", "2026-11-03",
                   "--end", "2026-11-02", "--out", str(tmp_path / "m")], tmp_path)
    assert result.exit_code == 2 and "before --start" in result.stderr


def test_manifest_has_the_contract_fields_on_failure(tmp_path):
    result = _run(["evaluate", "--dataset", "synth", "--ds", "2026-13-01"], tmp_path)
    manifest = json.loads(result.stdout.strip().splitlines()[-1])
    for field in ("job", "dataset", "ds", "status", "input_rows", "output_rows", "quarantined_rows",
                  "model_version", "model_sha256", "started_at", "finished_at", "manifest_path"):
        assert field in manifest


def test_config_file_and_env_override(tmp_path, monkeypatch):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("warehouse: /tmp/somewhere\nvalidation: {max_bad_row_fraction: 0.2}\n")
    cfg = load_config(cfg_file)
    assert str(cfg.warehouse) == "/tmp/somewhere"
    assert cfg.validation.max_bad_row_fraction == 0.2
    assert cfg.scoring.batch_size == 8192  # defaults fill what the file leaves out
    assert load_config(cfg_file, tmp_path / "wh2").warehouse == (tmp_path / "wh2").resolve()
    cfg_file.write_text("validation: {max_bad_rows: 0.2}\n")
    with pytest.raises(ConfigError, match=r"config.validation: unknown key\(s\) \['max_bad_rows'\]"):
        load_config(cfg_file)
    result = runner.invoke(app, ["validate", "--dataset", "synth", "--ds", "2026-11-01"],
                           env={"MMOE_CONFIG": str(cfg_file)})
    assert result.exit_code == 2 and "unknown key(s)" in result.stderr


def test_train_gate_option_is_checked(tmp_path):
    result = _run(["train", "--dataset", "synth", "--arch", "mmoe", "--start", "2026-11-01",
                   "--end", "2026-11-02", "--out", str(tmp_path / "m"), "--gate", "argmax"],
                  tmp_path)
    assert result.exit_code == 2 and "--gate must be one of softmax, topk, max, constant" \
        in result.stderr


def _leaf_commands(group, path=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (typer carries its own copy of click)
            yield from _leaf_commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_help_shows_flags_bare_and_every_option_described():
    """`--help` of every command: a flag shows no value placeholder (Typer's rich help printed
    `--force <bool>`), dates, data sets and models are named as such, and every option says
    what it is."""
    import typer.main

    for path, command in _leaf_commands(typer.main.get_command(app)):
        text = runner.invoke(app, [*path, "--help"], terminal_width=100).stdout
        assert "<bool>" not in text and "╭" not in text, (path, text)
        for param in command.params:
            if param.param_type_name != "option":
                continue
            assert param.help, (path, param.name)  # described
            # a value is named as the README's CLI block names it (N, DATE, FILE...), never
            # by Typer's type placeholder (`--days <int range>`, `--out <path>`)
            assert not re.search(rf"{re.escape(param.opts[0])}(/\S+)? <", text), (path, text)
            if param.opts[0] in ("--ds", "--start", "--end", "--effective"):
                assert f"{param.opts[0]} DATE" in text, (path, text)
            if param.opts[0] in ("--dataset",):
                assert "--dataset NAME" in text, (path, text)


@pytest.mark.parametrize("group", [[], ["data"], ["models"]])
def test_command_lists_are_not_cut_short(group):
    """Each command's one-line summary fits the listing (click cuts a long first sentence with
    '...', as `backfill  Validate, score and evaluate every day of a range in one...` was)."""
    text = runner.invoke(app, [*group, "--help"], terminal_width=80).stdout
    listing = text.split("Commands:")[1].strip().splitlines()
    assert listing and all(not line.rstrip().endswith("...") for line in listing), listing


def test_py4j_root_logger_tracebacks_stay_off_stderr(tmp_path):
    """py4j logs a lost JVM connection with the module-level ``logging.exception`` (seen once
    after SIGTERM to a job's process group): the console script keeps that off stderr, while
    any other warning still reaches it. In a fresh interpreter, as the console script runs."""
    import subprocess
    import sys

    fake = tmp_path / "py4j" / "java_gateway.py"  # a module of a directory named py4j
    fake.parent.mkdir()
    fake.write_text("import logging\n"
                    "def send():\n"
                    "    try:\n"
                    "        raise ConnectionResetError(104, 'Connection reset by peer')\n"
                    "    except OSError:\n"
                    "        logging.exception('Exception while sending command.')\n")
    script = ("import logging, runpy, sys\n"
              "from jobs.cli import quiet_py4j_root_logging\n"
              "quiet_py4j_root_logging()\n"
              f"runpy.run_path({str(fake)!r})['send']()\n"
              "logging.getLogger('some.library').warning('a warning people should see')\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines() == ["a warning people should see"], out.stderr


@pytest.mark.parametrize("flag", [["--repeats", "2"], ["--connect", "sc://127.0.0.1:1"]])
def test_scoring_only_bench_flags_are_refused_elsewhere(tmp_path, flag):
    result = _run(["bench", "evaluation", "--rows", "10", *flag], tmp_path)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {flag[0]} applies to `mmoe bench scoring` only"]
    assert not (tmp_path / "wh").exists()
