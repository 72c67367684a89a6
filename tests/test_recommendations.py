"""evaluate --recommendations (issue 34 item 2): the lists written for a day judged against the
interactions logged on it, every figure against a plain per-user loop written here; the
metrics partition keeps the predictions' rows, and they keep these."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _frames import random_features
from typer.testing import CliRunner

from jobs.core.errors import MissingInputError
from jobs.core.warehouse import Warehouse, read_table
from jobs.evaluate.stage import evaluate_recommendations
from schemas import load_spec
from schemas.tables import features_arrow_schema, labels_arrow_schema

DS = "2026-11-05"
USERS, ITEMS, TOP_K, LOGGED = 40, 60, 10, 1500
CATEGORIES = ["apparel", "books", "food", "toys"]


def _write(path, table):
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path / "part-0.parquet")


@pytest.fixture
def world(job_config):
    """Items (popularity, category), two versions' top-10 lists per user (some users without
    a list), one day of logged impressions with labels; all written as the jobs write them."""
    spec = load_spec("synth")
    rng = np.random.default_rng(5)
    wh = Warehouse(job_config.warehouse)
    items = pd.DataFrame({"item_id": np.arange(ITEMS, dtype=np.int64) + 500,
                          "item_popularity": rng.integers(0, 30, ITEMS).astype(np.int64),
                          "item_category": rng.choice(CATEGORIES, ITEMS)})
    _write(wh.catalog(spec.name, "items"), pa.Table.from_pandas(items, preserve_index=False))
    lists = {}
    for v, skew in (("A", 0.0), ("B", 2.0)):
        rows = []
        for u in range(USERS - 5):               # users 35..39 got no list
            weights = np.exp(skew * items["item_popularity"].to_numpy() / 30)
            chosen = rng.choice(items["item_id"], TOP_K, replace=False, p=weights / weights.sum())
            rows += [(u, r + 1, int(i), 1.0 / (r + 1)) for r, i in enumerate(chosen)]
        lists[v] = pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score"])
        _write(wh.partition(spec.name, "recommendations", DS, model_version=v),
               pa.Table.from_pandas(lists[v], preserve_index=False))
    features = random_features(spec, rng, LOGGED, users=USERS).to_pandas()
    features["item_id"] = rng.choice(items["item_id"], LOGGED)
    _write(wh.partition(spec.name, "features", DS), pa.Table.from_pandas(
        features, schema=features_arrow_schema(spec), preserve_index=False))
    labels = pd.DataFrame({"impression_id": features["impression_id"],
                           **{t: (rng.random(LOGGED) < rate).astype(np.int32) for t, rate in
                              zip(spec.task_names, (0.3, 0.1, 0.05))}})
    _write(wh.partition(spec.name, "labels", DS),
           pa.Table.from_pandas(labels, schema=labels_arrow_schema(spec), preserve_index=False))
    job_config.scoring.catalog.top_k = TOP_K
    return spec, wh, items, lists, features.merge(labels, on="impression_id")


def _loop(lists: pd.DataFrame, logs: pd.DataFrame, items: pd.DataFrame, task: str, ks) -> dict:
    """Every figure by its definition, one user at a time."""
    out: dict[str, list[float]] = {}
    for u, lst in lists.groupby("user_id"):
        ranked = list(lst.sort_values("rank")["item_id"])
        positives = set(logs[(logs.user_id == u) & (logs[task] > 0)]["item_id"])
        if not positives:
            continue
        for k in ks:
            top = ranked[:k]
            hits = [i for i in top if i in positives]
            dcg = sum(1 / math.log2(r + 2) for r, i in enumerate(top) if i in positives)
            ideal = sum(1 / math.log2(r + 2) for r in range(min(len(positives), k)))
            for name, value in ((f"recall@{k}", len(hits) / len(positives)),
                                (f"precision@{k}", len(hits) / k),
                                (f"hit_rate@{k}", float(bool(hits))), (f"ndcg@{k}", dcg / ideal)):
                out.setdefault(name, []).append(value)
    return {m: (float(np.mean(v)), len(v)) for m, v in out.items()}


def _catalog_loop(lists: pd.DataFrame, logs: pd.DataFrame, items: pd.DataFrame) -> dict:
    exposure = [int((lists.item_id == i).sum()) for i in items.item_id]
    n = len(exposure)  # Gini as the mean absolute difference over twice the mean
    gini = sum(abs(a - b) for a in exposure for b in exposure) / (2 * n * n * np.mean(exposure))
    pops = sorted(items.item_popularity)
    # percent_rank: (rank - 1) / (n - 1), rank = 1 + items strictly less popular
    pct = {i: sum(q < p for q in pops) / (n - 1) for i, p in zip(items.item_id, items.item_popularity)}
    users = logs.user_id.nunique()
    shown = {i: logs[logs.item_id == i].user_id.nunique() for i in items.item_id}
    category = dict(zip(items.item_id, items.item_category))
    diversity = []
    for _, lst in lists.groupby("user_id"):
        cats = [category[i] for i in lst.item_id]
        pairs = [(a, b) for a in range(len(cats)) for b in range(len(cats)) if a != b]
        diversity.append(sum(cats[a] != cats[b] for a, b in pairs) / len(pairs))
    return {"coverage": (lists.item_id.nunique() / n, n), "exposure_gini": (gini, n),
            "popularity_bias": (float(np.mean([pct[i] for i in lists.item_id])), len(lists)),
            "diversity": (float(np.mean(diversity)), len(diversity)),
            "novelty": (float(np.mean([-math.log2((shown[i] + 1) / (users + 1))
                                       for i in lists.item_id])), len(lists))}


def test_recommendation_metrics_equal_a_plain_loop_and_keep_the_other_rows(spark, job_config, world):
    spec, wh, items, lists, logs = world
    # the day's prediction metrics already there (another family of the same version)
    other = pa.table({"model_version": ["A"], "task": ["click"], "segment": ["all"],
                      "metric": ["auc"], "value": [0.7], "n": pa.array([100], pa.int64())})
    _write(wh.partition(spec.name, "metrics", DS), other)
    result = evaluate_recommendations(spark, job_config, spec, DS)
    assert result.versions == ["A", "B"]
    table = read_table(wh.partition(spec.name, "metrics", DS)).to_pandas()
    assert len(table[(table.segment == "all") & (table.metric == "auc")]) == 1   # kept
    ks = sorted({5, 10, TOP_K})
    for v in ("A", "B"):
        got = table[(table.model_version == v) & (table.segment == "recommendations")]
        for t in spec.task_names:
            want = _loop(lists[v], logs, items, t, ks)
            mine = got[got.task == t].set_index("metric")
            assert set(mine.index) == set(want)
            for m, (value, n) in want.items():
                assert mine.loc[m, "value"] == pytest.approx(value, abs=1e-12), (v, t, m)
                assert mine.loc[m, "n"] == n
        mine = got[got.task == "all"].set_index("metric")
        for m, (value, n) in _catalog_loop(lists[v], logs, items).items():
            assert mine.loc[m, "value"] == pytest.approx(value, abs=1e-12), (v, m)
            assert mine.loc[m, "n"] == n, (v, m)
    # B leans on popular items: more popularity bias, less novelty, as constructed
    by = table[table.task == "all"].set_index(["model_version", "metric"])["value"]
    assert by[("B", "popularity_bias")] > by[("A", "popularity_bias")]
    # a rerun replaces its own rows only
    evaluate_recommendations(spark, job_config, spec, DS, ["A"])
    again = read_table(wh.partition(spec.name, "metrics", DS)).to_pandas()
    assert len(again) == len(table)


def test_missing_inputs_are_one_line_and_the_cli_flag_runs_it(spark, job_config, world):
    spec, wh, *_ = world
    job_config.evaluation.recommendations_label_offset_days = 1
    with pytest.raises(MissingInputError, match=r"no features for synth ds=2026-11-06 .*offset_days=1"):
        evaluate_recommendations(spark, job_config, spec, DS)
    with pytest.raises(MissingInputError, match="no recommendations for synth ds=2026-11-04"):
        evaluate_recommendations(spark, job_config, spec, "2026-11-04")
    from jobs.cli import app

    run = CliRunner().invoke(app, ["--warehouse", str(job_config.warehouse), "evaluate",
                                   "--dataset", "synth", "--ds", DS, "--recommendations"])
    assert run.exit_code == 0, run.output
    table = read_table(wh.partition(spec.name, "metrics", DS)).to_pandas()
    assert {"coverage", "recall@10", "precision@5"} <= set(table.metric)


def _per_user_loop(lists: pd.DataFrame, logs: pd.DataFrame, task: str, k: int) -> dict:
    """recall@k per user with a list and a positive, by its definition."""
    out = {}
    for u, lst in lists.groupby("user_id"):
        positives = set(logs[(logs.user_id == u) & (logs[task] > 0)]["item_id"])
        if positives:
            top = list(lst.sort_values("rank")["item_id"])[:k]
            out[u] = sum(i in positives for i in top) / len(positives)
    return out


def test_compare_pairs_the_two_versions_recommendations(spark, job_config, world):
    from scipy import stats

    from jobs.compare.stage import compare_models

    spec, wh, items, lists, logs = world
    rng = np.random.default_rng(8)
    for v in ("A", "B"):   # compare needs both versions' scored impressions of the range
        preds = pd.DataFrame({"impression_id": logs["impression_id"],
                              **{f"p_{t}": rng.random(len(logs)) for t in spec.task_names}})
        preds["scored_at"] = pd.Timestamp("2026-11-06", tz="UTC")
        _write(wh.partition(spec.name, "predictions", DS, model_version=v),
               pa.Table.from_pandas(preds, preserve_index=False))
    job_config.compare.replicates = 20
    result = compare_models(spark, job_config, spec, "A", "B", DS, DS)
    assert result.recommendation_days == [DS]
    written = read_table(result.outputs["ab_reports"]).to_pandas()
    rec = written[written.segment == "recommendations"].set_index(["task", "metric"])
    for t in spec.task_names:
        a, b = (_per_user_loop(lists[v], logs, t, TOP_K) for v in ("A", "B"))
        users = sorted(set(a) & set(b))
        diff = np.array([b[u] - a[u] for u in users])
        row = rec.loc[(t, f"recall@{TOP_K}")]
        assert row["baseline_value"] == pytest.approx(np.mean([a[u] for u in users]), abs=1e-12)
        assert row["delta"] == pytest.approx(diff.mean(), abs=1e-12)
        assert row["n"] == len(users)
        se = stats.sem(diff)   # one day: the paired t interval's standard error
        assert row["ci_high"] - row["delta"] == pytest.approx(1.959964 * se, rel=1e-5)
        lo, hi = row["ci_low"], row["ci_high"]
        assert row["verdict"] == ("better" if lo > 0 else "worse" if hi < 0 else "no_difference")
    catalog = {v: _catalog_loop(lists[v], logs, items) for v in ("A", "B")}
    for m in ("coverage", "exposure_gini", "popularity_bias", "novelty", "diversity"):
        row = rec.loc[("all", m)]
        assert row["delta"] == pytest.approx(catalog["B"][m][0] - catalog["A"][m][0], abs=1e-12)
        assert row["verdict"] == "not_tested" and pd.isna(row["ci_low"])
    page = open(result.outputs["html"]).read()
    assert "Recommendations (catalog top-K, paired by user)" in page
    assert result.record().details["recommendations"] == {"days": [DS], "rows": len(rec)}
