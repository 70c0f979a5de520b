"""benchmarks/table2_backbones.py: per-module AUC comparison of two Table 2 runs on the same cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.table2_backbones import compare


def _table(rng, y, noise):
    return pd.DataFrame({"case_id": [f"c{i}" for i in range(len(y))], "label": y,
                         "Radiomics": y * 0.5 + rng.normal(0, 0.3, len(y)),
                         "ResNet50": y * 0.5 + rng.normal(0, noise, len(y))})


def test_compare_reports_difference_and_refuses_other_cases():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 60)
    a, b = _table(rng, y, 3.0), _table(rng, y, 0.2)
    b["Radiomics"] = a["Radiomics"]
    res = compare(a, b)
    assert res["Radiomics"]["same_predictions"] and res["Radiomics"]["diff"] == 0
    r = res["ResNet50"]
    assert r["auc_pretrained"] > 0.9 > 0.7 > r["auc_warmup"] and r["delong_p"] < 0.001
    assert r["diff"] == pytest.approx(r["auc_pretrained"] - r["auc_warmup"], abs=1e-3)
    with pytest.raises(ValueError, match="different cases"):
        compare(a, b.iloc[::-1].reset_index(drop=True))
