"""Per-request ranking metrics (issue 32, item 1) against a plain per-request loop written here
from the definitions (and sklearn's ndcg_score where scores are distinct), in numpy
(``jobs.core.ranking``) and through Spark (``jobs.evaluate.ranking``), with requests split across
input partitions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from sklearn.metrics import ndcg_score

from jobs.core.ranking import metric_names, request_values, tie_ranks
from jobs.evaluate.ranking import ranking_metrics

KS = (3, 5)


def _loop_metrics(labels: list[int], scores: list[float], keys: list, ks=KS) -> dict | None:
    """One request by the definitions: rank by score descending, ties by key ascending."""
    ranked = [y for _, _, y in sorted(zip((-s for s in scores), keys, labels))]
    positives = sum(ranked)
    if positives == 0:
        return None
    out = {}
    for k in ks:
        dcg = sum((2 ** y - 1) / math.log2(r + 2) for r, y in enumerate(ranked[:k]))
        ideal = sum(1 / math.log2(r + 2) for r in range(min(positives, k)))
        hits, ap = 0, 0.0
        for r, y in enumerate(ranked[:k]):
            if y:
                hits += 1
                ap += hits / (r + 1)
        out[f"ndcg@{k}"] = dcg / ideal
        out[f"map@{k}"] = ap / min(positives, k)
        out[f"recall@{k}"] = hits / positives
        out[f"hit_rate@{k}"] = float(hits > 0)
    out["mrr"] = 1.0 / (ranked.index(1) + 1)
    return out


def _requests(rng, n_requests=400, size=10, ties=False):
    request = np.repeat(np.arange(n_requests), size)
    n = len(request)
    s = rng.random(n)
    if ties:
        s = np.round(s, 1)  # many tied scores within a request
    y = (rng.random(n) < 0.12 + 0.3 * s).astype(np.int64)
    key = rng.permutation(n).astype(np.int64)
    return request, y, s, key


@pytest.mark.parametrize("ties", [False, True])
def test_numpy_values_equal_the_plain_loop(ties):
    rng = np.random.default_rng(5)
    request, y, s, key = _requests(rng, ties=ties)
    got = request_values(request, y, s, tie_ranks(key), KS)
    judged = 0
    for i, r in enumerate(got.groups):
        rows = request == r
        want = _loop_metrics(list(y[rows]), list(s[rows]), list(key[rows]))
        if want is None:
            assert not got.judged[i] and all(np.isnan(v[i]) for v in got.values.values())
            continue
        judged += 1
        for name in metric_names(KS):
            assert got.values[name][i] == pytest.approx(want[name], abs=1e-12), (r, name)
    assert 100 < judged < len(got.groups)  # both kinds of request present


def test_ndcg_equals_sklearn_when_scores_are_distinct():
    rng = np.random.default_rng(6)
    request, y, s, key = _requests(rng, n_requests=200)
    got = request_values(request, y, s, tie_ranks(key), KS)
    for i, r in enumerate(got.groups):
        rows = request == r
        if y[rows].sum() == 0:
            continue
        for k in KS:
            want = ndcg_score(y[rows][None, :], s[rows][None, :], k=k)
            assert got.values[f"ndcg@{k}"][i] == pytest.approx(want, abs=1e-12)


def _oracle_table(pdf: pd.DataFrame, segments: list[str]) -> pd.DataFrame:
    """Means over requests with a positive, per model_version x task x segment, by loops."""
    rows = []
    for (mv, task), g in pdf.groupby(["model_version", "task"]):
        levels = [("all", [("all", g)])] + [
            (c, [(f"{c}={v}", sub) for v, sub in g.groupby(c)]) for c in segments]
        for _, parts in levels:
            for seg, sub in parts:
                per_request = [m for _, req in sub.groupby("request_id")
                               if (m := _loop_metrics(list(req.y), list(req.p), list(req.impression_id)))]
                for name in metric_names(KS):
                    rows.append({"model_version": mv, "task": task, "segment": seg, "metric": name,
                                 "value": float(np.mean([m[name] for m in per_request])),
                                 "n": len(per_request)})
    return pd.DataFrame(rows)


def test_spark_equals_the_loop_with_requests_split_across_partitions(spark):
    rng = np.random.default_rng(7)
    request, y, s, key = _requests(rng, n_requests=300)
    n = len(request)
    platform = np.array(["ios", "android"])[request % 2]            # constant within a request
    slot = np.array(["top", "feed", "side"])[rng.integers(0, 3, n)]  # mixed within a request
    frames = []
    for mv, noise in (("A", 0.0), ("B", 0.3)):
        p = np.clip(s + noise * rng.normal(size=n), 0, 1)
        frames.append(pd.DataFrame({"model_version": mv, "request_id": request,
                                    "impression_id": key, "platform": platform, "slot": slot,
                                    "click": y, "p_click": p}))
    pdf = pd.concat(frames, ignore_index=True)
    # shuffled rows in 7 input partitions: a request's rows sit in several of them
    frame = spark.createDataFrame(pdf.sample(frac=1.0, random_state=1)).repartition(7)
    spread = (frame.select("request_id", F.spark_partition_id().alias("part")).distinct()
              .groupBy("request_id").count().where("count > 1").count())
    assert spread > 100
    got = ranking_metrics(frame, ["click"], ["platform", "slot"], "request_id", ["impression_id"],
                          KS).toPandas()
    want = _oracle_table(pdf.rename(columns={"click": "y", "p_click": "p"}).assign(task="click"),
                         ["platform", "slot"])
    on = ["model_version", "task", "segment", "metric"]
    merged = want.merge(got, on=on, how="outer", suffixes=("_want", "_got"), indicator=True)
    assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"]
    np.testing.assert_allclose(merged["value_got"], merged["value_want"], rtol=0, atol=1e-9)
    assert (merged["n_got"] == merged["n_want"]).all()


def test_compare_pairs_ranking_metrics_with_a_user_clustered_bootstrap():
    """compare's records (one group, numpy): each arm's ranking values equal the plain loop;
    the bootstrap SE of delta equals the analytic user-clustered SE of a ratio estimator
    (requests of one user resampled together), with 400 replicates within 20 %."""
    from jobs.compare.records import group_records

    rng = np.random.default_rng(8)
    request, y, s, key = _requests(rng, n_requests=1200)
    users = 60
    user_of_request = rng.integers(0, users, 1200)
    u = user_of_request[request]
    good = (rng.random(users) < 0.5)[u]                  # the candidate ranks half the users
    b = np.clip(s + 0.3 * rng.normal(size=len(s)), 0, 1)  # well, the others at random: the
    c = np.where(good, s, rng.random(len(s)))             # deltas cluster by user
    pdf = pd.DataFrame({"task": "click", "scope": "all", "u": u.astype(np.int64), "y": y,
                        "b": b, "c": c, "r": request.astype(np.int64), "k0": key})
    rec = group_records(pdf, [], replicates=400, seed=3, alpha=0.05, ks=KS)
    got = rec[rec.segment == "all"].set_index("metric")
    per = {}
    for r in np.unique(request):
        rows = request == r
        mb = _loop_metrics(list(y[rows]), list(b[rows]), list(key[rows]))
        if mb is not None:
            mc = _loop_metrics(list(y[rows]), list(c[rows]), list(key[rows]))
            per[r] = (user_of_request[r], mb, mc)
    for name in metric_names(KS):
        vb = np.array([m[name] for _, m, _ in per.values()])
        vc = np.array([m[name] for _, _, m in per.values()])
        assert got.loc[name, "baseline_value"] == pytest.approx(vb.mean(), abs=1e-12)
        assert got.loc[name, "candidate_value"] == pytest.approx(vc.mean(), abs=1e-12)
        assert got.loc[name, "n"] == len(per)
    # the analytic clustered SE of delta = sum(D) / N, D and N summed per user
    owner = np.array([o for o, _, _ in per.values()])
    d = np.array([mc["ndcg@5"] - mb["ndcg@5"] for _, mb, mc in per.values()])
    delta = d.mean()
    resid = np.bincount(owner, weights=d - delta, minlength=users)
    se_user = np.sqrt(np.sum(resid ** 2)) / len(d)
    se_request = np.sqrt(np.sum((d - delta) ** 2)) / len(d)
    assert se_user > 1.3 * se_request                  # the data tells the two apart
    assert got.loc["ndcg@5", "se"] == pytest.approx(se_user, rel=0.2), (se_user, se_request)
