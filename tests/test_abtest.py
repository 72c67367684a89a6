"""One (task, scope) group of paired rows -> records (values against sklearn / direct formulas),
and verdicts / decisions on data built so that the candidate is better, worse or the same."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from jobs.compare.records import PLOT_STEP, _plot_payload, decide, finish_report, group_records
from jobs.compare.report import reliability_bins
from jobs.core.config import Guardrail
from mmoe_model.hashing import splitmix64


def _group(rng, n=3000, users=150, noise_b=0.8, noise_c=0.8, same=False, noise=0.0):
    """Scores = the true logit plus noise: less noise is a better model (AUC and log loss)."""
    user = rng.integers(0, users, n)
    platform = rng.choice(["ios", "web"], n)
    latent = rng.normal(size=n) + 0.5 * rng.normal(size=users)[user]
    y = (rng.random(n) < 1 / (1 + np.exp(-(latent - 1.0)))).astype(np.int64)
    base = 1 / (1 + np.exp(-(latent - 1.0 + rng.normal(size=n) * noise_b)))
    cand = base if same else 1 / (1 + np.exp(-(latent - 1.0 + rng.normal(size=n) * noise_c)))
    if noise:
        cand = np.clip(base + noise * rng.normal(size=n), 1e-4, 1 - 1e-4)
    return pd.DataFrame({"task": "click", "scope": "all", "u": user.astype(np.int64) * 7919,
                         "y": y, "b": base, "c": cand, "seg0": platform})


def test_records_values_equal_sklearn():
    rng = np.random.default_rng(0)
    pdf = _group(rng, noise_c=0.5)
    out = group_records(pdf, ["platform"], replicates=50, seed=1, alpha=0.05)
    got = {(r.segment, r.metric): r for r in out.itertuples()}
    for seg, rows in (("all", pdf), ("platform=ios", pdf[pdf.seg0 == "ios"])):
        y = rows.y.to_numpy()
        for arm, col in (("baseline_value", "b"), ("candidate_value", "c")):
            s = rows[col].to_numpy()
            assert getattr(got[(seg, "auc")], arm) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
            assert getattr(got[(seg, "pr_auc")], arm) == pytest.approx(average_precision_score(y, s), abs=1e-12)
            assert getattr(got[(seg, "logloss")], arm) == pytest.approx(log_loss(y, s), abs=1e-12)
            assert getattr(got[(seg, "calibration")], arm) == pytest.approx(s.sum() / y.sum(), abs=1e-12)
            # GAUC: row-weighted mean AUC of the users with both classes
            num = den = 0.0
            for _, g in rows.groupby("u"):
                if 0 < g.y.sum() < len(g):
                    num += len(g) * roc_auc_score(g.y, g[col])
                    den += len(g)
            assert getattr(got[(seg, "gauc")], arm) == pytest.approx(num / den, abs=1e-12)
        assert got[(seg, "auc")].n == len(rows)
    assert ("all", "plot") in got


def _decision(pdf):
    records = group_records(pdf, [], replicates=100, seed=0, alpha=0.05)
    report = finish_report(records, "bh", 0.05)
    return report, decide(report, ["auc", "logloss"],
                          [Guardrail("auc", 0.002), Guardrail("logloss", 0.01, relative=True)], ["click"])


def test_verdicts_better_worse_identical():
    rng = np.random.default_rng(1)
    report, d = _decision(_group(rng, noise_c=0.3))
    assert d.tasks == {"click": "better"} and d.ship, d.reasons
    assert set(report[report.metric.isin(["auc", "logloss"])].verdict) == {"better"}
    report, d = _decision(_group(rng, noise_c=1.5))
    assert d.tasks == {"click": "worse"} and not d.ship
    assert any("guardrail broken: click: auc" in r for r in d.reasons)
    report, d = _decision(_group(rng, same=True, noise=1e-3))
    assert d.tasks == {"click": "no_difference"} and not d.ship
    assert set(report.verdict) == {"no_difference"}
    assert not d.broken_guardrails


def test_arrow_entry_equals_pandas_entry():
    import pyarrow as pa

    from jobs.compare.records import group_records_arrow

    rng = np.random.default_rng(7)
    pdf = _group(rng, n=800, noise_c=0.6)
    want = group_records(pdf, ["platform"], replicates=20, seed=1, alpha=0.05)
    got = group_records_arrow(pa.Table.from_pandas(pdf), ["platform"], 20, 1, 0.05).to_pandas()
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_same_seed_same_intervals():
    rng = np.random.default_rng(2)
    pdf = _group(rng, noise_c=0.6)
    a = group_records(pdf, [], replicates=40, seed=5, alpha=0.05)
    b = group_records(pdf.sample(frac=1.0, random_state=3), [], replicates=40, seed=5, alpha=0.05)
    c = group_records(pdf, [], replicates=40, seed=6, alpha=0.05)
    boot = a.method == "bootstrap"
    np.testing.assert_allclose(a[boot].se, b[boot].se, rtol=1e-9)  # row order does not matter
    assert not np.allclose(a[boot].se, c[boot].se)


def test_bootstrap_se_equals_direct_cluster_resampling():
    """The per-(segment, user) path of group_records gives the same replicates as weighting each
    row by its user's Poisson weight directly (a plain loop here), in every segment."""
    from jobs.compare import stats

    rng = np.random.default_rng(6)
    pdf = _group(rng, n=2000, users=80, noise_c=0.6)
    got = group_records(pdf, ["platform"], replicates=64, seed=9, alpha=0.05)
    users, cluster = np.unique(pdf.u.to_numpy(), return_inverse=True)
    hashes = splitmix64(users)
    for seg, rows in (("all", np.ones(len(pdf), bool)), ("platform=web", (pdf.seg0 == "web").to_numpy())):
        y = pdf.y.to_numpy()[rows]
        llb = stats.logloss_terms(y, pdf.b.to_numpy()[rows])
        llc = stats.logloss_terms(y, pdf.c.to_numpy()[rows])
        # each row weighted by its user's Poisson(1) weight of the replicate, one row at a time
        # (the code under test sums per user first; only the weights' generator is shared)
        weights = stats.poisson_weights(hashes, np.arange(64), 9)      # users x replicates
        values = np.column_stack([np.ones(len(y)), llb, llc])
        sums = np.zeros((64, 3))
        for r in range(64):
            for user, row in zip(cluster[rows], values):
                sums[r] += weights[user, r] * row
        want = np.std(sums[:, 2] / sums[:, 0] - sums[:, 1] / sums[:, 0], ddof=1)
        row = got[(got.segment == seg) & (got.metric == "logloss")].iloc[0]
        assert row.se == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("section, message", [
    ("compare: {replicates: 5}", "replicates"),
    ("compare: {adjustment: bonferroni}", "adjustment"),
    ("compare: {guardrails: {accuracy: {max_regression: 0.1}}}", "unknown metric"),
    ("compare: {guardrails: {auc: {max_regression: -1}}}", "max_regression"),
    ("compare: {guardrails: {auc: {limit: 0.1}}}", "mapping with max_regression"),
    ("compare: {tolerance: 1}", "unknown key"),
])
def test_compare_config_refuses_bad_values(refused_config, section, message):
    refused_config(section, message)


@pytest.mark.parametrize("metric, baseline, candidate", [
    ("logloss", 0.5, 0.507),     # worse by 0.007: over 1% of 0.5 (0.005), under an absolute 0.01
    ("logloss", 2.0, 2.015),     # worse by 0.015: under 1% of 2.0 (0.02), over an absolute 0.01
    ("ne", 0.8, 0.8079),         # just under 1% of 0.8
    ("ne", 0.8, 0.8081),         # just over 1% of 0.8
    ("auc", 0.7, 0.6929),        # auc: lower is worse; 1% of 0.7 = 0.007
    ("auc", 0.7, 0.6925),
])
def test_relative_guardrail_decides_on_the_baseline_scaled_limit(metric, baseline, candidate):
    """The decision of a relative guardrail against a plain oracle: broken exactly when the
    regression (in the metric's own direction) exceeds max_regression x |baseline|."""
    report = pd.DataFrame([{"task": "click", "scope": "all", "segment": "all", "metric": metric,
                            "baseline_value": baseline, "candidate_value": candidate,
                            "delta": candidate - baseline, "p_value_adjusted": 0.5,
                            "verdict": "no_difference"}])
    d = decide(report, ["auc"], [Guardrail(metric, 0.01, relative=True)], ["click"])
    worse_by = (baseline - candidate) if metric == "auc" else (candidate - baseline)
    want_broken = worse_by > 0.01 * abs(baseline)
    assert bool(d.broken_guardrails) is want_broken, d.broken_guardrails
    assert d.ship is False                      # nothing is better: never ships either way
    if want_broken:
        assert f"limit {0.01 * abs(baseline):.4g}" in d.broken_guardrails[0]


def test_rare_task_scores_spread_over_the_log_odds_bins_and_reliability_uses_quantiles():
    """A task with ~0.5 % positives: on a 0-1 axis every score would be one spike in the first
    bin; the report's log-odds bins spread them, and its reliability bins hold ~1/10 of the rows
    each, with the observed rate of each bin equal to a plain loop's."""
    rng = np.random.default_rng(4)
    s = 1 / (1 + np.exp(-rng.normal(-5.5, 0.8, 20_000)))
    y = (rng.random(s.size) < s).astype(float)
    payload = json.loads(_plot_payload(y, s, np.clip(s * 1.1, 0, 1)))
    cnt = np.asarray(payload["baseline"]["cnt"])
    assert np.mean(s < 0.05) > 0.99 and (cnt > 0).sum() > 40 and cnt.max() < 0.08 * s.size
    bins = reliability_bins(payload["baseline"])
    assert 9 <= len(bins) <= 10 and sum(b["rows"] for b in bins) == s.size
    assert all(0.05 * s.size < b["rows"] < 0.15 * s.size for b in bins)
    # oracle: the same bins rebuilt row by row from the log-odds edges of each bin
    z = np.log(s) - np.log1p(-s)
    order = np.argsort(z, kind="stable")
    start = 0
    for b in bins:
        rows = order[start:start + b["rows"]]
        start += b["rows"]
        assert b["positives"] == int(y[rows].sum())
        assert b["mean_predicted"] == pytest.approx(s[rows].mean(), rel=1e-6)
    # neighbouring bins do not overlap on the log-odds axis (a fine bin is never split)
    ends = np.cumsum([b["rows"] for b in bins])[:-1]
    assert np.all(np.floor((z[order][ends] + 16) / PLOT_STEP) > np.floor((z[order][ends - 1] + 16) / PLOT_STEP))


# --------------------------------------------------------------------------------------------
# A row's verdict, interval and adjusted p-value agree (issue 32, item 3's fix)


def _seed_vs_seed(rng, n=3000, users=150, shift=0.0):
    """Two arms from the same model up to noise (a seed-vs-seed A/A pair), ``shift`` moving the
    candidate's log-odds toward the truth, and two segment columns."""
    u = rng.integers(0, users, n)
    z = rng.normal(0, 1.2, n) + rng.normal(0, 0.8, users)[u]
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int64)
    noise_b, noise_c = rng.normal(0, 1, n), rng.normal(0, 1, n)
    b = 1 / (1 + np.exp(-(z + noise_b)))
    c = 1 / (1 + np.exp(-(z + (1 - shift) * noise_c)))
    return pd.DataFrame({"task": "like", "scope": "all", "u": u.astype(np.int64), "y": y, "b": b,
                         "c": c, "seg0": rng.choice(["android", "ios", "web"], n),
                         "seg1": rng.choice(["new", "old"], n)})


@pytest.mark.parametrize("method", ["bh", "holm"])
def test_every_rows_verdict_agrees_with_its_interval_and_adjusted_p(method):
    """Many random reports (seed-vs-seed pairs and small real differences, six segments, every
    metric): for every row, a difference <=> its [ci_low, ci_high] excludes 0 <=> adjusted
    p < alpha; and the sign of delta matches the side of 0 the interval lies on. Checked from
    the written columns alone, not from the code's own rule."""
    rng = np.random.default_rng(32)
    alpha, differences = 0.05, 0
    for trial in range(12):
        pdf = _seed_vs_seed(rng, shift=[0.0, 0.05, 0.15][trial % 3])
        report = finish_report(group_records(pdf, ["platform", "cohort"], replicates=60,
                                             seed=trial, alpha=alpha), method, alpha)
        tested = report[np.isfinite(report["p_value_adjusted"])]
        excludes = (tested["ci_low"] > 0) | (tested["ci_high"] < 0)
        differs = tested["verdict"] != "no_difference"
        significant = tested["p_value_adjusted"] < alpha
        bad = tested[(excludes != differs) | (significant != differs)]
        assert bad.empty, (trial, bad[["segment", "metric", "delta", "ci_low", "ci_high",
                                       "p_value_adjusted", "verdict"]])
        assert ((tested["ci_low"] <= tested["delta"]) & (tested["delta"] <= tested["ci_high"])).all()
        # the row's interval is never narrower than the raw 95 % one
        assert (tested["ci_high"] - tested["ci_low"] >=
                tested["ci_high_raw"] - tested["ci_low_raw"] - 1e-15).all()
        differences += int(differs.sum())
    assert differences > 0  # the reports exercise both sides


def test_a_broken_guardrail_stops_the_ship_even_when_another_task_is_better():
    """click clearly better, like worse by more than its auc guardrail but not significantly:
    no task is worse, one is better, and yet the broken guardrail must stop the ship."""
    from jobs.core.config import Guardrail

    def row(task, metric, base, cand, p):
        return {"task": task, "scope": "all", "segment": "all", "metric": metric,
                "method": "delong", "baseline_value": base, "candidate_value": cand,
                "delta": cand - base, "se": 0.01, "p_value": p, "ci_low": cand - base - 0.02,
                "ci_high": cand - base + 0.02, "n": 1000, "payload": None}

    records = pd.DataFrame([row("click", "auc", 0.70, 0.75, 1e-9),
                            row("like", "auc", 0.70, 0.69, 0.3)])
    report = finish_report(records, "bh", 0.05)
    d = decide(report, ["auc"], [Guardrail("auc", 0.005)], ["click", "like"])
    assert d.tasks == {"click": "better", "like": "no_difference"}
    assert d.broken_guardrails and d.broken_guardrails[0].startswith("like: auc regressed")
    assert not d.ship
    # the same report without the guardrail ships (the guardrail is what stops it)
    assert decide(report, ["auc"], [], ["click", "like"]).ship
