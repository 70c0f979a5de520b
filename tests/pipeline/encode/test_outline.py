"""Key slice and outline: the largest slice, the largest region's boundary on the pixel edges."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.path import Path as Polygon
from scipy import ndimage

from pipeline.encode.outline import key_outline, key_slices


def test_key_slices():
    mask = np.zeros((6, 4, 4), bool)
    mask[1, :2] = True
    mask[4] = True
    mask[5, 0, 0] = True
    assert key_slices(mask, 2) == [1, 4]
    assert key_slices(mask, 1) == [4]
    assert key_slices(np.zeros((6, 4, 4), bool), 3) == [3]
    with pytest.raises(ValueError):
        key_slices(mask, 0)


def test_outline_encloses_exactly_the_largest_region_of_the_key_slice():
    rng = np.random.default_rng(3)
    mask = np.zeros((4, 64, 64), bool)
    yy, xx = np.mgrid[:64, :64]
    blob = (yy - 30) ** 2 / 14**2 + (xx - 25) ** 2 / 9**2 < 1
    blob &= rng.random((64, 64)) > 0.02                     # ragged, with pinholes
    mask[2] = blob
    mask[2, 55:58, 55:58] = True                            # a second, smaller region
    mask[1, 20:30, 20:30] = True                            # a smaller slice
    outline = key_outline(mask, (0.8, 0.5))
    assert outline.slice_index == 2
    pts = outline.points
    assert np.array_equal(pts[0], pts[-1]) and len(pts) > 8
    assert (pts == np.round(pts * 2) / 2).all()             # on pixel edges / corners (half-pixel grid)
    polygon = Polygon(pts)
    centres = np.column_stack([xx.ravel() + 0.5, yy.ravel() + 0.5])     # SCOORD: pixel centre = index + 0.5
    inside = polygon.contains_points(centres).reshape(64, 64)
    assert ndimage.label(blob)[1] == 1
    assert np.array_equal(inside, ndimage.binary_fill_holes(blob))      # every pixel of the region, no other
    assert not inside[55:58, 55:58].any()
    assert outline.area_cm2 == pytest.approx(blob.sum() * 0.8 * 0.5 / 100)


def test_no_outline_without_hematoma():
    assert key_outline(np.zeros((3, 8, 8), bool), (1.0, 1.0)) is None
