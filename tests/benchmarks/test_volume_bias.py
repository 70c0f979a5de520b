"""benchmarks/volume_bias.py's breakdown of the volume error by what the generator drew for each case
(issue 16, part 1: which kind of case carries the error)."""

from __future__ import annotations

from benchmarks.volume_bias import breakdown
from training.evaluate_segmenter import CaseResult


def _case(case_id: str, true_ml: float, pred_ml: float) -> CaseResult:
    return CaseResult(case_id, true_ml, {"cnn": 0.9}, {"cnn": pred_ml}, {}, 5.0)


def test_breakdown_groups_signed_and_absolute_errors_by_each_trait_value():
    results = [_case("5mm/a", 10.0, 16.0), _case("5mm/b", 10.0, 9.0), _case("5mm/c", 20.0, 18.0)]
    traits = {"5mm/a": {"ivh": "1", "matrix": "512"}, "5mm/b": {"ivh": "0", "matrix": "512"},
              "5mm/c": {"ivh": "0", "matrix": ""}}  # an empty value (column absent in old manifests) is no group
    got = breakdown(results, traits)
    assert got == {"ivh=0": {"n": 2, "mean_abs_ml": 1.5, "mean_signed_ml": -1.5},
                   "ivh=1": {"n": 1, "mean_abs_ml": 6.0, "mean_signed_ml": 6.0},
                   "matrix=512": {"n": 2, "mean_abs_ml": 3.5, "mean_signed_ml": 2.5}}
