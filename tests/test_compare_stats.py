"""The pure statistics of `mmoe compare` against independent oracles: an O(n^2) DeLong, sklearn,
hand-worked numbers, straightforward loops for the p-value adjustments, and simulation for the
bootstrap's coverage and its clustering."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from jobs.compare import stats


def _delong_reference(y, sb, sc):
    """DeLong's statistic straight from the definition: psi over all positive x negative pairs."""
    y = np.asarray(y).astype(bool)
    out = []
    for s in (sb, sc):
        x, z = s[y][:, None], s[~y][None, :]
        psi = (x > z) + 0.5 * (x == z)
        out.append((psi.mean(axis=1), psi.mean(axis=0)))
    (v10b, v01b), (v10c, v01c) = out
    s10 = np.cov(np.vstack([v10b, v10c]))
    s01 = np.cov(np.vstack([v01b, v01c]))
    c = np.array([-1.0, 1.0])
    var = c @ s10 @ c / y.sum() + c @ s01 @ c / (~y).sum()
    delta = v10c.mean() - v10b.mean()
    p = math.erfc(abs(delta) / math.sqrt(var) / math.sqrt(2.0))
    return v10b.mean(), v10c.mean(), delta, var, p


@pytest.mark.parametrize("case", ["random", "ties", "heavy_ties"])
def test_delong_equals_quadratic_reference(case):
    rng = np.random.default_rng({"random": 1, "ties": 2, "heavy_ties": 3}[case])
    n = 400
    y = rng.random(n) < 0.3
    latent = y * 0.8 + rng.normal(size=n)
    sb = 1 / (1 + np.exp(-latent))
    sc = 1 / (1 + np.exp(-(latent + 0.7 * rng.normal(size=n))))
    if case == "ties":
        sb, sc = np.round(sb, 2), np.round(sc, 2)
    elif case == "heavy_ties":
        sb, sc = np.round(sb * 3) / 3, np.round(sc * 4) / 4  # 4 and 5 distinct scores
    auc_b, auc_c, delta, var, p = _delong_reference(y, sb, sc)
    got = stats.delong(y, sb, sc)
    assert got.baseline == pytest.approx(auc_b, abs=1e-9)
    assert got.baseline == pytest.approx(roc_auc_score(y, sb), abs=1e-9)
    assert got.candidate == pytest.approx(roc_auc_score(y, sc), abs=1e-9)
    assert got.delta == pytest.approx(delta, abs=1e-9)
    assert got.se ** 2 == pytest.approx(var, abs=1e-9)
    assert got.p_value == pytest.approx(p, abs=1e-9)


def test_delong_hand_checked():
    # positives 0.9, 0.4 / negatives 0.6, 0.1 under the baseline: AUC 3/4, V10 = (1, 1/2),
    # V01 = (1/2, 1); the candidate separates perfectly (AUC 1, zero variance).
    # var = var(V10b)/2 + var(V01b)/2 = 0.125/2 + 0.125/2 = 0.125; z = 0.25 / sqrt(0.125).
    got = stats.delong([1, 1, 0, 0], np.array([0.9, 0.4, 0.6, 0.1]), np.array([0.8, 0.7, 0.3, 0.2]))
    assert (got.baseline, got.candidate, got.delta) == (0.75, 1.0, 0.25)
    assert got.se == pytest.approx(math.sqrt(0.125), abs=1e-12)
    assert got.p_value == pytest.approx(math.erfc(0.25 / math.sqrt(0.125) / math.sqrt(2)), abs=1e-12)
    assert got.p_value == pytest.approx(0.4795001221869535, abs=1e-9)


def test_grouped_moments_equal_per_group_tests():
    rng = np.random.default_rng(5)
    n = 900
    code = rng.integers(0, 3, n)
    y = rng.random(n) < 0.4
    sb = np.round(rng.random(n) + 0.3 * y, 2)
    sc = np.round(rng.random(n) + 0.5 * y, 2)
    moments = stats.delong_moments(code, y, sb, sc, 3)
    for g in range(3):
        rows = code == g
        want = _delong_reference(y[rows], sb[rows], sc[rows])
        got = stats.delong_test(moments[g])
        assert got.delta == pytest.approx(want[2], abs=1e-9)
        assert got.se ** 2 == pytest.approx(want[3], abs=1e-9)
    auc, count = stats.grouped_auc(code, y, sb, 3)
    for g in range(3):
        assert auc[g] == pytest.approx(roc_auc_score(y[code == g], sb[code == g]), abs=1e-12)
        assert count[g] == (code == g).sum()


def test_grouped_average_precision_equals_sklearn():
    rng = np.random.default_rng(9)
    code = rng.integers(0, 4, 800)
    y = rng.random(800) < 0.25
    s = np.round(rng.random(800) + 0.3 * y, 2)  # ties
    got = stats.grouped_average_precision(code, y, s, 5)
    for g in range(4):
        assert got[g] == pytest.approx(average_precision_score(y[code == g], s[code == g]), abs=1e-12)
    assert math.isnan(got[4])  # empty group


def test_average_precision_equals_sklearn_on_distinct_bins():
    rng = np.random.default_rng(8)
    y = rng.random(300) < 0.2
    s = np.round(rng.random(300), 2)  # ties: a bin per distinct score
    values, inverse = np.unique(s, return_inverse=True)
    pos = np.bincount(inverse, weights=y, minlength=len(values))
    cnt = np.bincount(inverse, minlength=len(values))
    assert stats.average_precision(pos, cnt) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def _holm_reference(p):
    k, order = len(p), np.argsort(p)
    out, running = np.empty(k), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * p[i]))
        out[i] = running
    return out


def _bh_reference(p):
    k = len(p)
    out = np.empty(k)
    for i in range(k):  # min over all j with p_j >= p_i of k p_j / rank_j
        ranks = np.array([(p <= p[j]).sum() for j in range(k)])
        out[i] = min(1.0, min(k * p[j] / ranks[j] for j in range(k) if p[j] >= p[i]))
    return out


def test_adjusted_pvalues_equal_loops():
    rng = np.random.default_rng(2)
    p = np.concatenate([rng.random(30) ** 3, [0.01, 0.01, 1.0]])
    np.testing.assert_allclose(stats.adjust_pvalues(p, "holm"), _holm_reference(p), atol=1e-12)
    np.testing.assert_allclose(stats.adjust_pvalues(p, "bh"), _bh_reference(p), atol=1e-12)
    with_nan = stats.adjust_pvalues(np.array([0.01, np.nan, 0.02]), "holm")
    assert math.isnan(with_nan[1]) and with_nan[0] == pytest.approx(0.02)


def test_poisson_weights_deterministic_poisson_and_seeded():
    h = stats.user_hash(np.arange(20000))
    w = stats.poisson_weights(h, np.arange(8), seed=3)
    assert np.array_equal(w, stats.poisson_weights(h, np.arange(8), seed=3))
    assert np.array_equal(w[:, 5], stats.poisson_weights(h, np.array([5]), seed=3)[:, 0])
    assert not np.array_equal(w, stats.poisson_weights(h, np.arange(8), seed=4))
    freq = np.bincount(w.astype(int).ravel(), minlength=5)[:5] / w.size
    want = [math.exp(-1) / math.factorial(k) for k in range(5)]
    np.testing.assert_allclose(freq, want, atol=0.005)
    # weights of different replicates are uncorrelated
    assert abs(np.corrcoef(w[:, 0], w[:, 1])[0, 1]) < 0.03


def _clustered_data(rng, users, rows_per_user, user_sd):
    user = np.repeat(np.arange(users), rows_per_user)
    # each user's click propensity varies: rows of one user are correlated
    q = 1 / (1 + np.exp(-(-0.6 + user_sd * rng.normal(size=users))))
    y = rng.random(len(user)) < q[user]
    return user, y


def _logloss_delta_test(user, y, hashes, replicates=200, seed=0):
    pb, pc = 0.3, 0.4
    llb, llc = stats.logloss_terms(y, np.full(len(y), pb)), stats.logloss_terms(y, np.full(len(y), pc))
    values = np.column_stack([np.ones(len(y)), llb, llc])
    sums = stats.replicate_sums(user, values, hashes, replicates, seed)
    deltas = sums[:, 2] / sums[:, 0] - sums[:, 1] / sums[:, 0]
    return stats.bootstrap_test(llb.mean(), llc.mean(), deltas)


def test_cluster_bootstrap_coverage_near_nominal():
    rng = np.random.default_rng(11)
    users, rows_per_user, user_sd = 150, 8, 1.0
    # the true delta: E[y] (log .3 - log .4) + (1 - E[y]) (log .7 - log .6), E[y] by quadrature
    z = np.linspace(-8, 8, 20001)
    dens = np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    ey = np.trapezoid(dens / (1 + np.exp(-(-0.6 + user_sd * z))), z)
    true = ey * (math.log(0.3) - math.log(0.4)) + (1 - ey) * (math.log(0.7) - math.log(0.6))
    hashes = stats.user_hash(np.arange(users))
    covered = 0
    sets = 200
    for i in range(sets):
        user, y = _clustered_data(rng, users, rows_per_user, user_sd)
        t = _logloss_delta_test(user, y, hashes, replicates=100, seed=i)
        covered += t.ci_low <= true <= t.ci_high
    assert 0.90 <= covered / sets <= 0.99


def test_clustering_by_user_widens_the_interval():
    rng = np.random.default_rng(4)
    user, y = _clustered_data(rng, 100, 30, user_sd=2.0)
    clustered = _logloss_delta_test(user, y, stats.user_hash(np.arange(100)))
    rows = np.arange(len(y))
    iid = _logloss_delta_test(rows, y, stats.user_hash(rows))
    assert clustered.se > 2.0 * iid.se
    # and without within-user correlation the two agree
    user, y = _clustered_data(rng, 100, 30, user_sd=0.0)
    clustered = _logloss_delta_test(user, y, stats.user_hash(np.arange(100)))
    iid = _logloss_delta_test(rows, y, stats.user_hash(rows))
    assert clustered.se == pytest.approx(iid.se, rel=0.25)
