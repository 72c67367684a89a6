"""The metric registry (jobs/core/metric_registry.py) is the one source of names, order, direction
and formulas: evaluate's engine and compare's engine agree to 1e-12 on the same rows and both
equal independent oracles; the metrics table, the A/B table and report, the guardrails and the
verdicts follow the registry; and the registry's directions agree with which model is better on
data where that is known."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from jobs.compare.records import Decision, decide, finish_report, group_records
from jobs.compare.report import render_html
from jobs.compare.stage import CompareResult, Pairing, ab_table
from jobs.core import metric_registry as registry
from jobs.core.config import CompareConfig, Guardrail
from jobs.core.errors import ConfigError
from jobs.evaluate.metrics import compute_metrics

TOL = 1e-12
# the directions, stated from the metrics' definitions (independent of the registry)
DIRECTIONS = {"auc": "higher", "gauc": "higher", "pr_auc": "higher", "logloss": "lower",
              "ne": "lower", "calibration": "closer_to_1"}


def _rows(seed: int = 3, n: int = 2500, users: int = 120) -> pd.DataFrame:
    """Two arms on the same rows: ``c`` is the true probability (a good, calibrated model), ``b``
    a noisy, over-confident one; scores rounded so that ties occur within and across users."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, n)
    latent = rng.normal(size=n) + 0.6 * rng.normal(size=users)[user] - 1.0
    y = (rng.random(n) < 1 / (1 + np.exp(-latent))).astype(np.int64)
    good = np.round(1 / (1 + np.exp(-latent)), 3)
    bad = np.round(1 / (1 + np.exp(-(1.8 * latent + 1.5 * rng.normal(size=n) + 0.7))), 2)
    return pd.DataFrame({"u": user.astype(np.int64), "y": y, "b": np.clip(bad, 0.0, 1.0),
                         "c": good, "seg0": rng.choice(["ios", "web", "tv"], n)})


def _oracle(rows: pd.DataFrame, col: str) -> dict[str, float]:
    """Independent formulas: sklearn for AUC / AP / log loss, a pair count per user for GAUC,
    numpy for NE and calibration."""
    y, s = rows["y"].to_numpy(), rows[col].to_numpy()
    ll = log_loss(y, np.clip(s, 1e-15, 1 - 1e-15), labels=[0, 1])
    rate = y.mean()
    num = den = 0.0
    for _, g in rows.groupby("u"):  # a user's AUC by counting its pairs (ties count 1/2)
        pos, neg = g[col][g["y"] == 1].to_numpy(), g[col][g["y"] == 0].to_numpy()
        if len(pos) and len(neg):
            wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
            num += len(g) * wins.mean()
            den += len(g)
    return {"auc": roc_auc_score(y, s), "pr_auc": average_precision_score(y, s), "logloss": ll,
            "ne": ll / -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate)),
            "calibration": s.sum() / y.sum(), "gauc": num / den}


@pytest.fixture(scope="module")
def both_engines(spark):
    rows = _rows()
    long = pd.concat([rows.assign(model_version=arm, p_click=rows[arm]) for arm in ("b", "c")])
    frame = spark.createDataFrame(long.rename(columns={"y": "click", "seg0": "platform"})
                                  [["model_version", "u", "platform", "click", "p_click"]])
    evaluated = compute_metrics(frame, ["click"], ["platform"], "u").toPandas()
    records = group_records(rows.assign(task="click", scope="all"), ["platform"], replicates=4,
                            seed=0, alpha=0.05)
    return rows, evaluated, records


def test_evaluate_and_compare_engines_agree_and_equal_oracles(both_engines):
    rows, evaluated, records = both_engines
    ev = {(r.model_version, r.segment, r.metric): r.value for r in evaluated.itertuples()}
    cmp = {(r.segment, r.metric): r for r in records.itertuples()}
    for segment, part in [("all", rows)] + [(f"platform={v}", g) for v, g in rows.groupby("seg0")]:
        for arm, field in (("b", "baseline_value"), ("c", "candidate_value")):
            oracle = _oracle(part, arm)
            assert set(oracle) == set(registry.COMPARED)
            for m in registry.COMPARED:
                ours_eval, ours_cmp = ev[(arm, segment, m)], getattr(cmp[(segment, m)], field)
                assert abs(ours_eval - ours_cmp) <= TOL, (segment, arm, m, ours_eval, ours_cmp)
                assert ours_eval == pytest.approx(oracle[m], rel=1e-11, abs=TOL), (segment, arm, m)


def test_metrics_table_follows_the_registry_order(both_engines):
    _, evaluated, _ = both_engines
    assert tuple(dict.fromkeys(evaluated["metric"])) == registry.ENGINE
    for _, g in evaluated.groupby(["model_version", "task", "segment"], sort=False):
        assert tuple(g["metric"]) == registry.ENGINE


def test_registry_directions_agree_with_the_known_better_model(both_engines):
    """``c`` is the data-generating probability and ``b`` a noisy, miscalibrated score: every
    quality metric must judge c better, through the registry and through compare's verdicts."""
    rows, _, records = both_engines
    pooled = {r.metric: r for r in records.itertuples() if r.segment == "all"}
    for m in registry.COMPARED:
        r = pooled[m]
        assert registry.is_better(m, r.baseline_value, r.candidate_value), m
        assert not registry.is_better(m, r.candidate_value, r.baseline_value), m
        assert registry.regression(m, r.candidate_value, r.baseline_value) > 0, m
    assert {m: registry.metric(m).direction for m in registry.COMPARED} == DIRECTIONS
    report = finish_report(records, "bh", 0.05)
    verdicts = {r["metric"]: r["verdict"] for r in report.to_dict("records") if r["segment"] == "all"}
    assert verdicts["auc"] == verdicts["logloss"] == "better"


def _report() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = _rows(seed=5, n=1200, users=60).sample(frac=1.0, random_state=2)
    records = group_records(rows.assign(task="click", scope="all"), ["platform"], replicates=8,
                            seed=0, alpha=0.05)
    records = records.sample(frac=1.0, random_state=int(rng.integers(1 << 30)))  # arrive unordered
    return ab_table(finish_report(records, "bh", 0.05), "1", "2", "2024-01-01", "2024-01-02")


def test_ab_table_and_report_follow_the_registry_order():
    table = _report()
    for _, g in table.groupby(["task", "segment"], sort=False):
        assert tuple(g["metric"]) == registry.COMPARED
    decision = Decision(False, {"click": "better"})
    result = CompareResult("ds", "1", "2", "2024-01-01", "2024-01-02", ["platform"], [],
                           Pairing(1, 1, 1, 0, 0, 0), table, {}, decision)
    page = render_html(result)
    pooled = page.split("<h2>Pointwise (whole range, all rows)</h2>")[1].split("</table>")[0]
    shown = re.findall(r"<td class=l>click</td><td class=l>([a-z_]+)</td>", pooled)
    assert tuple(shown) == registry.COMPARED
    segments = page.split("<h2>Segments (whole range)</h2>")[1].split("<h2>")[0]
    assert "<h3>platform</h3>" in segments  # grouped by segment column
    for seg in ("ios", "tv", "web"):
        # rows with a verdict in one table, the rest collapsed in another: each in registry order
        shown = [re.findall(rf"<td class=l>click / {seg}</td><td class=l>([a-z_]+)</td>", t)
                 for t in segments.split("</table>")]
        assert sorted(m for t in shown for m in t) == sorted(registry.COMPARED)
        for t in shown:
            assert t == [m for m in registry.COMPARED if m in t]


@pytest.mark.parametrize("metric", registry.COMPARED)
def test_guardrails_accept_exactly_the_compared_metrics_and_judge_by_direction(metric):
    assert CompareConfig(guardrails={metric: {"max_regression": 0.01}}).guardrail_list() \
        == [Guardrail(metric, 0.01)]
    direction = DIRECTIONS[metric]
    # the candidate moves 0.05 the wrong way for the metric (per its definition, not the code)
    base = 0.9 if direction == "closer_to_1" else 0.5
    cand = {"higher": base - 0.05, "lower": base + 0.05, "closer_to_1": base - 0.05}[direction]
    report = pd.DataFrame([{"task": "click", "scope": "all", "segment": "all", "metric": metric,
                            "baseline_value": base, "candidate_value": cand, "verdict": "no_difference",
                            "p_value_adjusted": 1.0}])
    broken = decide(report, [metric], [Guardrail(metric, 0.01)], ["click"]).broken_guardrails
    assert len(broken) == 1 and f"{metric} regressed by 0.05" in broken[0]
    mirrored = report.assign(candidate_value=2 * base - cand)   # the same step the right way
    assert not decide(mirrored, [metric], [Guardrail(metric, 0.01)], ["click"]).broken_guardrails


@pytest.mark.parametrize("metric", [m for m in registry.BY_NAME if m not in registry.COMPARED])
def test_guardrails_refuse_metrics_without_direction(metric):
    with pytest.raises(ConfigError, match="unknown metric"):
        CompareConfig(guardrails={metric: {"max_regression": 0.01}}).guardrail_list()


def test_registry_formulas_on_hand_sums():
    s = registry.Sums(count=np.array([4.0, 3.0, 0.0]), positives=np.array([1.0, 3.0, 0.0]),
                      p_sum=np.array([1.2, 2.7, 0.0]), logloss_sum=np.array([2.0, 0.3, 0.0]),
                      auc2=np.array([4.0, 0.0, 0.0]), ap_sum=np.array([0.5, 3.0, 0.0]),
                      gauc_sum=np.array([1.5, 0.0, 0.0]), gauc_rows=np.array([2.0, 0.0, 0.0]))
    v = registry.values(s, registry.COMPARED)
    rate = 0.25
    np.testing.assert_allclose(v["auc"][0], 4.0 / (2 * 1 * 3))
    np.testing.assert_allclose(v["ne"][0], 0.5 / -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate)))
    np.testing.assert_allclose([v["logloss"][0], v["calibration"][0], v["pr_auc"][0], v["gauc"][0]],
                               [0.5, 1.2, 0.5, 0.75])
    # one class: no auc, no ne; no rows: nothing but NaN
    assert np.isnan(v["auc"][1]) and np.isnan(v["ne"][1]) and np.isnan(v["gauc"][1])
    assert all(np.isnan(v[m][2]) for m in registry.COMPARED)
    with pytest.raises(ValueError, match="not computed from sums"):
        registry.values(s, registry.GATES)
