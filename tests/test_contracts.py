"""Behaviours a restructuring could silently break, each pinned by a test that fails on the bug
(issue 8, "tests that would catch a broken move"): null keys out of the direct reader, duplicate
keys without labels, the fingerprint seeing sizes, the CLI manifest and one-line errors, catalog
top items and fusion weights, GAUC in evaluate, the rule list agreeing with the quarantine
reasons, and Spark settings restored after a stage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score
from test_validate import (
    DS,
    N,
    good_rows,
    quarantine_rows,
    write_features,
    write_parquet,
)
from typer.testing import CliRunner

from jobs.cli import app
from jobs.core.warehouse import Warehouse
from jobs.validate.scorable import passed_rows
from jobs.validate.stage import validate_partition
from schemas.spec import load_spec
from schemas.tables import labels_arrow_schema

runner = CliRunner()


@pytest.fixture(scope="module")
def spec():
    return load_spec("synth")


def _tiny_model(tmp_path, spec, frame):
    import torch

    from mmoe_model.artifact import save_artifact
    from mmoe_model.features import FeatureEncoder, InputLayout
    from mmoe_model.models import ModelConfig, build_model

    torch.manual_seed(0)
    config = ModelConfig(arch="mmoe", num_experts=2, expert_hidden=(8,), expert_dim=4,
                         tower_hidden=(4,))
    model = build_model(config, InputLayout.from_spec(spec), len(spec.tasks)).eval()
    out = tmp_path / "model"
    save_artifact(out, model, config, spec, FeatureEncoder.fit(spec, frame))
    return out


def test_direct_reader_leaves_null_keys_out(spark, job_config, spec, tmp_path):
    """A null key is quarantined by validation; the direct reader must not score it (a null key
    in the predictions would also crash the writer's non-null key column)."""
    from jobs.score.stage import score_partition

    key = spec.key_names[0]
    cols = good_rows(spec, N, seed=11)
    cols[key][5] = None
    write_features(job_config, spec, cols)
    validate_partition(spark, job_config, spec, DS)
    job_config.scoring.reader = "direct"
    result = score_partition(spark, job_config, spec, DS,
                             _tiny_model(tmp_path, spec, pd.DataFrame(cols)))
    keys = pq.read_table(result.output, columns=[key]).column(0)
    assert keys.null_count == 0
    assert result.output_rows == len(keys) == N - 1
    assert result.input_rows + result.quarantined_rows == N


def test_duplicate_keys_are_quarantined_without_a_labels_partition(spark, job_config, spec):
    """The usual nightly case: labels arrive later, so the duplicate check runs on keys alone."""
    key = spec.key_names[0]
    cols = good_rows(spec, N, seed=12)
    cols[key][7] = cols[key][3]
    write_features(job_config, spec, cols)
    wh = Warehouse(job_config.warehouse)
    assert not wh.has_partition(spec.name, "labels", DS)
    report = validate_partition(spark, job_config, spec, DS)
    assert report.status == "quarantined"
    assert quarantine_rows(job_config, spec) == [(cols[key][3], f"duplicate_key:{key}")] * 2


def test_fingerprint_sees_a_file_rewritten_in_place(spark, job_config, spec):
    """Same file name, different size: the partition changed after validation."""
    from jobs.core.errors import NotValidated

    write_features(job_config, spec, good_rows(spec, N, seed=13))
    validate_partition(spark, job_config, spec, DS)
    assert passed_rows(spark, job_config, spec, DS).count() == N
    write_features(job_config, spec, good_rows(spec, N - 50, seed=13))  # same part-00000 name
    with pytest.raises(NotValidated, match="changed after it was validated"):
        passed_rows(spark, job_config, spec, DS)


def test_reasons_and_failed_rules_name_the_same_rules(spark, job_config, spec):
    """One rule list: every rule kind that quarantines a row is reported by GX under the same
    ``rule:column`` name, and vice versa."""
    key = spec.key_names[0]
    cols = good_rows(spec, N, seed=14)
    cols[key][0] = None
    cols[key][2] = cols[key][1]
    cols["x0"][3] = float("nan")
    cols["x1"][4] = float("-inf")
    cols["user_age"][5] = 300.0
    cols["platform"][6] = "tv"
    write_features(job_config, spec, cols)
    labels = {k: cols[k] for k in spec.key_names} | {t: [0] * N for t in spec.task_names}
    labels["like"][8] = 7
    write_parquet(Warehouse(job_config.warehouse).partition(spec.name, "labels", DS), labels,
                  labels_arrow_schema(spec))
    job_config.validation.max_bad_row_fraction = 0.5
    report = validate_partition(spark, job_config, spec, DS)
    kinds = {r.split(":")[0] for r in report.reasons}
    assert kinds == {"null_key", "duplicate_key", "out_of_range", "unknown_category",
                     "label_not_binary"}
    assert set(report.reasons) == set(report.failed_rules)
    failed = {f"{r.rule}:{r.column}": r.unexpected_count for r in report.rules
              if not r.success and r.level == "row"}
    assert failed == report.reasons


def test_cli_success_prints_and_writes_the_manifest(spark, job_config, spec, tmp_path):
    write_features(job_config, spec, good_rows(spec, N, seed=15))
    result = runner.invoke(app, ["--warehouse", str(job_config.warehouse), "validate",
                                 "--dataset", spec.name, "--ds", DS])
    assert result.exit_code == 0, result.stderr
    manifest = json.loads(result.stdout.strip().splitlines()[-1])
    assert (manifest["status"], manifest["input_rows"], manifest["output_rows"],
            manifest["quarantined_rows"]) == ("succeeded", N, N, 0)
    written = json.loads(open(manifest["manifest_path"]).read())
    assert written == manifest
    assert written["manifest_path"].startswith(str(Warehouse(job_config.warehouse).runs_dir(spec.name)))


def test_cli_failure_is_one_line_with_a_failed_manifest(job_config, spec, monkeypatch):
    """An expected failure and an unexpected bug both end with exactly one stderr line; the bug's
    traceback goes into the manifest, not onto stderr."""
    args = ["--warehouse", str(job_config.warehouse), "validate", "--dataset", spec.name,
            "--ds", DS]
    result = runner.invoke(app, args)  # no features partition
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "features partition" in result.stderr and "missing" in result.stderr
    manifest = json.loads(result.stdout.strip().splitlines()[-1])
    assert manifest["status"] == "failed" and manifest["error"] in result.stderr
    assert json.loads(open(manifest["manifest_path"]).read())["status"] == "failed"

    import jobs.validate.stage as validate

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire\nsecond line")

    write_features(job_config, spec, good_rows(spec, N, seed=15))  # past the pre-JVM checks
    monkeypatch.setattr(validate, "validate_partition", boom)
    monkeypatch.setattr("jobs.cli.nightly.spark_session", lambda cfg: None)
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert result.stderr.strip() == ("error: unexpected RuntimeError (the traceback is in the "
                                     "manifest): disk on fire")
    manifest = json.loads(result.stdout.strip().splitlines()[-1])
    assert "Traceback" in manifest["details"]["traceback"]


def test_catalog_takes_the_top_ranked_items(spark, spec):
    from jobs.score.catalog import top_items_frame

    cat = spec.catalog
    ranks = [5.0, 50.0, 1.0, 40.0, 40.0]
    items = spark.createDataFrame(pd.DataFrame({cat.item_key: [10, 11, 12, 13, 14],
                                                cat.rank_by: ranks}))
    top = top_items_frame(items, spec, max_items=3).toPandas()
    assert top[cat.item_key].tolist() == [11, 13, 14]  # the 3 highest ranks (tie: lower key)


@pytest.mark.parametrize("how", ["product", "sum"])
def test_top_k_uses_the_fusion_weights(spec, how):
    from jobs.score.catalog import _ranked, fuse_numpy, fusion_weights

    rng = np.random.default_rng(0)
    users, items = np.repeat([0, 1], 6), np.tile(np.arange(6), 2)
    probs = rng.uniform(0.01, 0.99, (len(users), len(spec.task_names)))
    weights = {spec.task_names[0]: 0.0, spec.task_names[1]: 3.0}
    order, ranks = _ranked(users, items, fuse_numpy(probs, fusion_weights(spec, weights), how),
                           k=2)
    w = np.array([weights.get(t, 1.0) for t in spec.task_names])  # absent tasks weigh 1
    score = (probs * w).sum(axis=1) if how == "sum" else np.prod(probs ** w, axis=1)
    oracle = (pd.DataFrame({"u": users, "i": items, "s": score})
              .sort_values(["u", "s", "i"], ascending=[True, False, True])
              .groupby("u").head(2))
    assert items[order].tolist() == oracle["i"].tolist()
    assert ranks.tolist() == [1, 2, 1, 2]


def test_evaluate_writes_gauc_equal_to_per_user_sklearn(spark, job_config, spec):
    from jobs.evaluate.stage import evaluate_partition

    rng = np.random.default_rng(5)
    wh = Warehouse(job_config.warehouse)
    n = 300
    cols = good_rows(spec, n, seed=16)
    cols[spec.user_column] = rng.integers(0, 12, n).tolist()
    write_features(job_config, spec, cols)
    labels = pa.table({spec.key_names[0]: np.arange(n, dtype=np.int64),
                       **{t: rng.integers(0, 2, n).astype(np.int32) for t in spec.task_names}},
                      schema=labels_arrow_schema(spec))
    wh.partition(spec.name, "labels", DS).mkdir(parents=True)
    pq.write_table(labels, wh.partition(spec.name, "labels", DS) / "part-0.parquet")
    preds = {spec.key_names[0]: np.arange(n, dtype=np.int64)}
    preds |= {spec.prediction_column(t): rng.random(n) for t in spec.task_names}
    out = wh.partition(spec.name, "predictions", DS, model_version="A")
    out.mkdir(parents=True)
    pq.write_table(pa.table(preds), out / "part-0.parquet")

    metrics = evaluate_partition(spark, job_config, spec, DS).metrics.toPandas()
    frame = pd.DataFrame(preds).assign(user=cols[spec.user_column], **{
        t: labels.column(t).to_numpy() for t in spec.task_names})
    for task in spec.task_names:
        num = den = 0.0
        for _, g in frame.groupby("user"):
            if g[task].nunique() == 2:
                num += len(g) * roc_auc_score(g[task], g[spec.prediction_column(task)])
                den += len(g)
        got = metrics.query("task == @task and segment == 'all' and metric == 'gauc'")["value"]
        assert len(got) == 1 and got.iloc[0] == pytest.approx(num / den, abs=1e-9)


def test_stage_spark_settings_are_restored(spark, job_config, spec):
    """Validation changes AQE and the codegen limit while it runs, and puts them back; a stage
    that fails restores them too."""
    from jobs.core.spark import session_conf

    keys = ("spark.sql.adaptive.enabled", "spark.sql.codegen.hugeMethodLimit")
    spark.conf.set(keys[0], "true")
    spark.conf.unset(keys[1])
    write_features(job_config, spec, good_rows(spec, N, seed=17))
    validate_partition(spark, job_config, spec, DS)
    assert spark.conf.get(keys[0]) == "true"
    assert spark.conf.get(keys[1], None) in (None, str(65535))  # unset again: Spark's default
    with pytest.raises(RuntimeError):
        with session_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch": "7"}):
            assert spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch") == "7"
            raise RuntimeError("stage failed")
    assert spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch") != "7"
