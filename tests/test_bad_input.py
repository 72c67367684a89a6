"""Bad input, end to end through the `mmoe` CLI (issue 11, item 3).

Every case either fails with a non-zero exit and ONE clean `error: ...` line on stderr naming the
cause (rule, column, counts), a failed manifest as stdout's last line and nothing written
downstream — or, where the policy quarantines, reconciles exactly (input = output + quarantined)
and no bad row is scored. The expected reasons are built here, row by row, from what each row
was given (an oracle independent of the rules code).

Most cases run the CLI in-process (typer's runner, sharing the test SparkSession); the cases
that must show stderr is clean when it is a pipe — Spark's console progress bar included — run
the real CLI in a subprocess.
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _reliability import (
    assert_clean_error,
    good_columns,
    job_config_file,
    label_columns,
    last_manifest,
    run_cli,
    tiny_model,
    write_day,
    write_parquet,
)
from typer.testing import CliRunner

from jobs.cli import app
from jobs.core.warehouse import Warehouse
from schemas import load_spec
from schemas.tables import features_arrow_schema

PREV, DS = "2026-03-09", "2026-03-10"
N = 400
runner = CliRunner()


@pytest.fixture(scope="module")
def spec():
    return load_spec("synth")


@pytest.fixture(scope="module")
def model(tmp_path_factory, spec):
    return tiny_model(tmp_path_factory.mktemp("model") / "synth-mmoe", spec)


class Env:
    def __init__(self, root: Path):
        self.root = root
        self.config = job_config_file(root / "config.yaml", training={"epochs": 1})
        self.wh = Warehouse(root / "wh")

    def mmoe(self, *args: str):
        return runner.invoke(app, ["--config", str(self.config), "--warehouse",
                                   str(self.wh.root), *args])

    def has(self, table: str, ds: str = DS, **more) -> bool:
        return self.wh.has_partition("synth", table, ds, **more)


@pytest.fixture
def env(spark, tmp_path):  # the CLI's get_spark reuses the test session
    return Env(tmp_path)


def refused(result, *needles: str, exit_code: int | None = None) -> dict:
    """Non-zero exit, one clean error line naming the cause, a failed manifest."""
    assert result.exit_code != 0, result.stdout[-2000:]
    if exit_code is not None:
        assert result.exit_code == exit_code
    assert_clean_error(result.stderr, *needles)
    manifest = last_manifest(result.stdout)
    assert manifest["status"] == "failed"
    return manifest


def nothing_downstream(env: Env, model: Path, ds: str = DS) -> None:
    """No quarantine, and scoring the day is refused (status failed) without writing."""
    assert not env.has("quarantine", ds)
    status = json.loads(env.wh.status_path("synth", ds).read_text())
    assert status["status"] == "failed"
    result = env.mmoe("score", "--dataset", "synth", "--ds", ds, "--model", str(model))
    refused(result, "did not pass validation")
    assert not env.wh.table("synth", "predictions").exists()


# --------------------------------------------------------------------------------------------
# Row-level problems: quarantined, reconciled, never scored (one day, every case in it)

KEY = "impression_id"


def _bad_day(spec):
    """400 rows; rows 0..13 each break one row-level rule, row 14 has no labels row."""
    cols = good_columns(spec, N, seed=5, first_key=1000)
    expected: dict[int, str] = {}
    cols[KEY][0] = None
    expected[0] = "null_key:impression_id"
    cols[KEY][2] = cols[KEY][1]
    expected[1] = expected[2] = "duplicate_key:impression_id"
    for row, (column, value) in enumerate([("x0", math.nan), ("x1", math.inf),
                                           ("x2", -math.inf), ("user_age", 7.0),
                                           ("item_price", -1.0)], start=3):
        cols[column][row] = value
        expected[row] = f"out_of_range:{column}"
    for row, (column, value) in enumerate([("item_category", "weapons"), ("platform", "tv"),
                                           ("hour", 99)], start=8):
        cols[column][row] = value
        expected[row] = f"unknown_category:{column}"
    keys = [k for k in cols[KEY]]
    labels = label_columns(spec, [k for i, k in enumerate(keys) if k is not None and i != 14])
    position = {k: i for i, k in enumerate(labels[KEY])}
    for row, (task, value) in enumerate([("click", 2), ("like", None), ("conversion", -1)],
                                        start=11):
        labels[task][position[keys[row]]] = value
        expected[row] = f"label_not_binary:{task}"
    return cols, labels, expected


@pytest.fixture(scope="module")
def quarantine_run(spark, tmp_path_factory, spec, model):
    env = Env(tmp_path_factory.mktemp("quarantine"))
    cols, labels, expected = _bad_day(spec)
    write_day(env.wh.root, spec, DS, features=cols, labels=labels)
    validate = env.mmoe("validate", "--dataset", "synth", "--ds", DS)
    score = env.mmoe("score", "--dataset", "synth", "--ds", DS, "--model", str(model))
    evaluate = env.mmoe("evaluate", "--dataset", "synth", "--ds", DS)
    quarantine = pq.read_table(env.wh.partition("synth", "quarantine", DS)).to_pylist()
    version = last_manifest(score.stdout)["model_version"]
    predictions = pq.read_table(env.wh.partition("synth", "predictions", DS,
                                                 model_version=version)).to_pylist()
    return dict(env=env, cols=cols, labels=labels, expected=expected, validate=validate,
                score=score, evaluate=evaluate, quarantine=quarantine, predictions=predictions)


def _quarantined(run, rows: list[int]) -> Counter:
    got = Counter((r[KEY], r["reason"]) for r in run["quarantine"])
    want = Counter((run["cols"][KEY][i], run["expected"][i]) for i in rows)
    return Counter({k: got[k] for k in want}), want


def test_quarantine_run_succeeds(quarantine_run):
    for step in ("validate", "score", "evaluate"):
        result = quarantine_run[step]
        assert result.exit_code == 0, (step, result.stdout[-3000:], result.stderr)
        # stderr: the command's short summary only (issue 22 item 5), no colour codes (it is
        # not a terminal), the manifest still stdout's last line
        assert result.stderr.startswith(f"{step} synth ds={DS}: "), result.stderr
        assert "\x1b[" not in result.stderr and "error" not in result.stderr
        assert json.loads(result.stdout.strip().splitlines()[-1])["job"] == step
    # the numbers the summaries show, against the tables themselves
    quarantined = len(quarantine_run["quarantine"])
    assert quarantine_run["validate"].stderr.splitlines()[0] == (
        f"validate synth ds={DS}: quarantined, {N} rows read, {N - quarantined} passed, "
        f"{quarantined} quarantined")
    reasons = Counter(r["reason"] for r in quarantine_run["quarantine"])
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    assert quarantine_run["validate"].stderr.splitlines()[1].startswith(
        "  quarantined for: " + ", ".join(f"{reason} {n}" for reason, n in top[:5]))
    predictions = quarantine_run["predictions"]
    version = last_manifest(quarantine_run["score"].stdout)["model_version"]
    assert quarantine_run["score"].stderr.splitlines()[0].startswith(
        f"score synth ds={DS}: {len(predictions)} of {N - quarantined} validated rows scored by "
        f"{version}")
    env = quarantine_run["env"]
    metrics = pq.read_table(env.wh.partition("synth", "metrics", DS)).to_pylist()
    table = quarantine_run["evaluate"].stderr.splitlines()
    header = next(i for i, line in enumerate(table) if line.split()[:1] == ["task"])
    shown = table[header].split()[1:]
    assert {"count", "auc", "logloss"} <= set(shown)
    for line in table[header + 1:header + 4]:
        task, *cells = line.split()
        for metric, cell in zip(shown, cells):
            [value] = [r["value"] for r in metrics if (r["task"], r["segment"], r["metric"],
                                                       r["model_version"]) ==
                       (task, "all", metric, version)]
            want = ("n/a" if value is None or not math.isfinite(value)
                    else f"{int(value):,}" if metric in ("count", "positives")
                    else f"{value:.4f}")
            assert cell == want, (task, metric, cell, value)


def test_null_key_is_quarantined(quarantine_run):
    got, want = _quarantined(quarantine_run, [0])
    assert got == want


def test_duplicate_keys_quarantine_every_copy(quarantine_run):
    got, want = _quarantined(quarantine_run, [1, 2])
    assert got == want and sum(want.values()) == 2


@pytest.mark.parametrize("row", [3, 4, 5, 6, 7], ids=["nan", "inf", "-inf", "below-min", "negative-price"])
def test_nan_inf_and_out_of_range_dense_values_are_quarantined(quarantine_run, row):
    got, want = _quarantined(quarantine_run, [row])
    assert got == want


@pytest.mark.parametrize("row", [8, 9, 10], ids=["string-vocab", "platform", "long-vocab"])
def test_unknown_categories_are_quarantined(quarantine_run, row):
    got, want = _quarantined(quarantine_run, [row])
    assert got == want


@pytest.mark.parametrize("row", [11, 12, 13], ids=["label-2", "label-null", "label-minus-1"])
def test_labels_outside_0_1_or_missing_are_quarantined(quarantine_run, row):
    got, want = _quarantined(quarantine_run, [row])
    assert got == want


def test_exact_reconciliation_and_no_bad_row_scored(quarantine_run):
    run = quarantine_run
    bad = set(run["expected"])
    assert len(run["quarantine"]) == len(bad)  # nothing else quarantined
    validate, score = last_manifest(run["validate"].stdout), last_manifest(run["score"].stdout)
    assert validate["input_rows"] == N == validate["output_rows"] + validate["quarantined_rows"]
    assert validate["quarantined_rows"] == len(bad)
    assert score["input_rows"] == score["output_rows"] == N - len(bad)
    assert score["quarantined_rows"] == len(bad)
    good_keys = {k for i, k in enumerate(run["cols"][KEY]) if i not in bad}
    scored = [r[KEY] for r in run["predictions"]]
    assert len(scored) == len(set(scored)) and set(scored) == good_keys


def test_evaluation_counts_only_scored_labelled_rows(quarantine_run):
    run = quarantine_run
    evaluate = last_manifest(run["evaluate"].stdout)
    version = last_manifest(run["score"].stdout)["model_version"]
    labelled = set(run["labels"][KEY])
    expected = sum(1 for r in run["predictions"] if r[KEY] in labelled)
    assert expected == N - len(run["expected"]) - 1  # row 14 has no labels row
    assert evaluate["details"]["matched_rows"][version] == expected


# --------------------------------------------------------------------------------------------
# Partition-level problems: the validation fails, nothing downstream


def _drop(cols, name):
    cols.pop(name)
    return cols


def _case_missing(env, spec):
    write_day(env.wh.root, spec, DS, features=_drop(good_columns(spec, N), "x3"))


def _case_renamed(env, spec):
    cols = good_columns(spec, N)
    cols["x3_v2"] = cols.pop("x3")
    write_day(env.wh.root, spec, DS, features=cols)


def _case_extra(env, spec):
    cols = good_columns(spec, N)
    cols["debug_note"] = ["x"] * N
    write_day(env.wh.root, spec, DS, features=cols)


def _case_retyped(env, spec):
    cols, _ = write_day(env.wh.root, spec, DS)
    cols["hour"] = [str(v) for v in cols["hour"]]
    schema = features_arrow_schema(spec)
    schema = schema.set(schema.get_field_index("hour"), pa.field("hour", pa.string()))
    write_parquet(env.wh.partition("synth", "features", DS), cols, schema)


def _case_empty(env, spec):
    write_day(env.wh.root, spec, DS, features={c: [] for c in spec.features_table_columns},
              labels={c: [] for c in [KEY] + spec.task_names})


def _two_files(env, spec):
    cols = good_columns(spec, N)
    write_day(env.wh.root, spec, DS, features=cols)
    half = {c: v[N // 2:] for c, v in cols.items()}
    first = {c: v[: N // 2] for c, v in cols.items()}
    directory = env.wh.partition("synth", "features", DS)
    write_parquet(directory, first, features_arrow_schema(spec))
    return write_parquet(directory, half, features_arrow_schema(spec), "part-00001.parquet",
                         fresh=False)


def _case_truncated(env, spec):
    second = _two_files(env, spec)
    data = second.read_bytes()
    second.write_bytes(data[: len(data) // 2])


def _case_not_parquet(env, spec):
    second = _two_files(env, spec)
    second.write_text("impression_id,x0\n1,0.5\n")


def _case_labels_missing_task(env, spec):
    cols = good_columns(spec, N)
    labels = label_columns(spec, cols[KEY])
    labels.pop("like")
    write_day(env.wh.root, spec, DS, features=cols, labels=labels)


CASES = {
    "missing-column": (_case_missing, ["missing column 'x3'"]),
    "renamed-column": (_case_renamed, ["missing column 'x3'"]),
    "extra-column": (_case_extra, ["unexpected column 'debug_note'", "on_extra_columns"]),
    "retyped-column": (_case_retyped, ["column 'hour' has type StringType, expected LongType"]),
    "empty-partition": (_case_empty, ["partition is empty (0 rows"]),
    "truncated-file": (_case_truncated, ["cannot read parquet file", "part-00001.parquet"]),
    "non-parquet-file": (_case_not_parquet, ["cannot read parquet file", "part-00001.parquet"]),
    "labels-missing-task": (_case_labels_missing_task, ["missing column 'like'"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_partition_fails_cleanly_and_writes_nothing_downstream(env, spec, model, case):
    build, needles = CASES[case]
    build(env, spec)
    result = env.mmoe("validate", "--dataset", "synth", "--ds", DS)
    manifest = refused(result, "validation failed", *needles, exit_code=1)
    assert manifest["input_rows"] == manifest["output_rows"] == manifest["quarantined_rows"] == 0
    nothing_downstream(env, model)


def test_stray_non_parquet_file_is_not_data(env, spec):
    """A file not named *.parquet (a README dropped into a partition) is not read by anyone."""
    write_day(env.wh.root, spec, DS)
    (env.wh.partition("synth", "features", DS) / "README.txt").write_text("not data\n")
    result = env.mmoe("validate", "--dataset", "synth", "--ds", DS)
    assert result.exit_code == 0, result.stderr
    assert last_manifest(result.stdout)["input_rows"] == N


# --------------------------------------------------------------------------------------------
# One bad day never breaks another


def test_corrupt_earlier_day_is_skipped_by_row_count_history_and_training(env, spec):
    write_day(env.wh.root, spec, PREV, first_key=0)
    corrupt = env.wh.partition("synth", "features", PREV) / "part-00000.parquet"
    corrupt.write_bytes(corrupt.read_bytes()[:-100])  # truncated: no parquet footer
    write_day(env.wh.root, spec, DS, first_key=N)
    result = env.mmoe("validate", "--dataset", "synth", "--ds", DS)
    assert result.exit_code == 0, result.stderr
    manifest = last_manifest(result.stdout)
    skipped = manifest["details"]["skipped_partitions"]
    assert len(skipped) == 1 and f"ds={PREV}" in skipped[0] and str(corrupt) in skipped[0]
    status = json.loads(env.wh.status_path("synth", DS).read_text())
    assert status["skipped_partitions"] == skipped
    result = env.mmoe("train", "--dataset", "synth", "--arch", "mmoe", "--start", PREV,
                      "--end", DS, "--out", str(env.root / "model"), "--epochs", "1")
    assert result.exit_code == 0, result.stderr
    manifest = last_manifest(result.stdout)
    assert manifest["input_rows"] == N  # only the readable day
    skipped = manifest["details"]["skipped_partitions"]
    assert len(skipped) == 1 and f"ds={PREV}" in skipped[0] and str(corrupt) in skipped[0]


# --------------------------------------------------------------------------------------------
# Artifacts


@pytest.fixture(scope="module")
def validated(spark, tmp_path_factory, spec):
    env = Env(tmp_path_factory.mktemp("validated"))
    write_day(env.wh.root, spec, DS)
    result = env.mmoe("validate", "--dataset", "synth", "--ds", DS)
    assert result.exit_code == 0, result.stderr
    return env


def test_artifact_with_one_flipped_byte_is_refused(validated, model, tmp_path):
    bad = tmp_path / "tampered"
    shutil.copytree(model, bad)
    weights = bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    result = validated.mmoe("score", "--dataset", "synth", "--ds", DS, "--model", str(bad))
    refused(result, "model.safetensors does not match its SHA-256")
    assert not validated.wh.table("synth", "predictions").exists()


def test_artifact_trained_on_another_spec_is_refused(validated, tmp_path):
    other = tiny_model(tmp_path / "census", load_spec("census-group1"))
    result = validated.mmoe("score", "--dataset", "synth", "--ds", DS, "--model", str(other))
    refused(result, "data spec 'synth' differs from the model's training spec 'census-group1'")
    assert not validated.wh.table("synth", "predictions").exists()


class _Payload:
    """Unpickling this creates ``marker``: proof that someone loaded the pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_smuggled_into_an_artifact_is_never_loaded(validated, model, tmp_path):
    """A pickle next to the artifact's files, and one in place of the weights: neither is ever
    unpickled, on the driver or the executors (the payload would create the marker file)."""
    marker = tmp_path / "PWNED"
    extra = tmp_path / "with-extra"
    shutil.copytree(model, extra)
    for name in ("model.pkl", "model.pt", ".hidden.pkl"):
        (extra / name).write_bytes(pickle.dumps(_Payload(marker)))
    result = validated.mmoe("score", "--dataset", "synth", "--ds", DS, "--model", str(extra))
    assert result.exit_code == 0, result.stderr  # extra files are ignored, never read as code
    assert not marker.exists()
    swapped = tmp_path / "weights-swapped"
    shutil.copytree(model, swapped)
    import torch

    torch.save({"payload": _Payload(marker)}, swapped / "model.safetensors")
    assert not marker.exists()
    result = validated.mmoe("score", "--dataset", "synth", "--ds", DS, "--model", str(swapped))
    refused(result, "model.safetensors does not match its SHA-256")
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# Configs, dates, names (no Spark: refused before any work)


@pytest.mark.parametrize("text,needles", [
    ("spark: [unclosed\n", ["cannot read config", "at line 2"]),
    ("\x00\x01binary", ["cannot read config"]),
    ("scoring: {batchsize: 10}\n", ["config.scoring: unknown key(s) ['batchsize']"]),
    ("scoring: {batch_size: lots}\n", ["config.scoring.batch_size: must be an integer, got 'lots'"]),
    ("validation: {on_bad_rows: maybe}\n", ["config.validation.on_bad_rows: must be one of"]),
    ("validation: {keep_data_docs: 'no'}\n", ["config.validation.keep_data_docs: must be true or false"]),
    ("evaluation: {segments: platform}\n", ["config.evaluation.segments: must be a list"]),
    ("spark: {conf: [a, b]}\n", ["config.spark.conf: must be a mapping"]),
    ("- just\n- a list\n", ["must be a mapping"]),
], ids=["unparsable", "binary", "unknown-key", "wrong-int", "wrong-literal", "wrong-bool",
        "wrong-list", "wrong-mapping", "not-a-mapping"])
def test_bad_config_is_refused(tmp_path, text, needles):
    config = tmp_path / "bad.yaml"
    config.write_bytes(text.encode())
    result = runner.invoke(app, ["--config", str(config), "--warehouse", str(tmp_path / "wh"),
                                 "validate", "--dataset", "synth", "--ds", DS])
    refused(result, *needles, exit_code=2)
    assert not (tmp_path / "wh").exists()


def test_unreadable_config_is_refused(tmp_path):
    for path in (tmp_path / "missing.yaml", tmp_path):
        result = runner.invoke(app, ["--config", str(path), "validate", "--dataset", "synth",
                                     "--ds", DS])
        refused(result, "cannot read config", exit_code=2)


@pytest.mark.parametrize("args,needle", [
    (["validate", "--dataset", "synth", "--ds", "yesterday"], "--ds must be YYYY-MM-DD"),
    (["validate", "--dataset", "synth", "--ds", "2026-02-30"], "is not a valid date"),
    (["score", "--dataset", "synth", "--ds", "../../etc", "--model", "m"], "--ds must be YYYY-MM-DD"),
    (["evaluate", "--dataset", "synth", "--ds", "2026-03-10/.."], "--ds must be YYYY-MM-DD"),
    (["validate", "--dataset", "synth/../x", "--ds", DS], "--dataset 'synth/../x'"),
    (["validate", "--dataset", "..", "--ds", DS], "--dataset '..'"),
], ids=["non-date", "impossible-date", "path-ds", "path-ds-2", "dataset-slash", "dataset-dotdot"])
def test_bad_dates_and_names_through_the_real_cli(tmp_path, args, needle):
    """The real CLI (stderr a pipe): exit 2, one line, nothing written."""
    result = run_cli(["--warehouse", str(tmp_path / "wh"), *args], timeout=120)
    assert result.returncode == 2
    assert_clean_error(result.stderr, needle)
    assert last_manifest(result.stdout)["status"] == "failed"
    assert not (tmp_path / "wh").exists()


def test_spark_failure_in_a_pipe_ends_stderr_with_the_clean_error(tmp_path, spec):
    """A validation that runs Spark jobs (long enough for Spark's console progress bar) and
    fails: stderr, a pipe, has no progress-bar text and ends with the one-line cause."""
    root = tmp_path
    cols = good_columns(spec, N)
    for i in range(0, N, 3):  # a third of the rows out of range: over max_bad_row_fraction
        cols["x0"][i] = 50.0
    write_day(root / "wh", spec, DS, features=cols)
    config = job_config_file(root / "config.yaml")
    result = run_cli(["--config", str(config), "--warehouse", str(root / "wh"),
                      "validate", "--dataset", "synth", "--ds", DS])
    assert result.returncode == 1, result.stderr
    bad = len(range(0, N, 3))
    assert_clean_error(result.stderr, "bad row fraction", f"{bad:,} of {N:,} rows",
                       f"out_of_range:x0 {bad:,}")
    assert last_manifest(result.stdout)["status"] == "failed"
    assert not Warehouse(root / "wh").has_partition("synth", "quarantine", DS)
