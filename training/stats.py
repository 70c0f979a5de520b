"""Statistics for judging a probabilistic classifier: DeLong, bootstrap CIs, calibration, decision curves
(and the bootstrap CI of a median, for the segmenter's per-case Dice).

Plain numpy/scipy so each number can be checked by hand; used by ``training.evaluate_classifier``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import stats as sps


# --- DeLong (fast version of Sun & Xu 2014) ---------------------------------------------------------

def _midrank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = len(x)
    ranks = np.empty(n)
    i = 0
    while i < n:
        j = i
        while j < n and xs[j] == xs[i]:
            j += 1
        ranks[i:j] = 0.5 * (i + j - 1) + 1
        i = j
    out = np.empty(n)
    out[order] = ranks
    return out


def _delong_components(y: np.ndarray, scores: np.ndarray):
    """AUCs and their covariance for ``scores`` (k, n) against binary ``y``."""
    y = np.asarray(y).astype(bool)
    pos, neg = scores[:, y], scores[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong needs both classes in y")
    k = scores.shape[0]
    tx = np.array([_midrank(pos[r]) for r in range(k)])
    ty = np.array([_midrank(neg[r]) for r in range(k)])
    tz = np.array([_midrank(np.concatenate([pos[r], neg[r]])) for r in range(k)])
    aucs = tz[:, :m].sum(axis=1) / m / n - (m + 1.0) / 2.0 / n
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

def bootstrap_ci(metric: Callable[[np.ndarray, np.ndarray], float], y, p, n_boot: int = 2000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile CI of ``metric(y, p)`` over stratified bootstrap resamples (classes resampled separately)."""
    y = np.asarray(y)
    p = np.asarray(p)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    vals = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        v = metric(y[idx], p[idx])
        if np.isfinite(v):
            vals.append(v)
    if not vals:
        return float("nan"), float("nan")
    lo, hi = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def median_ci95(values, resamples: int = 2000, seed: int = 0) -> list[float]:
    """Percentile-bootstrap 95 % interval of the median of one sample (e.g. per-case Dice): how far a
    bar verdict on a few cases can be trusted."""
    a = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    medians = np.median(a[rng.integers(0, a.size, size=(resamples, a.size))], axis=1)
    return [float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))]


# --- calibration ------------------------------------------------------------------------------------

def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _logistic_fit(x: np.ndarray | None, y: np.ndarray, offset: np.ndarray, iters: int = 50) -> np.ndarray:
    """Unpenalised logistic regression (Newton) of y on [1, x] with an offset."""
    X = np.ones((len(y), 1)) if x is None else np.column_stack([np.ones(len(y)), x])
    beta = np.zeros(X.shape[1])
    for _ in range(iters):
        eta = X @ beta + offset
        mu = 1 / (1 + np.exp(-eta))
        w = np.maximum(mu * (1 - mu), 1e-9)
        step = np.linalg.solve(X.T @ (X * w[:, None]) + 1e-9 * np.eye(X.shape[1]), X.T @ (y - mu))
        beta += step
        if np.max(np.abs(step)) < 1e-10:
            break
    return beta


def calibration(y, p) -> dict:
    """Brier score, calibration slope and calibration-in-the-large intercept (logistic recalibration)."""
    y = np.asarray(y, float)
    p = np.asarray(p, float)
    lp = _logit(p)
    slope = _logistic_fit(lp, y, np.zeros_like(lp))[1]
    intercept = _logistic_fit(None, y, lp)[0]  # slope fixed at 1: calibration-in-the-large
    return {"brier": float(np.mean((p - y) ** 2)), "slope": float(slope), "intercept": float(intercept),
            "mean_predicted": float(p.mean()), "observed_rate": float(y.mean())}


def reliability(y, p, n_bins: int = 10) -> dict:
    """Quantile-binned observed rate vs mean prediction (for the reliability plot)."""
    y = np.asarray(y, float)
    p = np.asarray(p, float)
    edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1)))
    if len(edges) < 2:
        return {"predicted": [float(p.mean())], "observed": [float(y.mean())], "count": [int(len(y))]}
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    pred, obs, cnt = [], [], []
    for b in range(len(edges) - 1):
        sel = idx == b
        if sel.any():
            pred.append(float(p[sel].mean()))
            obs.append(float(y[sel].mean()))
            cnt.append(int(sel.sum()))
    return {"predicted": pred, "observed": obs, "count": cnt}


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
