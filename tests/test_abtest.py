"""One (task, scope) group of paired rows -> records (values against sklearn / direct formulas),
and verdicts / decisions on data built so that the candidate is better, worse or the same."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from jobs.compare.records import decide, finish_report, group_records
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
    row by its user's Poisson weight directly (stats.replicate_sums), in every segment."""
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
        sums = stats.replicate_sums(cluster[rows], np.column_stack([np.ones(len(y)), llb, llc]),
                                    hashes, 64, 9)
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
