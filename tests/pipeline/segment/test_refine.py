"""Edge refinement: the edge moves to where the CT puts it, and nothing the CNN did not find is added."""

import numpy as np
import pytest
from scipy import ndimage

from pipeline.segment.refine import RefineParams, refine_mask

SPACING = (1.0, 0.5, 0.5)  # z, y, x in mm


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture()
def scene():
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:40, :120, :120]
    r = np.sqrt(((z - 20) * 1.0) ** 2 + ((y - 50) * 0.5) ** 2 + ((x - 50) * 0.5) ** 2)
    clot = r <= 9.0
    other = np.sqrt(((z - 20) * 1.0) ** 2 + ((y - 100) * 0.5) ** 2 + ((x - 100) * 0.5) ** 2) <= 4.0
    hu = np.where(clot | other, 65.0, 30.0).astype(np.float32)
    hu = ndimage.gaussian_filter(hu, sigma=(0.6, 1.2, 1.2)) + rng.normal(0, 3, hu.shape)
    brain = np.ones(hu.shape, bool)
    # a CNN-like probability: right place, blocky and too small (what a coarse grid gives back)
    prob = np.zeros(hu.shape, np.float32)
    prob[14:27, 36:64, 36:64] = 0.9
    return hu, brain, prob, clot, other


def test_edge_moves_to_the_half_maximum_of_the_clot(scene):
    hu, brain, prob, clot, _ = scene
    coarse = prob >= 0.5
    refined = refine_mask(hu, brain, prob, 0.5, SPACING)
    assert _dice(refined, clot) > 0.9 > _dice(coarse, clot) + 0.05


def test_adds_nothing_the_cnn_did_not_find(scene):
    hu, brain, prob, _, other = scene
    refined = refine_mask(hu, brain, prob, 0.5, SPACING)
    assert not (refined & other).any()
    assert not refine_mask(hu, brain, np.zeros_like(prob), 0.5, SPACING).any()


def test_enclosed_hypodensity_stays_part_of_the_clot(scene):
    hu, brain, prob, clot, _ = scene
    hu = hu.copy()
    hole = np.zeros(hu.shape, bool)
    hole[18:23, 46:55, 46:55] = True
    hu[hole] = 32.0  # a black hole: brain-like density inside the clot
    prob = np.where(prob > 0, 0.6, 0.0).astype(np.float32)  # the CNN is unsure here …
    prob[19:22, 38:44, 38:44] = 0.9                          # … and confident only away from the hole
    refined = refine_mask(hu, brain, prob, 0.5, SPACING)
    assert refined[hole].mean() > 0.95


def test_stays_inside_the_brain(scene):
    hu, brain, prob, _, _ = scene
    brain = brain.copy()
    brain[:, :, 55:] = False
    assert not refine_mask(hu, brain, prob, 0.5, SPACING)[:, :, 55:].any()


def test_params_are_validated():
    with pytest.raises(ValueError, match="edge_fraction"):
        RefineParams(edge_fraction=1.5)
    with pytest.raises(ValueError, match="shell_mm"):
        RefineParams(shell_mm=(4.0, 1.0))
