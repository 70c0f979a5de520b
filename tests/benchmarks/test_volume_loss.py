"""benchmarks/volume_loss.py: the true volume is split into kept and the three places it can be lost."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.volume_loss import decompose


def test_lost_volume_is_attributed_to_brain_mask_threshold_or_refinement() -> None:
    truth = np.zeros((4, 10, 10), bool)
    truth[1:3, 2:8, 2:8] = True                    # 72 voxels
    brain = np.ones_like(truth)
    brain[1:3, 2, 2:8] = False                     # 12 true voxels outside the brain
    prob = np.where(truth, 0.9, 0.0)
    prob[1:3, 7, 2:8] = 0.3                        # 12 true voxels the CNN does not call
    final = (prob >= 0.5) & brain
    final[1:3, 6, 2:8] = False                     # 12 called voxels the refinement drops
    final[0, 0, 0] = True                          # one false positive
    d = decompose(truth, prob, brain, final, threshold=0.5, voxel_ml=0.5)
    assert d["true_mask_ml"] == 36.0
    assert d["lost_outside_brain_ml"] == 6.0
    assert d["lost_below_threshold_ml"] == 6.0
    assert d["lost_by_refinement_ml"] == 6.0
    assert d["kept_ml"] == 18.0
    assert d["kept_ml"] + d["lost_outside_brain_ml"] + d["lost_below_threshold_ml"] + d["lost_by_refinement_ml"] \
        == pytest.approx(d["true_mask_ml"])
    assert d["false_positive_ml"] == 0.5 and d["predicted_ml"] == 18.5


def test_false_positives_on_ventricular_blood_are_counted_apart() -> None:
    truth = np.zeros((4, 10, 10), bool)
    truth[1:3, 2:5, 2:5] = True
    ivh = np.zeros_like(truth)
    ivh[1:3, 5:8, 2:5] = True                      # ventricular blood right beside the clot
    final = truth | ivh
    final[0, 0, 0] = True                          # and one false positive elsewhere
    d = decompose(truth, np.where(final, 0.9, 0.0), np.ones_like(truth), final, 0.5, 1.0, negative=ivh)
    assert d["false_positive_ml"] == 19.0 and d["false_positive_on_ivh_ml"] == 18.0
    assert decompose(truth, np.where(final, 0.9, 0.0), np.ones_like(truth), final, 0.5, 1.0)["false_positive_on_ivh_ml"] == 0.0


def test_cache_key_tells_two_models_of_the_same_name_apart(tmp_path) -> None:
    from benchmarks.volume_loss import model_key

    a, b = tmp_path / "a" / "3", tmp_path / "b" / "3"
    for d, weights in ((a, b"one"), (b, b"two")):
        d.mkdir(parents=True)
        (d / "weights.bin").write_bytes(weights)
        (d / "metadata.json").write_text("{}")
    assert model_key(a).startswith("3-") and model_key(a) != model_key(b)
    (b / "weights.bin").write_bytes(b"one")
    assert model_key(a) == model_key(b)
