"""Issue 16's volume numbers in the segmenter evaluation: signed bias, |dV|, missed clots, per thickness."""

import numpy as np
import pytest

from training.evaluate_segmenter import CaseResult, agreement_by_thickness, plot_bland_altman_by_thickness, volume_agreement


def _case(i, true, pred, dice, t):
    return CaseResult(f"c{i}", true, {"cnn": dice}, {"cnn": pred}, {}, t)


def test_volume_agreement_numbers_and_bars():
    a = volume_agreement([10.0, 20.0, 4.0, 3.0], [9.0, 20.4, 4.0, 0.0], [0.9, 0.95, 0.9, 0.0])
    assert a["n"] == 4 and a["under_estimated"] == 2
    assert a["median_signed_pct"] == pytest.approx(np.median([-10.0, 2.0, 0.0, -100.0]))
    assert a["mean_abs_ml"] == pytest.approx((1.0 + 0.4 + 0.0 + 3.0) / 4)
    assert a["missed_ge_2ml"] == 1 and a["bars"] == {"median_bias_within_3pct": False, "mean_abs_le_1ml": False,
                                                     "none_missed": False}


def test_agreement_and_bland_altman_per_slice_thickness(tmp_path):
    results = [_case(i, 10.0 + i, 10.0 + i - 0.1, 0.9, t) for i, t in enumerate([5.0, 5.0, 5.0, 2.5, 2.5, 1.0])]
    by = agreement_by_thickness(results)
    assert set(by) == {"all", "1mm", "2.5mm", "5mm"}
    assert by["5mm"]["n"] == 3 and by["all"]["n"] == 6 and by["all"]["missed_ge_2ml"] == 0
    assert by["all"]["bars"]["median_bias_within_3pct"] and by["all"]["bars"]["mean_abs_le_1ml"]
    png = plot_bland_altman_by_thickness(results, tmp_path / "ba.png", "test")
    assert png.stat().st_size > 1000
