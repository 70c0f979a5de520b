"""training.stats against references that share none of its code.

DeLong: the direct definition of DeLong, DeLong & Clarke-Pearson (1988), Biometrics 44:837-845: placement
values V10 (each positive's share of negatives it outscores, ties counting one half) and V01 (each
negative's share of positives that outscore it), written as plain O(m·n) loops; AUC = mean V10,
S10[r, s] = cov over positives of V10_r, V10_s (denominator m - 1), S01 likewise over negatives, and
S = S10 / m + S01 / n. Our code is the fast midrank version (Sun & Xu 2014); both must agree on data with
many ties. Plus one published number (fastDeLong's own test, see below).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import stats


def psi(x: float, y: float) -> float:
    return 1.0 if x > y else 0.5 if x == y else 0.0


def delong_by_definition(y, scores):
    """AUCs and their covariance matrix for the rows of ``scores``, straight from DeLong et al. (1988)."""
    y = [bool(v) for v in y]
    k = len(scores)
    pos = [[s[i] for i in range(len(y)) if y[i]] for s in scores]
    neg = [[s[i] for i in range(len(y)) if not y[i]] for s in scores]
    m, n = len(pos[0]), len(neg[0])
    v10 = [[sum(psi(x, yy) for yy in neg[r]) / n for x in pos[r]] for r in range(k)]
    v01 = [[sum(psi(x, yy) for x in pos[r]) / m for yy in neg[r]] for r in range(k)]
    auc = [sum(v10[r]) / m for r in range(k)]
    s = [[0.0] * k for _ in range(k)]
    for r in range(k):
        for t in range(k):
            s10 = sum((v10[r][i] - auc[r]) * (v10[t][i] - auc[t]) for i in range(m)) / (m - 1)
            s01 = sum((v01[r][j] - auc[r]) * (v01[t][j] - auc[t]) for j in range(n)) / (n - 1)
            s[r][t] = s10 / m + s01 / n
    return auc, s


def data_sets():
    """Random data sets with many ties (scores rounded to a few levels), of several sizes and prevalences."""
    rng = np.random.default_rng(17)
    for n, prevalence, levels in [(12, 0.5, 3), (40, 0.3, 5), (75, 0.2, 10), (150, 0.5, 20), (9, 0.34, 2)]:
        y = (rng.random(n) < prevalence).astype(int)
        y[:2] = [1, 0]  # both classes, at least two of each below
        y[2:4] = [1, 0]
        scores = [np.round((rng.random(n) + shift * y) * levels) / levels for shift in (0.8, 0.3, 0.0)]
        yield y, np.vstack(scores)


@pytest.mark.parametrize("y,scores", list(data_sets()))
def test_delong_covariance_and_test_match_the_definition(y, scores):
    auc, cov = delong_by_definition(y, scores.tolist())
    ours_auc, ours_cov = stats._delong_components(y, scores)
    assert ours_auc == pytest.approx(auc, abs=1e-12)
    assert ours_cov == pytest.approx(np.array(cov), abs=1e-14, rel=1e-10)

    a, lo, hi = stats.delong_auc_ci(y, scores[0])
    half = 1.959963984540054 * math.sqrt(cov[0][0])
    assert (a, lo, hi) == pytest.approx((auc[0], max(0.0, auc[0] - half), min(1.0, auc[0] + half)), abs=1e-12)

    for r, t in [(0, 1), (0, 2), (1, 2)]:
        var = cov[r][r] + cov[t][t] - 2 * cov[r][t]
        z = (auc[r] - auc[t]) / math.sqrt(var)
        got = stats.delong_test(y, scores[r], scores[t])
        assert got["z"] == pytest.approx(z, rel=1e-9)
        assert got["p"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9)  # two-sided normal p
        assert got["diff"] == pytest.approx(auc[r] - auc[t], abs=1e-12)


def test_delong_variance_matches_the_published_fastdelong_value():
    """yandexdataschool/roc_comparison (fastDeLong, Sun & Xu's algorithm), test.py at commit e9e3273:
    iris, target == 1 (versicolor), train_test_split(test_size=0.8, random_state=42),
    LogisticRegression(solver="lbfgs") -> delong_roc_variance = 0.0015359814789736538. DeLong depends on the
    ranking of the predictions only, so a different scikit-learn gives the same number while the ranking holds."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    data = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(data.data, (data.target == 1).astype(int), test_size=0.8,
                                                        random_state=42)
    p = LogisticRegression(solver="lbfgs").fit(x_train, y_train).predict_proba(x_test)[:, 1]
    auc, cov = stats._delong_components(y_test, p[None, :])
    assert auc[0] == pytest.approx(roc_auc_score(y_test, p))
    assert cov[0, 0] == pytest.approx(0.0015359814789736538, rel=1e-9)


def test_bootstrap_ci_resamples_each_class_on_its_own():
    rng = np.random.default_rng(3)
    y = (rng.random(120) < 0.25).astype(int)
    p = np.clip(0.25 + 0.4 * y + rng.normal(0, 0.2, 120), 0, 1)
    seen = []

    def positives_and_mean(yy, pp):
        seen.append(int(yy.sum()) == int(y.sum()) and len(yy) == len(y))
        return float(pp[yy == 1].mean())

    lo, hi = stats.bootstrap_ci(positives_and_mean, y, p, n_boot=500, seed=1)
    assert len(seen) >= 500 and all(seen)  # every resample keeps the class sizes
    assert lo < p[y == 1].mean() < hi
    assert (lo, hi) == stats.bootstrap_ci(positives_and_mean, y, p, n_boot=500, seed=1)  # seeded
    se = p[y == 1].std(ddof=1) / math.sqrt(y.sum())  # a percentile CI of a mean is about ±1.96 SE
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.25)


def test_bootstrap_ci_with_a_single_case_in_a_class_and_non_finite_values():
    from sklearn.metrics import roc_auc_score

    y, p = [1, 0, 0, 0], [0.9, 0.1, 0.95, 0.3]
    lo, hi = stats.bootstrap_ci(roc_auc_score, y, p, n_boot=300)
    assert 0 <= lo <= hi <= 1
    assert stats.bootstrap_ci(roc_auc_score, [1, 0], [0.9, 0.1]) == (1.0, 1.0)  # nothing to resample

    def undefined_sometimes(yy, pp):  # nan when every resampled positive is one of the two high ones
        return float("nan") if pp[yy == 1].min() > 0.5 else float(pp.mean())

    y, p = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0], [0.9, 0.2, 0.8, 0.3, 0.1, 0.0, 0.4, 0.1, 0.2, 0.3]
    lo, hi = stats.bootstrap_ci(undefined_sometimes, y, p, n_boot=400)
    assert 0 < lo < hi < 0.5  # the nan resamples (about 1 in 16) are left out


def test_median_ci95():
    assert stats.median_ci95([0.5]) == [0.5, 0.5]
    lo, hi = stats.median_ci95(np.linspace(0, 1, 101))
    assert lo < 0.5 < hi and hi - lo < 0.3


def test_calibration_solves_the_logistic_score_equations():
    from scipy.special import expit

    rng = np.random.default_rng(8)
    truth = rng.random(800)
    y = (rng.random(800) < expit(0.3 + 1.7 * np.log(truth / (1 - truth)))).astype(float)
    cal = stats.calibration(y, truth)
    lp = np.log(truth / (1 - truth))
    # the fit of y on [1, lp] zeroes both score coordinates: the intercept that zeroes the first for our
    # slope must zero the second too
    from scipy.optimize import brentq

    b0 = brentq(lambda b: np.sum(y - expit(b + cal["slope"] * lp)), -20, 20, xtol=1e-14)
    assert np.sum((y - expit(b0 + cal["slope"] * lp)) * lp) == pytest.approx(0, abs=1e-6)
    assert np.sum(y - expit(cal["intercept"] + lp)) == pytest.approx(0, abs=1e-8)  # slope fixed at 1
    assert cal["brier"] == pytest.approx(np.mean((truth - y) ** 2)) and cal["observed_rate"] == y.mean()
    one_class = stats.calibration([1, 1, 1], [0.2, 0.5, 0.9])
    assert math.isnan(one_class["slope"]) and math.isnan(one_class["intercept"]) and one_class["observed_rate"] == 1


def test_reliability_bins_on_quantiles_with_edges_in_the_upper_bin():
    r = stats.reliability([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], n_bins=2)
    assert r == {"predicted": pytest.approx([0.15, 0.35]), "observed": [0.0, 1.0], "count": [2, 2]}
    r = stats.reliability([0, 1, 1], [0.1, 0.2, 0.3], n_bins=2)  # 0.2 is the middle edge: upper bin
    assert r == {"predicted": pytest.approx([0.1, 0.25]), "observed": [0.0, 1.0], "count": [1, 2]}
    r = stats.reliability([0, 1, 1], [0.5, 0.5, 0.5])
    assert r == {"predicted": [0.5], "observed": [pytest.approx(2 / 3)], "count": [3]}
    rng = np.random.default_rng(2)
    p = rng.random(1000)
    r = stats.reliability((rng.random(1000) < p).astype(int), p)
    assert sum(r["count"]) == 1000 and len(r["count"]) == 10


def test_ece_weights_each_bins_gap_by_its_cases():
    assert stats.ece([0, 0, 1, 1], [0.05, 0.15, 0.85, 0.95]) == pytest.approx(0.1)   # (.05+.15+.15+.05)/4
    assert stats.ece([0, 1, 0, 1], [0.5, 0.5, 0.55, 0.55]) == pytest.approx(0.025)   # one bin: |0.5-0.525|
    assert stats.ece([1, 0], [1.0, 0.0]) == 0.0                                       # p = 1 is in the last bin
