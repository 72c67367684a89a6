"""Feature drift in `mmoe validate`, on real Spark runs: short references measured but not
judged, a clean judged day quiet, a shifted feature and a flipped category mix flagged (warn:
passes, manifest and table list them; fail: one line naming them), the table replaced on rerun,
its PSI equal to numpy on the raw columns, and the report page showing it in Chromium."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from browser import visit
from scipy.spatial.distance import jensenshannon
from test_validate import good_rows, run, run_failing, write_features

from jobs.core.drift_table import DRIFT_SCHEMA, read_drift
from jobs.core.tables import table as logical_table
from jobs.core.warehouse import Warehouse
from schemas.spec import load_spec
from schemas.tables import features_arrow_schema

DAYS = ["2026-04-01"]
TODAY = "2026-04-02"
N = 2000


@pytest.fixture(scope="module")
def spec():
    return load_spec("synth")


def psi(expected, actual, floor=1e-4) -> float:
    """The population stability index as the README defines it, one bin at a time: proportions
    floored at 1e-4, sum of (a - e) ln(a / e) (written here, not the code under test's)."""
    total_e, total_a = float(sum(expected)), float(sum(actual))
    out = 0.0
    for e_count, a_count in zip(expected, actual):
        e, a = max(e_count / total_e, floor), max(a_count / total_a, floor)
        out += (a - e) * math.log(a / e)
    return out


def _clean(spec, seed):
    return good_rows(spec, N, seed=seed, first_key=seed * N)


def test_feature_drift_end_to_end(spark, job_config, spec, chromium, tmp_path):
    cfg = job_config
    cfg.validation.keep_data_docs = False
    cfg.drift = dataclasses.replace(cfg.drift, reference_days=1)
    raw = {}
    for i, ds in enumerate(DAYS):
        raw[ds] = _clean(spec, i)
        write_features(cfg, spec, raw[ds], ds=ds)
        manifest, report = run(spark, cfg, spec, ds)
        drift = manifest.details["drift"]
        # fewer reference days than configured: measured, never alarming (clean days judged
        # against a full reference: tests/test_drift_stats.py, 30 days)
        assert drift["judged"] is False and drift["drifted_features"] == []
        assert f"{i} of drift.reference_days 1" in drift["note"]
    # today: x0's mean and spread move, the platform mix flips; both still within the rules
    today = _clean(spec, 9)
    today["x0"] = [0.3 * v + 6.0 for v in today["x0"]]
    today["platform"] = ["web" if j % 10 else "android" for j in range(N)]
    write_features(cfg, spec, today, ds=TODAY)
    manifest, report = run(spark, cfg, spec, TODAY)
    assert manifest.status == "succeeded" and report.status == "passed"
    assert manifest.details["drift"]["drifted_features"] == ["platform", "x0"]
    table = read_drift(logical_table(cfg, spec.name, "drift"), TODAY)
    assert table.schema == DRIFT_SCHEMA
    rows = table.to_pylist()
    # the categorical PSI / JS against numpy on the raw columns of the 3 reference days
    vocab = list(spec.column("platform").vocabulary)
    ref = np.array([sum(raw[d]["platform"].count(v) for d in DAYS) for v in vocab] + [0])
    cur = np.array([today["platform"].count(v) for v in vocab] + [0])
    got = {(r["feature"], r["statistic"]): r for r in rows}
    assert abs(got["platform", "psi"]["value"] - psi(ref, cur)) <= 1e-9
    assert abs(got["platform", "js"]["value"] - jensenshannon(ref / ref.sum(), cur / cur.sum(),
                                                              base=2)) <= 1e-9
    assert got["x0", "psi"]["drifted"] and got["x0", "psi"]["threshold"] == 0.2
    assert got["x0", "psi"]["reference"] == f"trailing 1 of 1 days {DAYS[0]}..{DAYS[0]}"
    assert not got["x1", "psi"]["drifted"] and "user_id" not in {r["feature"] for r in rows}
    assert all(r["model_version"] is None for r in rows)

    page = visit(chromium, manifest.outputs["report"])
    (tmp_path / "validation-drift.png").write_bytes(page.screenshot)
    assert page.errors == [] and page.requests == []
    assert "Feature drift" in page.text and "DRIFT" in page.text

    # on_drift: fail → one line naming the drifted features; the table is replaced, not doubled
    cfg.drift = dataclasses.replace(cfg.drift, on_drift="fail")
    manifest, message = run_failing(spark, cfg, spec, TODAY)
    assert "\n" not in message and "platform" in message and "x0" in message
    assert "drift.on_drift: fail" in message
    assert len(read_drift(logical_table(cfg, spec.name, "drift"), TODAY).to_pylist()) == len(rows)
    assert manifest.status == "failed"


def test_prediction_drift_against_the_same_versions_trailing_days(job_config, spec):
    """What `mmoe score` runs on its staged partition (no Spark needed): each p_<task> against
    the same model version's trailing days; another version's days are not its reference."""
    from jobs.score.drift import prediction_drift

    cfg = job_config
    cfg.drift = dataclasses.replace(cfg.drift, reference_days=2)
    wh = Warehouse(cfg.warehouse)
    rng = np.random.default_rng(2)

    def scored(ds, version, shift=0.0):
        d = wh.partition(spec.name, "predictions", ds, model_version=version)
        d.mkdir(parents=True, exist_ok=True)
        cols = {f"p_{t}": 1 / (1 + np.exp(-(rng.normal(size=3000) + (shift if t == "click" else 0))))
                for t in spec.task_names}
        pq.write_table(pa.table(cols), d / "part-0.parquet")
        return prediction_drift(cfg, spec, ds, version, d)

    scored("2026-04-01", "other", shift=3.0)       # another version: never a reference
    first = scored("2026-04-01", "V")
    assert first["reference_days"] == 0 and first["drifted"] == []
    scored("2026-04-02", "V")
    clean = scored("2026-04-03", "V")
    assert clean["judged"] and clean["drifted"] == [], clean
    shifted = scored("2026-04-04", "V", shift=1.0)
    assert shifted["drifted"] == ["p_click"], shifted
    again = scored("2026-04-04", "V", shift=1.0)     # rerun: replaced, not doubled
    rows = read_drift(logical_table(cfg, spec.name, "drift"), "2026-04-04").to_pylist()
    assert len(rows) == 2 * len(spec.task_names) and again["drifted"] == ["p_click"]
    assert {r["model_version"] for r in rows} == {"V"}
    assert {r["statistic"] for r in rows} == {"psi", "js"}


def test_a_large_day_is_summarised_on_a_sample_and_counted_exactly(spark, spec, monkeypatch):
    """Above PROFILE_SAMPLE_ROWS the quantile summaries read a uniform sample (one pass, fixed
    seed): each profile quantile's rank in the whole day is within the sample's error of its
    probability, while the null counts and the rows at the reference's edges stay exact (numpy
    on all the rows), as does the profile of a day below the sample size."""
    from pyspark.sql import functions as F

    from jobs.core.config import DriftConfig
    from jobs.validate import feature_drift as fd
    from jobs.validate.drift import DayProfile, pool, profile_probabilities, profile_values
    from jobs.validate.rules import REASON

    n, sample = 40_000, 4_000
    rng = np.random.default_rng(5)
    cols = good_rows(spec, n, seed=5)
    dense = [f.name for f in spec.dense_features]
    for name in dense[:3]:  # skewed, with nulls: what a real feature looks like
        values = rng.lognormal(0.0, 1.0, n)
        values[rng.random(n) < 0.05] = np.nan
        cols[name] = values.tolist()
    frame = spark.createDataFrame(pa.table(cols).to_pandas()).withColumn(
        REASON, F.lit(None).cast("string")).cache()
    features = [w for w in fd.watched(spec, DriftConfig()) if w.kind == "dense"]
    # a reference from another draw of the same features, pooled as validate pools it
    other = good_rows(spec, 3000, seed=6)
    reference = DayProfile("2026-04-01", {w.name: profile_values(w, other[w.name])
                                          for w in features})
    refs = {w.name: pool(w.name, [reference], 10) for w in features}

    monkeypatch.setattr(fd, "PROFILE_SAMPLE_ROWS", sample)
    assert fd.sample_fraction(n) == pytest.approx(sample / n)
    profile, counts, rows = fd.measure(spec, frame, features, refs, rows=n)
    exact, _, _ = fd.measure(spec, frame, features, refs, rows=sample)  # below: no sampling
    assert rows == n
    probs = np.array(profile_probabilities())
    tolerance = 4 * np.sqrt(probs * (1 - probs) / sample) + 0.002  # 4 sigma + the summary's own
    differs = 0
    for w in features:
        values = np.array(cols[w.name], dtype=np.float64)
        present = np.sort(values[~np.isnan(values)])
        got = profile.features[w.name]
        assert (got.rows, got.nulls) == (n, n - len(present))  # exact
        ranks = np.searchsorted(present, got.quantiles, side="right") / len(present)
        assert np.all(np.abs(ranks - probs) <= tolerance), w.name
        edges = refs[w.name].edges
        want = np.array([np.sum((present >= edges[j - 1]) if j else np.ones_like(present))
                         - (np.sum(present >= edges[j]) if j < len(edges) else 0)
                         for j in range(len(edges) + 1)], dtype=np.float64)
        np.testing.assert_array_equal(counts[w.name], want)  # exact, on every row
        unsampled = exact.features[w.name].quantiles
        ranks = np.searchsorted(present, unsampled, side="right") / len(present)
        assert np.all(np.abs(ranks - probs) <= 0.002), w.name
        differs += unsampled != got.quantiles
    assert differs == len(features)  # the sampled summaries are not the whole-day ones
    frame.unpersist()


def test_training_profile_equals_a_value_by_value_profile(spec):
    """The trainer's vectorised profile of a column equals drift's value-by-value one (dense
    with nulls, a vocabulary with an unknown value and nulls, hashed ids)."""
    import pandas as pd

    from jobs.validate.drift import Watched, profile_values
    from jobs.validate.feature_drift import column_profile

    rng = np.random.default_rng(3)
    dense = rng.normal(size=500)
    dense[::7] = np.nan
    cats = rng.choice(["ios", "android", "web", "tv", None], size=500).tolist()
    ids = rng.integers(0, 10_000, 500).astype(float)
    ids[::11] = np.nan
    cases = [(Watched("x0", "dense"), pd.Series(dense), list(dense)),
             (Watched("platform", "categorical", categories=("android", "ios", "web")),
              pd.Series(cats, dtype=object), cats),
             (Watched("item_id", "categorical", categories=tuple(map(str, range(8))), buckets=8),
              pd.Series(ids).astype("Int64"), [None if np.isnan(v) else int(v) for v in ids])]
    for feature, column, values in cases:
        assert column_profile(feature, column) == profile_values(feature, values), feature.name


def test_training_skew_against_the_models_training_profile(spark, job_config, spec):
    """`mmoe train` records the training rows' profile; scoring a day writes that day's skew
    against it to the drift table (reference = training, the scored model_version), beside
    the trailing-days rows: a shifted feature is flagged with the PSI numpy computes from the
    raw columns on the training data's deciles, an unshifted one is not."""
    import json

    from jobs.data.synth import generate_synth
    from jobs.score.stage import score_partition
    from jobs.train.stage import train_model
    from jobs.validate.stage import validate_partition
    from mmoe_model.artifact import ModelArtifact

    cfg = job_config
    cfg.validation.keep_data_docs = False
    cfg.drift = dataclasses.replace(cfg.drift, reference_days=1)
    train_day, day = "2026-04-01", "2026-04-02"
    generate_synth(cfg, train_day, 2, 3000, seed=4)
    wh = Warehouse(cfg.warehouse)
    trained = train_model(cfg, "synth", "mmoe", train_day, train_day, wh.root / "model",
                          epochs=1, seed=0, progress=False)
    artifact = ModelArtifact.load(trained.artifact)
    profile = json.loads(artifact.files["metrics.json"])["feature_profile"]["features"]
    train_x = pq.read_table(wh.partition("synth", "features", train_day)).to_pandas()
    np.testing.assert_allclose(profile["x0"]["quantiles"],
                               np.quantile(train_x["x0"], (np.arange(100) + 0.5) / 100), rtol=0,
                               atol=1e-12)
    assert profile["platform"]["counts"] == {**{k: 0 for k in profile["platform"]["counts"]},
                                             **train_x["platform"].value_counts().to_dict()}
    # the scored day: x0 moves by half a standard deviation
    path = wh.partition("synth", "features", day)
    features = pq.read_table(path).to_pandas()
    features["x0"] = features["x0"] + 0.5
    for old in path.glob("*.parquet"):
        old.unlink()
    pq.write_table(pa.Table.from_pandas(features, preserve_index=False,
                                        schema=features_arrow_schema(spec)),
                   path / "part-0.parquet")
    for d in (train_day, day):  # the training day: the trailing-days reference of the other
        validate_partition(spark, cfg, spec, d)
    result = score_partition(spark, cfg, spec, day, trained.artifact)
    assert "x0" in result.details["training_skew"]["drifted"]
    assert "x1" not in result.details["training_skew"]["drifted"]
    rows = read_drift(logical_table(cfg, spec.name, "drift"), day).to_pylist()
    skew = {(r["feature"], r["statistic"]): r for r in rows if r["reference"] == "training"}
    assert {r["model_version"] for r in skew.values()} == {trained.model_version}
    assert any(r["model_version"] is None for r in rows)  # validate's rows stay beside them
    for name in ("x0", "x1"):
        edges = np.quantile(train_x[name], np.linspace(0.1, 0.9, 9))
        want = psi(np.bincount(np.searchsorted(edges, train_x[name], side="right"), minlength=10),
                   np.bincount(np.searchsorted(edges, features[name], side="right"), minlength=10))
        got = skew[(name, "psi")]["value"]
        assert got == pytest.approx(want, rel=0.15, abs=0.01), name
        assert skew[(name, "psi")]["drifted"] is bool(want > 0.2), name


def test_segmented_drift_flags_the_segment_that_moved(spark, job_config, spec):
    """drift.segment_column: platform -> every watched feature also per platform value, against
    the same value's rows of the reference days: x0 moved for ios only is flagged for ios with
    the PSI numpy computes from the raw ios rows on their deciles (within 15 %), not for the
    others; the whole-day decision and the report stay on the whole day's rows."""
    cfg = job_config
    cfg.validation.keep_data_docs = False
    cfg.drift = dataclasses.replace(cfg.drift, reference_days=1, segment_column="platform")
    ref = good_rows(spec, 6000, seed=21, first_key=0)
    write_features(cfg, spec, ref, ds=DAYS[0])
    run(spark, cfg, spec, DAYS[0])
    today = good_rows(spec, 6000, seed=22, first_key=10_000)
    today["x0"] = [0.6 * v if p == "ios" else v     # ios rows only: narrower, still in range
                   for v, p in zip(today["x0"], today["platform"])]
    write_features(cfg, spec, today, ds=TODAY)
    manifest, report = run(spark, cfg, spec, TODAY)
    drift = manifest.details["drift"]
    assert drift["segments"] == [f"platform={v}" for v in sorted(spec.column("platform").vocabulary)]
    assert drift["drifted_segments"] == ["x0 (platform=ios)"]
    rows = read_drift(logical_table(cfg, spec.name, "drift"), TODAY).to_pylist()
    got = {(r["feature"], r["statistic"], r["segment"]): r for r in rows}
    ios_ref = np.array([v for v, p in zip(ref["x0"], ref["platform"]) if p == "ios"])
    ios_now = np.array([v for v, p in zip(today["x0"], today["platform"]) if p == "ios"])
    edges = np.quantile(ios_ref, np.arange(1, 10) / 10)
    expected = psi(np.bincount(np.searchsorted(edges, ios_ref, side="right"), minlength=10),
                   np.bincount(np.searchsorted(edges, ios_now, side="right"), minlength=10))
    assert got["x0", "psi", "platform=ios"]["drifted"]
    assert got["x0", "psi", "platform=ios"]["value"] == pytest.approx(expected, rel=0.15)
    for other in ("android", "web"):
        assert not got["x0", "psi", f"platform={other}"]["drifted"]
    assert not got["x1", "psi", "platform=ios"]["drifted"]
    # the whole day's rows are still there, unsegmented, and only they reach the report
    assert ("x0", "psi", None) in got
    assert all(r.segment is None for r in report.drift)
