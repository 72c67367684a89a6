"""Counterfactual A/B (issue 33): synth's logged exploration and the off-policy estimators,
checked against the simulator's truth, a plain per-request loop written here, and a
user-clustered bootstrap. The Spark path (compare writing policy_values) is at the end."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from jobs.compare.counterfactual import (
    LOGGED,
    SumsConfig,
    policy_values,
    user_sums,
)
from jobs.core.errors import InputError
from jobs.core.policy import systematic_sample
from jobs.data.synth import EXPLORATION, REQUEST_SIZE, generate_synth, synth_logged_day

DS = "2026-11-01"
TASKS = ("click", "like", "conversion")
PARENTS = {"conversion": "click"}


def _pool(day: dict, noise: tuple[float, float], seed: int) -> pd.DataFrame:
    """The estimators' input from a logged synth day, with two "models" written here: the true
    logit of each task plus Gaussian noise (``noise`` per arm; conversion's among clicks)."""
    c = day["candidates"].to_pandas()[["impression_id", "request_id", "user_id", "propensity",
                                        "position"]]
    df = c.merge(day["truth"].to_pandas(), on="impression_id").merge(
        day["labels"].to_pandas(), on="impression_id", how="left")
    rng = np.random.default_rng(seed)
    out = pd.DataFrame({"u": df["user_id"], "r": df["request_id"], "key": df["impression_id"],
                        "shown": df["position"].notna(), "propensity": df["propensity"]})
    for t in TASKS:
        out[f"y_{t}"], out[f"q_{t}"] = df[t], df[f"q_{t}"]
    for arm, sd in zip(("baseline", "candidate"), noise):
        for t in TASKS:
            q = df[f"q_{t}"] / df["q_click"] if t in PARENTS else df[f"q_{t}"]
            out[f"{arm}_{t}"] = 1 / (1 + np.exp(-(np.log(q / (1 - q)) + rng.normal(0, sd, len(df)))))
    return out


CFG = SumsConfig(tasks=TASKS, parents=PARENTS, truth=True)


# --------------------------------------------------------------------------------------------
# The logged data


def _capped_loop(weights: list[float], k: int) -> list[float]:
    """pi-ps capping, one pool, written as the textbook loop."""
    pi = [0.0] * len(weights)
    fixed: set[int] = set()
    while True:
        free = [i for i in range(len(weights)) if i not in fixed]
        total = sum(weights[i] for i in free)
        for i in free:
            pi[i] = (k - len(fixed)) * weights[i] / total
        over = [i for i in free if pi[i] > 1.0]
        if not over:
            break
        for i in over:
            pi[i] = 1.0
            fixed.add(i)
    return pi


@pytest.mark.parametrize("policy", ["uniform", "popularity", "softmax"])
def test_logged_lists_and_their_propensities(policy):
    day = synth_logged_day("synth", 3, DS, 1995, policy, pool=20)
    cand, feats = day["candidates"].to_pandas(), day["features"].to_pandas()
    truth = day["truth"].to_pandas().set_index("impression_id")
    assert len(feats) == 1995 and len(cand) == 200 * 20
    per = feats.groupby("request_id")
    assert (per.size().iloc[:-1] == REQUEST_SIZE).all() and per.size().iloc[-1] == 5
    assert all(sorted(g) == list(range(1, len(g) + 1)) for _, g in per["position"])
    assert not feats["impression_id"].duplicated().any()
    assert set(feats["impression_id"]) <= set(cand["impression_id"])
    shown = cand.dropna(subset=["position"]).set_index("impression_id")
    assert shown.loc[feats["impression_id"], "propensity"].tolist() == feats["propensity"].tolist()
    # the propensity is the logging policy's inclusion probability, recomputed here per pool
    for rid, g in list(cand.groupby("request_id"))[:40]:
        k = int((g["position"].notna()).sum())
        if policy == "uniform":
            w = [1.0] * len(g)
        elif policy == "popularity":
            w = list(g["item_popularity"] + 1.0)
        else:
            q = truth.loc[g["impression_id"], "q_click"].to_numpy()
            logit = np.log(q / (1 - q))
            w = list(np.exp(logit - logit.max()))
        expected = [(1 - EXPLORATION) * p + EXPLORATION * k / len(g) for p in _capped_loop(w, k)]
        assert g["propensity"].to_numpy() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_systematic_sampling_shows_each_candidate_with_its_probability():
    pi = np.array([1.0, 0.9, 0.05, 0.3, 0.25, 0.5, 0.0, 1.0 - 1e-9, 1e-9])
    pi = pi * (4 / pi.sum())
    pi = np.minimum(pi, 1.0)
    pi[np.argmax(pi < 1)] += 4 - pi.sum()     # sums to 4 exactly, each <= 1
    reps = 100_000
    shown = systematic_sample(np.tile(pi, (reps, 1)), np.full(reps, 4), np.random.default_rng(1))
    assert (shown.sum(axis=1) == 4).all()
    sd = np.sqrt(pi * (1 - pi) / reps)
    assert np.all(np.abs(shown.mean(axis=0) - pi) <= 5 * sd + 1e-12)


def test_bad_logging_settings_are_refused(job_config):
    with pytest.raises(InputError, match="--logging-policy must be one of uniform, popularity"):
        generate_synth(job_config, DS, 1, 100, logging_policy="greedy")
    with pytest.raises(InputError, match="--pool-size must be an integer within"):
        generate_synth(job_config, DS, 1, 100, logging_policy="uniform", pool_size=5)
    assert not (job_config.warehouse / "synth").exists()


# --------------------------------------------------------------------------------------------
# The estimators against a plain loop, a bootstrap, and the truth


def _loop_estimates(pool: pd.DataFrame, arm: str, policy: str, task: str, temperature: float,
                    max_weight: float, reward_arm: str = "baseline") -> dict[str, float]:
    """IPS, SNIPS, DR and the truth, one request at a time (top_k / softmax written here)."""
    num_ips = num_dr = den_w = slots = true = 0.0
    for _, g in pool.groupby("r", sort=False):
        k = int(g["shown"].sum())
        if k == 0:
            continue
        s = g[f"{arm}_{task}"] * (g[f"{arm}_{PARENTS[task]}"] if task in PARENTS else 1.0)
        q_hat = g[f"{reward_arm}_{task}"] * (g[f"{reward_arm}_{PARENTS[task]}"]
                                             if task in PARENTS else 1.0)
        if policy == "top_k":
            order = sorted(range(len(g)), key=lambda i: (-s.iloc[i], g["key"].iloc[i]))
            pi = [0.0] * len(g)
            for i in order[:k]:
                pi[i] = 1.0
        else:
            clipped = [min(max(v, 1e-6), 1 - 1e-6) for v in s]   # as documented
            logit = [math.log(v / (1 - v)) for v in clipped]
            top = max(logit)
            pi = _capped_loop([math.exp((v - top) / temperature) for v in logit], k)
        slots += k
        for i in range(len(g)):
            row = g.iloc[i]
            true += pi[i] * row[f"q_{task}"]
            num_dr += pi[i] * q_hat.iloc[i]
            if row["shown"]:
                w = min(pi[i] / row["propensity"], max_weight)
                num_ips += w * row[f"y_{task}"]
                num_dr += w * (row[f"y_{task}"] - q_hat.iloc[i])
                den_w += w
    return {"ips": num_ips / slots, "snips": num_ips / den_w, "dr": num_dr / slots,
            "truth": true / slots}


def test_estimates_equal_a_plain_loop():
    pool = _pool(synth_logged_day("synth", 5, DS, 1500, "popularity", pool=15), (0.4, 0.9), 0)
    cfg = SumsConfig(tasks=TASKS, parents=PARENTS, truth=True, temperature=0.7, max_weight=8.0)
    table = policy_values(user_sums(pool, cfg), truth=True)
    assert table["clipped"].max() > 0       # the clip binds somewhere
    for arm in ("baseline", "candidate"):
        for policy in ("top_k", "softmax"):
            for task in TASKS:
                expected = _loop_estimates(pool, arm, policy, task, 0.7, 8.0)
                got = table[(table["arm"] == arm) & (table["policy"] == policy)
                            & (table["task"] == task)].set_index("estimator")
                for est in ("ips", "snips", "dr"):
                    assert got.loc[est, "value"] == pytest.approx(expected[est], rel=1e-9)
                assert got["truth"].iloc[0] == pytest.approx(expected["truth"], rel=1e-9)


def test_on_policy_ips_is_the_observed_mean_and_ess_is_n():
    pool = _pool(synth_logged_day("synth", 6, DS, 3000, "softmax", pool=20), (0.3, 0.6), 1)
    table = policy_values(user_sums(pool, CFG), truth=True)
    logged = table[table["arm"] == LOGGED].set_index(["task", "estimator"])
    shown = pool[pool["shown"]]
    for t in TASKS:
        assert logged.loc[(t, "ips"), "value"] == pytest.approx(shown[f"y_{t}"].mean(), rel=1e-12)
        assert logged.loc[(t, "snips"), "value"] == pytest.approx(shown[f"y_{t}"].mean(), rel=1e-12)
        assert logged.loc[(t, "ips"), "ess"] == pytest.approx(len(shown), rel=1e-12)
        assert logged.loc[(t, "ips"), "n"] == len(shown)


def test_tiny_propensities_are_clipped_and_shrink_the_ess():
    pool = _pool(synth_logged_day("synth", 7, DS, 2000, "uniform", pool=20), (0.3, 0.6), 2)
    # the baseline's top item of every request, when shown, gets a tiny logged propensity
    s = pool["baseline_click"]
    top = s.eq(s.groupby(pool["r"]).transform("max"))
    tiny = top & pool["shown"]
    pool.loc[tiny, "propensity"] = 1e-6
    for clip in (1e3, 20.0):
        cfg = SumsConfig(tasks=("click",), truth=True, max_weight=clip, policies=("top_k",),
                         arms=("baseline",))
        row = policy_values(user_sums(pool, cfg), truth=True).query(
            "arm == 'baseline' and estimator == 'ips'").iloc[0]
        w = np.where(tiny[pool["shown"]], clip,
                     np.where(_top_k(pool)[pool["shown"]], 1 / pool.loc[pool["shown"], "propensity"], 0))
        assert row["clipped"] == int(tiny.sum())
        assert row["ess"] == pytest.approx(w.sum() ** 2 / (w ** 2).sum(), rel=1e-9)
        y = pool.loc[pool["shown"], "y_click"].to_numpy()
        assert row["value"] == pytest.approx((w * y).sum() / pool["shown"].sum(), rel=1e-9)
    assert row["ess"] < 0.2 * row["n"]


def _top_k(pool: pd.DataFrame) -> pd.Series:
    k = pool.groupby("r")["shown"].transform("sum")
    rank = pool.assign(s=-pool["baseline_click"]).sort_values(["r", "s", "key"]) \
        .groupby("r").cumcount().reindex(pool.index)
    return rank < k


def test_the_interval_matches_a_user_clustered_bootstrap():
    pool = _pool(synth_logged_day("synth", 8, DS, 4000, "popularity", pool=20), (0.3, 0.8), 3)
    cfg = SumsConfig(tasks=("click",), truth=True, policies=("top_k",))
    sums = user_sums(pool, cfg)
    table = policy_values(sums, truth=True).set_index(["arm", "estimator"])
    rng = np.random.default_rng(0)
    users = sums["u"].unique()
    by = {arm: g.set_index("u").loc[users] for arm, g in sums.groupby("arm")}
    reps = {("baseline", "snips"): [], ("difference", "dr"): []}
    for _ in range(400):
        pick = rng.choice(len(users), len(users))
        b, c = by["baseline"].iloc[pick], by["candidate"].iloc[pick]
        reps[("baseline", "snips")].append(b["a_ips"].sum() / b["sw"].sum())
        reps[("difference", "dr")].append(c["a_dr"].sum() / c["slots"].sum()
                                          - b["a_dr"].sum() / b["slots"].sum())
    for key, values in reps.items():
        assert table.loc[key, "se"] == pytest.approx(np.std(values, ddof=1), rel=0.15)


@pytest.fixture(scope="module")
def many_seeds():
    """20 logged days (softmax logging, pools of 50), the two noisy models, estimated."""
    out = []
    for seed in range(20):
        pool = _pool(synth_logged_day("synth", seed, DS, 6000, "softmax", pool=50),
                     (0.3, 0.8), seed)
        out.append(policy_values(user_sums(pool, CFG), truth=True).assign(seed=seed))
    table = pd.concat(out, ignore_index=True)
    table["covered"] = (table["ci_low"] <= table["truth"]) & (table["truth"] <= table["ci_high"])
    table["error"] = (table["value"] - table["truth"]).abs()
    return table


@pytest.mark.parametrize("estimator", ["snips", "dr"])
def test_intervals_cover_the_truth(many_seeds, estimator):
    rows = many_seeds[(many_seeds["estimator"] == estimator) & (many_seeds["arm"] != LOGGED)]
    for (arm, policy), g in rows.groupby(["arm", "policy"]):
        assert g["covered"].mean() >= 0.9, (arm, policy, g["covered"].mean())


def test_doubly_robust_errs_less_than_ips(many_seeds):
    rows = many_seeds[many_seeds["arm"].isin(["baseline", "candidate"])]
    mae = rows.groupby(["policy", "estimator"])["error"].mean().unstack()
    assert (mae["dr"] <= mae["ips"]).all(), mae


# --------------------------------------------------------------------------------------------
# compare on a logged synth day (Spark): the policy_values table and the report


@pytest.fixture(scope="module")
def logged_compare(spark, tmp_path_factory):
    from tiny_models import tiny_model

    from jobs.compare.stage import compare_models
    from jobs.core.config import load_config
    from jobs.core.registry import register_model
    from jobs.score.stage import score_partition
    from jobs.validate.stage import validate_partition
    from schemas import load_spec

    root = tmp_path_factory.mktemp("counterfactual")
    cfg = load_config(warehouse=root / "wh")
    cfg.spark.master = "local[2]"
    cfg.compare.replicates = 20
    cfg.drift.enabled = False
    spec = load_spec("synth")
    generate_synth(cfg, DS, 1, 1500, seed=11, logging_policy="softmax", pool_size=20)
    versions = [register_model(cfg, tiny_model(root / f"m{seed}", seed)).version
                for seed in (1, 2)]
    validate_partition(spark, cfg, spec, DS)
    for v in versions:
        score_partition(spark, cfg, spec, DS, v)
    result = compare_models(spark, cfg, spec, versions[0], versions[1], DS, DS)
    return cfg, spec, versions, result


def test_compare_writes_policy_values_equal_to_the_loop(logged_compare):
    from mmoe_model.artifact import ModelArtifact

    from jobs.core.registry import resolve_model
    from jobs.core.warehouse import Warehouse, read_table

    cfg, spec, versions, result = logged_compare
    wh = Warehouse(cfg.warehouse)
    written = read_table(result.outputs["policy_values"]).to_pandas()
    assert {"baseline", "candidate", "task", "estimator", "value", "ci_low", "ci_high", "ess",
            "n", "truth"} <= set(written.columns)
    assert written["truth"].notna().all() and set(written["estimator"]) == {"ips", "snips", "dr"}
    assert result.record().details["counterfactual"]["status"] == "estimated"
    # the oracle: the pools scored in-process, the estimates by the per-request loop
    cand = read_table(wh.partition("synth", "candidates", DS))
    truth = read_table(wh.partition("synth", "candidate_truth", DS)).to_pandas()
    labels = read_table(wh.partition("synth", "labels", DS)).to_pandas()
    frame = cand.to_pandas()
    pool = pd.DataFrame({"u": frame["user_id"], "r": frame["request_id"],
                         "key": frame["impression_id"], "shown": frame["position"].notna(),
                         "propensity": frame["propensity"], "impression_id": frame["impression_id"]})
    for arm, v in zip(("baseline", "candidate"), versions):
        probs = ModelArtifact.from_files(resolve_model(cfg, "synth", DS, v).files).predict(cand)
        for j, t in enumerate(spec.task_names):
            pool[f"{arm}_{t}"] = probs[:, j]
    pool = pool.merge(truth, on="impression_id").merge(
        labels.rename(columns={t: f"y_{t}" for t in TASKS}), on="impression_id", how="left")
    for (arm, policy, task), g in written[written["arm"].isin(["baseline", "candidate"])].groupby(
            ["arm", "policy", "task"]):
        expected = _loop_estimates(pool, arm, policy, task,
                                   cfg.compare.counterfactual.temperature,
                                   cfg.compare.counterfactual.max_weight)
        got = g.set_index("estimator")["value"]
        for est in ("ips", "snips", "dr"):
            assert got[est] == pytest.approx(expected[est], rel=1e-6), (arm, policy, task, est)
        assert g["truth"].iloc[0] == pytest.approx(expected["truth"], rel=1e-6)
    logged = written[(written["arm"] == LOGGED) & (written["estimator"] == "ips")]
    assert dict(zip(logged["task"], logged["value"])) == pytest.approx(
        labels[list(TASKS)].mean().to_dict(), rel=1e-12)


def test_the_report_shows_the_counterfactual_section(logged_compare):
    cfg, spec, versions, result = logged_compare
    page = open(result.outputs["html"]).read()
    assert "Counterfactual: each model on the lists it would show" in page
    assert page.count("<img") >= 1 and "delta method clustered by user" in page
    summary = open(result.outputs["summary"]).read()
    diff = result.counterfactual.table.query("arm == 'difference' and estimator == 'dr' "
                                             "and policy == 'top_k' and task == 'click'").iloc[0]
    assert f"| top_k | click |" in summary and diff["verdict"].replace("_", " ") in summary
