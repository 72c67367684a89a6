"""Drift statistics (jobs/validate/drift.py) against independent oracles: PSI against a plain
loop, Jensen-Shannon against scipy, quantile edges against numpy; injected changes caught and
stationary days quiet over a 30-day run (numpy samples, no Spark)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from jobs.validate.drift import (
    OOV,
    PSI_FLOOR,
    DayProfile,
    Watched,
    bin_counts,
    compare,
    counts_from_cumulative,
    drifted_features,
    js_distance,
    pool,
    profile_values,
    psi,
    weighted_quantile_edges,
)

THRESHOLDS = {"psi": 0.2, "js": 0.1, "null_share": 0.05}
DENSE = Watched("x", "dense")
PLATFORM = Watched("platform", "categorical", categories=("android", "ios", "web"))


def _psi_loop(e_counts, a_counts):
    e_total, a_total = sum(e_counts), sum(a_counts)
    out = 0.0
    for e, a in zip(e_counts, a_counts):
        pe, pa = max(e / e_total, PSI_FLOOR), max(a / a_total, PSI_FLOOR)
        out += (pa - pe) * math.log(pa / pe)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_psi_and_js_equal_independent_references(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 30))
    e, a = rng.integers(0, 1000, k).astype(float), rng.integers(0, 1000, k).astype(float)
    e[0], a[-1] = 0.0, 0.0   # empty bins on both sides
    assert abs(psi(e, a) - _psi_loop(e, a)) <= 1e-9
    assert abs(js_distance(e, a) - jensenshannon(e / e.sum(), a / a.sum(), base=2)) <= 1e-9
    assert psi(e, e) == 0.0 and js_distance(e, e) == 0.0


def test_edges_and_bins_equal_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=5001)
    edges = weighted_quantile_edges(x, np.ones_like(x), 10)
    want = np.quantile(x, np.arange(1, 10) / 10, method="inverted_cdf")
    assert np.allclose(edges, want, rtol=0, atol=1e-12)
    counts = bin_counts(x, edges)
    loop = [sum(1 for v in x if (i == 0 or v >= edges[i - 1]) and (i == 9 or v < edges[i]))
            for i in range(10)]
    assert counts.tolist() == loop
    # what Spark counts (rows at or above each edge) gives the same bins
    ge = [float((x >= e).sum()) for e in edges]
    assert counts_from_cumulative(ge, len(x)).tolist() == loop
    # tied edges merge: a feature that is 0 on 40% of the rows
    z = np.where(rng.random(5000) < 0.4, 0.0, rng.exponential(size=5000))
    assert len(weighted_quantile_edges(z, np.ones_like(z), 10)) < 9


def _day(ds, rng, n, *, shift=0.0, scale=1.0, mix=(0.5, 0.3, 0.2), new=0.0, nulls=0.02):
    x = rng.normal(shift, scale, n)
    x[rng.random(n) < nulls] = np.nan
    cats = rng.choice(["android", "ios", "web"], n, p=list(mix)).astype(object)
    cats[rng.random(n) < new] = "tv"
    values_x = [None if np.isnan(v) else float(v) for v in x]
    return (DayProfile(ds, {"x": profile_values(DENSE, values_x),
                            "platform": profile_values(PLATFORM, list(cats))}), x)


def _judge(reference_days, today, x_today, wanted=7):
    rows = []
    for name, w in (("x", DENSE), ("platform", PLATFORM)):
        ref = pool(name, reference_days, 10)
        counts = None
        if w.kind == "dense":
            from jobs.validate.drift import current_counts
            counts = current_counts(ref, today.features[name], x_today)
        rows += compare(name, ref, today.features[name], counts, THRESHOLDS, wanted)
    return rows


@pytest.mark.parametrize("change,feature", [
    ({"shift": 1.5}, "x"), ({"shift": 0.5}, "x"), ({"scale": 2.0}, "x"),
    ({"nulls": 0.15}, "x"), ({"mix": (0.2, 0.3, 0.5)}, "platform"), ({"new": 0.05}, "platform")])
def test_injected_changes_are_caught(change, feature):
    rng = np.random.default_rng(3)
    ref = [_day(f"2026-01-0{i + 1}", rng, 5000)[0] for i in range(7)]
    today, x = _day("2026-01-08", rng, 5000, **change)
    rows = _judge(ref, today, x)
    assert drifted_features(rows) == [feature], rows


def test_stationary_days_raise_no_alarm_over_30_days():
    """30 stationary days (5 000 rows each) against their trailing 7: false-alarm rate 0 of
    23 judged days x 2 features x 3 statistics at the default thresholds, and the largest
    statistic is far below its threshold."""
    rng = np.random.default_rng(11)
    days = [_day(f"d{i:02d}", rng, 5000) for i in range(30)]
    judged, alarms, worst = 0, 0, {"psi": 0.0, "js": 0.0, "null_share": 0.0}
    for i in range(7, 30):
        rows = _judge([d for d, _ in days[i - 7:i]], days[i][0], days[i][1])
        judged += len(rows)
        alarms += sum(r.drifted for r in rows)
        for r in rows:
            worst[r.statistic] = max(worst[r.statistic], r.value)
    assert judged == 23 * 2 * 3
    assert alarms == 0
    assert worst["psi"] < 0.2 / 4 and worst["js"] < 0.1 / 2 and worst["null_share"] < 0.05 / 4, worst


def test_short_reference_says_so_instead_of_alarming():
    rng = np.random.default_rng(5)
    ref = [_day(f"2026-01-0{i + 1}", rng, 3000)[0] for i in range(3)]
    today, x = _day("2026-01-04", rng, 3000, shift=3.0)
    rows = _judge(ref, today, x)
    assert rows and not drifted_features(rows)
    assert {r.reference for r in rows} == {"trailing 3 of 7 days 2026-01-01..2026-01-03"}
    assert max(r.value for r in rows if r.statistic == "psi") > 1.0  # measured, not judged


def test_profile_round_trips_and_counts_oov():
    prof = profile_values(PLATFORM, ["ios", "tv", None, "web", "ios"])
    assert prof.counts == {"android": 0, "ios": 2, "web": 1, OOV: 1} and prof.nulls == 1
    day = DayProfile("2026-01-01", {"platform": prof})
    assert DayProfile.from_json(day.to_json()) == day
    ids = Watched("user_id", "categorical", categories=tuple(str(i) for i in range(4)), buckets=4)
    # pmod, as Spark's: -3 -> 1
    assert profile_values(ids, [1, 5, 9, -3, 6, None]).counts == {"0": 0, "1": 4, "2": 1,
                                                                 "3": 0, OOV: 0}
