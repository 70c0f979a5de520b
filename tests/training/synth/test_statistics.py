"""The cohort's statistics match what was asked for (issue 4), measured on in-memory cases."""

from __future__ import annotations

import numpy as np
import pytest

from training.synth import MARKERS, SynthOptions, generate_case, is_expansion, summarize
from training.synth.cohort import manifest_labels
from training.synth.markers import sample_markers
from training.synth.options import DEFAULT_MARKER_RATES, MARKER_PARENT, OptionsError

N = 300


@pytest.fixture(scope="module")
def cohort():
    opts = SynthOptions(matrix=64)
    cases = [generate_case(s, opts, case_id=f"c{s}", render=False) for s in range(N)]
    return cases, [manifest_labels(c) for c in cases]


def _ci(p: float, n: int, z: float = 3.5) -> float:
    return z * np.sqrt(p * (1 - p) / max(n, 1)) + 1e-9


def test_prevalence_matches_request(cohort):
    cases, rows = cohort
    prev = summarize(rows)["expansion_prevalence"]
    assert abs(prev - 0.25) < _ci(0.25, N), prev


def test_prevalence_option_is_honoured():
    opts = SynthOptions(matrix=64, prevalence=0.6)
    exp = [generate_case(s, opts, render=False).expansion for s in range(120)]
    assert abs(np.mean(exp) - 0.6) < _ci(0.6, 120)


def test_label_rule_holds_for_every_case(cohort):
    cases, _ = cohort
    for c in cases:
        growth = c.followup_volume_ml - c.baseline_volume_ml
        assert c.expansion == (growth > 6.0 or growth / c.baseline_volume_ml > 0.33)
        if c.expansion:   # expanders grow by at least max(6 mL, 33 %)
            assert growth > max(6.0, 0.33 * c.baseline_volume_ml)


def test_label_rule_boundaries():
    assert not is_expansion(10.0, 13.29)         # just under 33 %
    assert is_expansion(10.0, 13.4)
    assert not is_expansion(30.0, 35.99)         # just under 6 mL (and 20 %)
    assert is_expansion(30.0, 36.1)
    assert is_expansion(100.0, 106.5)            # 6.5 % but > 6 mL


def test_non_expanders_change_little_and_some_shrink(cohort):
    cases, _ = cohort
    g = np.array([c.growth_pct for c in cases if not c.expansion])
    assert np.median(np.abs(g)) < 12.0
    assert 0.15 < np.mean(g < 0) < 0.6


def test_baseline_volume_distribution(cohort):
    cases, _ = cohort
    v = np.array([c.baseline_volume_ml for c in cases])
    assert v.min() >= 0.95 and v.max() <= 121.0
    assert 9.5 < np.median(v) < 15.0                 # median ~ 12 mL
    assert 0.7 < np.std(np.log(v)) < 1.0             # sigma 0.9, slightly reduced by truncation


def test_locations_and_ivh(cohort):
    _, rows = cohort
    s = summarize(rows)
    assert 0.53 < s["locations"]["deep"] < 0.72
    assert set(s["locations"]) <= {"deep", "lobar", "cerebellar", "brainstem"}
    assert {"lobar", "cerebellar"} <= set(s["locations"])
    assert 0.1 < s["ivh_rate"] < 0.45


def test_interval_in_range(cohort):
    cases, _ = cohort
    iv = np.array([c.interval_h for c in cases])
    assert iv.min() >= 6.0 and iv.max() <= 72.0


def test_marker_rates_in_cohort(cohort):
    cases, rows = cohort
    s = summarize(rows)["marker_rates"]
    n_exp = sum(c.expansion for c in cases)
    for m in MARKERS:
        sens, fpr = DEFAULT_MARKER_RATES[m]
        assert abs(s[m]["given_expansion"] - sens) < _ci(sens, n_exp), (m, s[m])
        assert abs(s[m]["given_no_expansion"] - fpr) < _ci(fpr, N - n_exp), (m, s[m])


def test_marker_sampler_exact_marginals_and_nesting():
    rng = np.random.default_rng(7)
    n = 20000
    for expansion, col in ((True, 0), (False, 1)):
        draws = [sample_markers(rng, expansion, DEFAULT_MARKER_RATES) for _ in range(n)]
        for m in MARKERS:
            rate = np.mean([d[m] for d in draws])
            assert abs(rate - DEFAULT_MARKER_RATES[m][col]) < _ci(DEFAULT_MARKER_RATES[m][col], n, 4.0), m
        for child, parent in MARKER_PARENT.items():
            assert all(d[parent] for d in draws if d[child]), (child, parent)


def test_markers_are_informative_not_deterministic(cohort):
    cases, _ = cohort
    hypo = np.array([c.markers["hypodensity"] for c in cases])
    exp = np.array([c.expansion for c in cases])
    assert hypo[exp].mean() > hypo[~exp].mean() + 0.15
    assert (hypo & ~exp).any() and (~hypo & exp).any()


def test_options_validate():
    with pytest.raises(OptionsError, match="matrix"):
        SynthOptions(matrix=100_000)
    with pytest.raises(OptionsError, match="prevalence"):
        SynthOptions(prevalence=1.5)
    rates = dict(DEFAULT_MARKER_RATES, blend=(0.9, 0.1))
    with pytest.raises(OptionsError, match="blend"):
        SynthOptions(marker_rates=rates)
    opts = SynthOptions(matrix=128, thickness_mm=(5.0,))
    assert SynthOptions.from_dict(opts.to_dict()) == opts
