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


def test_a_ventricle_the_clot_wraps_around_is_not_filled(scene):
    """Issue 16: a clot beside a ventricle can enclose it in a slice while the ventricle goes on in the next
    slices. Its CSF is not hematoma; a hypodense pocket in the same place (denser than brain) is."""
    hu, brain, prob, clot, _ = scene
    tube = np.zeros(hu.shape, bool)
    tube[:, 46:54, 46:54] = True                      # a ventricle running through every slice
    prob = np.where(tube, 0.0, prob).astype(np.float32)  # the CNN leaves it out
    csf = np.where(tube, 8.0, hu).astype(np.float32)
    refined = refine_mask(csf, brain, prob, 0.5, SPACING)
    assert refined[tube & clot].mean() < 0.1  # only its rim, smoothed towards the clot
    pocket = np.where(tube, 42.0, hu).astype(np.float32)  # hypodense blood instead: above the brain's 30 HU
    assert refine_mask(pocket, brain, prob, 0.5, SPACING)[tube & clot].mean() > 0.9


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
    with pytest.raises(ValueError, match="slice_hole_fraction"):
        RefineParams(slice_hole_fraction=1.0)


def _pv_sphere(thickness: float, r_true: float = 12.0, r_cnn: float = 10.5, px: float = 0.5, z0: float = 0.0):
    """A clot of radius r_true rendered with exact partial volume (9 samples across each slab, 2×2 in
    plane) and noise, and a CNN-like mask 1.5 mm short of its edge (what a 1.5 mm grid gives back)."""
    n_xy, n_z = int(64 / px), int(np.ceil(60 / thickness))
    zc = (np.arange(n_z) - n_z / 2 + 0.5) * thickness + z0
    yc = (np.arange(n_xy) - n_xy / 2 + 0.5) * px
    frac = np.zeros((n_z, n_xy, n_xy), np.float32)
    for dz in (np.arange(9) + 0.5) / 9 - 0.5:
        for dy in (-0.25, 0.25):
            for dx in (-0.25, 0.25):
                frac += ((zc + dz * thickness)[:, None, None] ** 2 + (yc + dy * px)[None, :, None] ** 2
                         + (yc + dx * px)[None, None, :] ** 2) <= r_true ** 2
    frac /= 36
    hu = 32.0 + 33.0 * frac + np.random.default_rng(0).normal(0, 4.0, frac.shape).astype(np.float32)
    z, y, x = np.meshgrid(zc, yc, yc, indexing="ij")
    prob = np.where(z ** 2 + y ** 2 + x ** 2 <= r_cnn ** 2, 0.9, 0.05).astype(np.float32)
    return hu, prob, (thickness, px, px), 4 / 3 * np.pi * r_true ** 3 / 1000, px * px * thickness / 1000


# Issue 16: the edge follows the partial-volume midpoint, so the volume is the clot's true volume. At 5 mm
# the clot's top and bottom slabs need more in-plane growth than grow_mm allows when the CNN is 1.5 mm
# short, hence the wider (measured: -6 to -7 %) tolerance there.
@pytest.mark.parametrize("thickness, z0, tolerance", [(1.0, 0.0, 0.03), (2.5, 0.0, 0.03), (2.5, 1.3, 0.03),
                                                      (5.0, 0.0, 0.08), (5.0, 1.3, 0.08)])
def test_refined_volume_is_the_partial_volume_midpoint_volume(thickness, z0, tolerance):
    hu, prob, spacing, true_ml, voxel_ml = _pv_sphere(thickness, z0=z0)
    refined_ml = refine_mask(hu, np.ones(hu.shape, bool), prob, 0.5, spacing).sum() * voxel_ml
    raw_ml = (prob >= 0.5).sum() * voxel_ml
    assert refined_ml == pytest.approx(true_ml, rel=tolerance)
    assert abs(refined_ml - true_ml) < 0.3 * abs(raw_ml - true_ml)
