"""Statistics for judging a probabilistic classifier: DeLong, bootstrap CIs, calibration, decision curves
(and the bootstrap CI of a median, for the segmenter's per-case Dice).

DeLong is ours (checked against an independent O(m·n) implementation and a published value in
tests/training/test_stats.py); ranks, bootstrap resampling, logistic fits and binning come from
scipy/scikit-learn/numpy. Used by ``training.evaluate_classifier`` and ``training.trainers``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import stats as sps


# --- DeLong (fast version of Sun & Xu 2014) ---------------------------------------------------------

def _delong_components(y: np.ndarray, scores: np.ndarray):
    """AUCs and their covariance for ``scores`` (k, n) against binary ``y``."""
    y = np.asarray(y).astype(bool)
    pos, neg = scores[:, y], scores[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong needs both classes in y")
    tx = sps.rankdata(pos, axis=1)  # midranks (ties share their average rank)
    ty = sps.rankdata(neg, axis=1)
    tz = sps.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = tz[:, :m].sum(axis=1) / m / n - (m + 1.0) / 2.0 / n
    if m < 2 or n < 2:  # a variance needs two cases of each class: unknown (not numpy's warnings)
        return aucs, np.full((scores.shape[0],) * 2, np.nan)
    v01 = (tz[:, :m] - tx) / n
    v10 = 1.0 - (tz[:, m:] - ty) / m
    sx = np.atleast_2d(np.cov(v01))
    sy = np.atleast_2d(np.cov(v10))
    return aucs, sx / m + sy / n


def delong_auc_ci(y, p, alpha: float = 0.05) -> tuple[float, float, float]:
    """AUC and its DeLong (1 - alpha) confidence interval."""
    aucs, cov = _delong_components(np.asarray(y), np.asarray(p, float)[None, :])
    se = float(np.sqrt(max(cov[0, 0], 0.0)))
    z = sps.norm.ppf(1 - alpha / 2)
    return float(aucs[0]), float(max(0.0, aucs[0] - z * se)), float(min(1.0, aucs[0] + z * se))


def delong_test(y, p1, p2) -> dict:
    """Two-sided DeLong test of AUC(p1) == AUC(p2) on the same cases."""
    aucs, cov = _delong_components(np.asarray(y), np.vstack([np.asarray(p1, float), np.asarray(p2, float)]))
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = float(aucs[0] - aucs[1])
    if var <= 1e-15:
        return {"auc1": float(aucs[0]), "auc2": float(aucs[1]), "diff": diff, "z": 0.0, "p": 1.0}
    z = diff / np.sqrt(var)
    return {"auc1": float(aucs[0]), "auc2": float(aucs[1]), "diff": diff, "z": float(z),
            "p": float(2 * sps.norm.sf(abs(z)))}


# --- bootstrap --------------------------------------------------------------------------------------

def _percentile_bootstrap(statistic, samples: list[np.ndarray], n_boot: int, seed: int, alpha: float,
                          vectorized: bool) -> tuple[float, float]:
    """``scipy.stats.bootstrap`` percentile interval; each sample is resampled on its own. Resamples whose
    statistic is not finite are left out (as before scipy did the resampling)."""
    res = sps.bootstrap(samples, statistic, n_resamples=n_boot, confidence_level=1 - alpha, method="percentile",
                        vectorized=vectorized, random_state=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    if not (np.isfinite(lo) and np.isfinite(hi)):
        dist = res.bootstrap_distribution[np.isfinite(res.bootstrap_distribution)]
        if not dist.size:
            return float("nan"), float("nan")
        lo, hi = np.percentile(dist, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_ci(metric: Callable[[np.ndarray, np.ndarray], float], y, p, n_boot: int = 2000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile CI of ``metric(y, p)`` over stratified bootstrap resamples (classes resampled separately:
    the positives' and the negatives' case indices are two samples to ``scipy.stats.bootstrap``)."""
    y = np.asarray(y)
    p = np.asarray(p)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    # a class of one case (or none) resamples to itself: it stays fixed (scipy wants two or more)
    moving = [len(c) >= 2 for c in (pos, neg)]

    def statistic(*resampled):
        it = iter(resampled)
        idx = np.concatenate([np.asarray(next(it), int) if m else c for c, m in zip((pos, neg), moving)])
        return metric(y[idx], p[idx])

    if not any(moving):
        v = float(statistic())
        return (v, v) if np.isfinite(v) else (float("nan"), float("nan"))
    samples = [c for c, m in zip((pos, neg), moving) if m]
    return _percentile_bootstrap(statistic, samples, n_boot, seed, alpha, vectorized=False)


def median_ci95(values, resamples: int = 2000, seed: int = 0) -> list[float]:
    """Percentile-bootstrap 95 % interval of the median of one sample (e.g. per-case Dice): how far a
    bar verdict on a few cases can be trusted."""
    a = np.asarray(values, float)
    if a.size < 2:  # nothing to resample
        v = float(np.median(a)) if a.size else float("nan")
        return [v, v]
    return list(_percentile_bootstrap(np.median, [a], resamples, seed, 0.05, vectorized=True))


# --- calibration ------------------------------------------------------------------------------------

def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def calibration(y, p) -> dict:
    """Brier score, calibration slope and calibration-in-the-large intercept (logistic recalibration):
    the slope of an unpenalised logistic regression of y on logit(p) (scikit-learn), and the intercept with
    the slope fixed at 1, i.e. logit(p) as an offset, which scikit-learn cannot take: the root of its score
    equation sum(y - expit(a + logit p)) = 0 (scipy's brentq). Not estimable (nan) unless both classes occur."""
    from scipy.optimize import brentq
    from scipy.special import expit
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y, float)
    p = np.asarray(p, float)
    out = {"brier": float(np.mean((p - y) ** 2)), "slope": float("nan"), "intercept": float("nan"),
           "mean_predicted": float(p.mean()), "observed_rate": float(y.mean())}
    if not 0 < y.sum() < len(y):
        return out
    lp = _logit(p)
    fit = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12, max_iter=200).fit(lp[:, None], y)
    out["slope"] = float(fit.coef_[0, 0])
    out["intercept"] = float(brentq(lambda a: np.sum(y - expit(a + lp)), -50.0, 50.0, xtol=1e-13))
    return out


def ece(y, p, n_bins: int = 10) -> float:
    """Expected calibration error: |observed rate - mean prediction| per equal-width bin of p on [0, 1]
    (the last bin closed), weighted by the bin's share of cases (Naeini et al. 2015)."""
    y = np.asarray(y, float)
    p = np.asarray(p, float)
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    gap = np.abs(np.bincount(bins, weights=y, minlength=n_bins) - np.bincount(bins, weights=p, minlength=n_bins))
    return float(gap.sum() / len(y))


def reliability(y, p, n_bins: int = 10) -> dict:
    """Quantile-binned observed rate vs mean prediction (for the reliability plot). Bins are numpy's
    histogram bins on the quantile edges ([lo, hi), the last one closed); empty bins are left out.
    (scikit-learn's calibration_curve puts a prediction on an edge into the lower bin and gives no counts.)"""
    y = np.asarray(y, float)
    p = np.asarray(p, float)
    edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1)))
    if len(edges) < 2:
        return {"predicted": [float(p.mean())], "observed": [float(y.mean())], "count": [int(len(y))]}
    count = np.histogram(p, edges)[0]
    kept = count > 0
    pred = np.histogram(p, edges, weights=p)[0][kept] / count[kept]
    obs = np.histogram(p, edges, weights=y)[0][kept] / count[kept]
    return {"predicted": pred.tolist(), "observed": obs.tolist(), "count": count[kept].tolist()}


# --- decision curve ---------------------------------------------------------------------------------

def decision_curve(y, p, thresholds=None) -> dict:
    """Net benefit (Vickers & Elkin 2006) of the model, treat-all and treat-none over thresholds."""
    y = np.asarray(y, int)
    p = np.asarray(p, float)
    thresholds = np.asarray(thresholds if thresholds is not None else np.round(np.arange(0.01, 0.81, 0.01), 2))
    n = len(y)
    prev = y.mean()
    model, treat_all = [], []
    for t in thresholds:
        pred = p >= t
        tp = np.sum(pred & (y == 1))
        fp = np.sum(pred & (y == 0))
        w = t / (1 - t)
        model.append(float(tp / n - fp / n * w))
        treat_all.append(float(prev - (1 - prev) * w))
    return {"thresholds": thresholds.tolist(), "model": model, "treat_all": treat_all,
            "treat_none": [0.0] * len(thresholds)}
