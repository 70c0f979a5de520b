"""Rendered markers meet their consensus definitions (Morotti et al. 2019), measured on the clot."""

from __future__ import annotations

import numpy as np
import pytest

from training.synth.anatomy import PhantomHead
from training.synth.lesion import add_small_foci, draw_hematoma, fine_points, fit_volume
from training.synth.markers import build_density
from training.synth.options import MARKERS


def _clot(seed: int, markers: dict, volume: float = 20.0, buds: int = 0):
    rng = np.random.default_rng(seed)
    head = PhantomHead.draw(rng)
    centre, comp = head.site("deep", rng, 17.0)
    hem = draw_hematoma(rng, centre, comp, "deep", markers.get("irregular", False), buds)
    fit_volume(hem, head, volume)
    dens = build_density(rng, {m: markers.get(m, False) for m in MARKERS}, 65.0,
                         float(hem.blobs[0].axes.min() / hem.radius0))
    x, y, z, _ = fine_points(*hem.bbox(1.0), 300_000)
    inside = hem.occupancy(head, x, y, z)
    x, y, z = x[inside], y[inside], z[inside]
    hu = dens.hu(x, y, z, hem.centre, hem.scale * hem.radius0) - dens.texture_hu * dens.texture(
        x - hem.centre[0], y - hem.centre[1], z - hem.centre[2])
    return head, hem, dens, (x, y, z), hu


@pytest.mark.parametrize("seed", range(4))
def test_blend_sign_reaches_margin_with_at_least_18_hu(seed):
    _, hem, _, (x, y, z), hu = _clot(seed, {"blend": True, "hypodensity": True})
    hypo = hu < 65.0 - 18.0
    assert 0.03 < hypo.mean() < 0.75
    sd = hem.signed_distance(x[hypo], y[hypo], z[hypo])
    assert sd.max() > -1.0                      # the hypodense part touches the clot margin


@pytest.mark.parametrize("seed", range(8))
def test_black_hole_is_enclosed_and_at_least_28_hu_darker(seed):
    _, hem, _, (x, y, z), hu = _clot(seed, {"black_hole": True, "hypodensity": True})
    hole = hu < 65.0 - 28.0
    assert hole.mean() > 0.01                   # a visible pocket, not a speck
    sd = hem.signed_distance(x[hole], y[hole], z[hole])
    assert sd.max() < -0.5                      # enclosed: never reaches the margin


def test_plain_clot_is_homogeneous():
    _, _, _, _, hu = _clot(1, {})
    assert np.all(hu > 65.0 - 1.0)


@pytest.mark.parametrize("seed", range(3))
def test_satellite_is_small_separate_and_near(seed):
    rng = np.random.default_rng(100 + seed)
    head = PhantomHead.draw(rng)
    centre, comp = head.site("lobar", rng, 14.0)
    hem = draw_hematoma(rng, centre, comp, "lobar", False, 0)
    fit_volume(hem, head, 12.0)
    n = add_small_foci(rng, hem, head, 2, (2.0, 4.5), (3.0, 9.0))
    assert n >= 1
    main = type(hem)(hem.centre, hem.compartment, hem.blobs, [], hem.scale, hem.radius0)
    for b in hem.extras:
        assert 2 * b.axes.max() <= 10.0                       # focus <= 10 mm
        gap = float(main.signed_distance(*(np.array([v], np.float32) for v in b.centre))[0]) - b.axes.max()
        assert 0.5 < gap < 20.0                                # separate, within 20 mm of the clot


def test_island_buds_make_at_least_four_protrusions():
    rng = np.random.default_rng(3)
    head = PhantomHead.draw(rng)
    centre, comp = head.site("deep", rng, 14.0)
    hem = draw_hematoma(rng, centre, comp, "deep", True, 5)
    assert sum(1 for b in hem.blobs[1:] if np.allclose(b.axes, b.axes[0])) >= 4
