"""Baseline volume law, growth between baseline and follow-up, and the expansion label rule."""

from __future__ import annotations

import numpy as np

from .options import SynthOptions


def is_expansion(baseline_ml: float, followup_ml: float, abs_ml: float = 6.0, rel: float = 0.33) -> bool:
    """The label rule: growth > ``abs_ml`` mL or > ``rel`` (fraction) of the baseline volume."""
    growth = followup_ml - baseline_ml
    return bool(growth > abs_ml or (baseline_ml > 0 and growth / baseline_ml > rel))


def baseline_volume(rng: np.random.Generator, opts: SynthOptions, cap_ml: float | None = None) -> float:
    """Log-normal (median, sigma) truncated to the option range (and a location cap) by rejection."""
    lo, hi = opts.volume_range_ml
    hi = min(hi, cap_ml) if cap_ml else hi
    for _ in range(10_000):
        v = float(np.exp(np.log(opts.volume_median_ml) + opts.volume_sigma * rng.standard_normal()))
        if lo <= v <= hi:
            return v
    return float(np.clip(opts.volume_median_ml, lo, hi))


def followup_target(u: float, v0: float, expansion: bool, opts: SynthOptions) -> float:
    """Target follow-up volume from one uniform draw ``u`` (so label draws stay in lockstep).

    Expanders: threshold max(6 mL, 33 %) plus a Gamma(1.6)-distributed excess (a safety margin
    keeps them clear of the threshold after shape fitting).  Non-expanders: a small change
    (normal, mean +2 %, sd 8 %); about a third shrink (clot retraction); always below 80 % of
    the threshold.
    """
    from scipy import stats

    u = float(np.clip(u, 1e-9, 1 - 1e-9))
    thr = max(opts.growth_abs_ml, opts.growth_rel * v0)
    if expansion:
        excess = float(stats.gamma.ppf(u, 1.6, scale=0.25 * thr + 1.5))
        return v0 + 1.08 * thr + excess
    cap = 0.8 * min(opts.growth_abs_ml, opts.growth_rel * v0)
    change = float(stats.norm.ppf(u, 0.02, 0.08)) * v0
    change = float(np.clip(change, -0.3 * v0, cap))
    return v0 + change
