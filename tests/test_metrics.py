"""compute_metrics against independent oracles: sklearn (AUC, AP, log loss), numpy (counts,
calibration, NE) and hand-computed GAUC / AUC examples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from jobs.evaluate.metrics import METRICS, compute_metrics, score_bucket
from schemas.tables import METRICS_STRUCT

TASKS = ["click", "like"]
SEGMENTS = ["platform", "cohort"]


def _random_scored(seed: int = 7, n: int = 3000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pdf = pd.DataFrame({
        "model_version": rng.choice(["v1", "v2", "v3"], n),
        "platform": rng.choice(["ios", "android", "web"], n),
        "cohort": rng.choice([1, 2], n).astype("int64"),       # a long segment column
        "user_id": rng.integers(0, 60, n).astype("int64"),
    })
    # heavy ties: scores rounded to 1 or 2 decimals, including exact 0 and 1
    latent = rng.random(n)
    pdf["click"] = (rng.random(n) < 0.25 + 0.5 * latent).astype("int32")
    pdf["p_click"] = np.round(np.clip(latent + rng.normal(0, 0.3, n), 0, 1), 1)
    pdf["like"] = (rng.random(n) < 0.1).astype("int32")
    pdf["p_like"] = np.round(rng.random(n) * 0.3, 2)
    # one (version, segment) cell where "like" has a single class: auc must be null there
    cell = (pdf["model_version"] == "v3") & (pdf["platform"] == "web")
    pdf.loc[cell, "like"] = 0
    return pdf


@pytest.fixture(scope="module")
def random_case(spark):
    pdf = _random_scored()
    # spread over several input partitions so the senders' blobs really get merged
    df = spark.createDataFrame(pdf).repartition(3)
    out = compute_metrics(df, TASKS, SEGMENTS, "user_id").toPandas()
    return pdf, out


def _groups(pdf: pd.DataFrame):
    for (mv), g in pdf.groupby("model_version"):
        yield mv, "all", g
        for col in SEGMENTS:
            for value, gs in g.groupby(col):
                yield mv, f"{col}={value}", gs


def test_schema_and_one_row_per_group_and_metric(random_case, spark):
    pdf, out = random_case
    assert list(out.columns) == [f.name for f in METRICS_STRUCT.fields]
    assert not out.duplicated(["model_version", "task", "segment", "metric"]).any()
    expected = {(mv, t, seg) for mv, seg, _ in _groups(pdf) for t in TASKS}
    got = set(map(tuple, out[["model_version", "task", "segment"]].drop_duplicates().to_numpy()))
    assert got == expected
    assert set(out["metric"]) == set(METRICS)
    assert (out.groupby(["model_version", "task", "segment"]).size() == len(METRICS)).all()


def test_rank_metrics_and_loss_match_sklearn_and_numpy(random_case):
    pdf, out = random_case
    table = out.set_index(["model_version", "task", "segment", "metric"])
    checked_auc = null_auc = 0
    for mv, seg, g in _groups(pdf):
        for t in TASKS:
            y, p = g[t].to_numpy(), g[f"p_{t}"].to_numpy()
            row = table.loc[(mv, t, seg)]
            value = row["value"]
            assert (row["n"] == len(g)).all()
            assert value["count"] == len(g)
            assert value["positives"] == y.sum()
            if 0 < y.sum() < len(y):
                assert value["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
                checked_auc += 1
                rate = y.mean()
                entropy = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
                ll = log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])
                assert value["ne"] == pytest.approx(ll / entropy, rel=1e-9)
            else:
                assert pd.isna(value["auc"]) and pd.isna(value["ne"])
                null_auc += 1
            if y.sum() > 0:
                assert value["pr_auc"] == pytest.approx(average_precision_score(y, p), abs=1e-9)
                assert value["calibration"] == pytest.approx(p.mean() / y.mean(), rel=1e-9)
            else:
                assert pd.isna(value["pr_auc"]) and pd.isna(value["calibration"])
            ll = log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])
            assert value["logloss"] == pytest.approx(ll, rel=1e-9)
            assert value["mean_prediction"] == pytest.approx(p.mean(), rel=1e-9)
            assert value["label_rate"] == pytest.approx(y.mean(), rel=1e-12, abs=1e-15)
    assert checked_auc >= 30 and null_auc >= 1  # v3/platform=web/like is single-class


def test_gauc_matches_per_user_sklearn(random_case):
    pdf, out = random_case
    table = out.set_index(["model_version", "task", "segment", "metric"])["value"]
    for mv, seg, g in _groups(pdf):
        for t in TASKS:
            num = den = used = excluded = 0
            for _, u in g.groupby("user_id"):
                if u[t].nunique() == 2:
                    num += len(u) * roc_auc_score(u[t], u[f"p_{t}"])
                    den += len(u)
                    used += 1
                else:
                    excluded += 1
            assert table[(mv, t, seg, "gauc_users")] == used
            assert table[(mv, t, seg, "gauc_excluded_users")] == excluded
            if den:
                assert table[(mv, t, seg, "gauc")] == pytest.approx(num / den, abs=1e-9)
            else:
                assert pd.isna(table[(mv, t, seg, "gauc")])


def test_hand_computed_gauc_auc_and_single_class(spark):
    # Users: a = labels 1,0,1 / scores .9,.3,.3 -> pairs (.9>.3)=1, (.3=.3)=1/2 -> AUC 1.5/2 = 0.75
    #        b = labels 0,1   / scores .8,.2    -> the positive scores lower -> AUC 0
    #        c = labels 1,1   / single class    -> excluded
    # GAUC = (3 * 0.75 + 2 * 0) / (3 + 2) = 0.45, users 2, excluded 1.
    # Global AUC over the 7 rows: positives .9,.3,.2,.7,.6 vs negatives .3,.8:
    #   .9 beats both (2), .3 ties .3 (0.5), .2 none (0), .7 beats .3 (1), .6 beats .3 (1)
    #   -> 4.5 / (5 * 2) = 0.45
    rows = [("a", 1, 0.9), ("a", 0, 0.3), ("a", 1, 0.3), ("b", 0, 0.8), ("b", 1, 0.2),
            ("c", 1, 0.7), ("c", 1, 0.6)]
    df = spark.createDataFrame(
        [("m", "x", u, y, p, 0, 0.5) for u, y, p in rows],
        "model_version string, seg string, user string, t int, p_t double, z int, p_z double")
    out = compute_metrics(df, ["t", "z"], ["seg"], "user").toPandas()
    got = out.set_index(["task", "segment", "metric"])["value"]
    assert got[("t", "all", "gauc")] == pytest.approx(0.45, abs=1e-12)
    assert got[("t", "all", "gauc_users")] == 2
    assert got[("t", "all", "gauc_excluded_users")] == 1
    assert got[("t", "all", "auc")] == pytest.approx(0.45, abs=1e-12)
    assert got[("t", "seg=x", "gauc")] == pytest.approx(0.45, abs=1e-12)
    # task z has only negatives: auc, gauc, pr_auc, ne and calibration are null, not 0.5 / 0
    for metric in ("auc", "gauc", "pr_auc", "ne", "calibration"):
        assert pd.isna(got[("z", "all", metric)]), metric
    assert got[("z", "all", "gauc_excluded_users")] == 3
    assert (out["n"] == 7).all()


def test_without_user_column_gauc_is_null_and_nulls_are_left_out(spark):
    df = spark.createDataFrame(
        [("m", 1, 0.8), ("m", 0, 0.2), ("m", None, 0.5), ("m", 1, None), ("m", 0, float("nan")),
         (None, 1, 0.1)],
        "model_version string, t int, p_t double")
    out = compute_metrics(df, ["t"], [], None).toPandas().set_index("metric")
    assert out.loc["count", "value"] == 2 and out.loc["auc", "value"] == 1.0
    assert out["value"][["gauc", "gauc_users", "gauc_excluded_users"]].isna().all()


def test_score_bucket_is_monotone_and_ties_share_a_bucket():
    rng = np.random.default_rng(1)
    s = np.concatenate([rng.random(20000), rng.random(2000) ** 30, 1 - rng.random(2000) ** 30,
                        [0.0, -0.0, 0.5, np.nextafter(0.5, 1), 1.0, 1e-300, -3.0, 7.0]])
    order = np.argsort(s, kind="stable")
    b = score_bucket(s[order])
    assert (np.diff(b) >= 0).all()
    assert score_bucket(np.array([0.0]))[0] == score_bucket(np.array([-0.0]))[0]
    assert len(np.unique(b)) > 300  # fine enough to spread the work
