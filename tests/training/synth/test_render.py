"""Rendered cases: determinism, HU ranges, noise, mask/volume consistency, real heads."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from training.synth import SynthOptions, generate_case
from training.synth.anatomy import BONE, CSF, GM, VENT, WM, PhantomHead, Tissue

SMALL = SynthOptions(matrix=128, thickness_mm=(5.0,), tilt_fraction=0.0)


@pytest.fixture(scope="module")
def small_cases():
    return [generate_case(s, SMALL, case_id=f"c{s}") for s in range(4)]


def test_same_seed_same_case_different_seed_different_case():
    a = generate_case(11, SMALL)
    b = generate_case(11, SMALL)
    c = generate_case(12, SMALL)
    assert np.array_equal(a.baseline.hu, b.baseline.hu)
    assert np.array_equal(a.followup.mask, b.followup.mask)
    assert a.markers == b.markers and a.baseline_volume_ml == b.baseline_volume_ml
    assert a.baseline.hu.shape != c.baseline.hu.shape or not np.array_equal(a.baseline.hu, c.baseline.hu)


def test_labels_do_not_depend_on_rendering():
    for s in range(3):
        r = generate_case(s, SMALL)
        q = generate_case(s, SMALL, render=False)
        assert (r.location, r.ivh, r.expansion, r.markers) == (q.location, q.ivh, q.expansion, q.markers)
        assert q.baseline_volume_ml == pytest.approx(r.baseline_volume_ml, rel=0.03)


def test_tissue_hu_ranges_as_requested():
    rng = np.random.default_rng(0)
    for _ in range(300):
        t = Tissue.draw(rng)
        assert 37 <= t.gm <= 45 and 20 <= t.wm <= 30 and 0 <= t.csf <= 15
        assert 700 <= t.diploe <= 3000 and 1400 <= t.cortical <= 2200 and -100 <= t.fat <= -50


def test_phantom_render_tissue_codes_carry_their_hu():
    head = PhantomHead.draw(np.random.default_rng(3))
    y, x = np.mgrid[-100:100:1.0, -90:90:1.0].astype(np.float32)
    for zz in (-30.0, 5.0, 20.0, 40.0):
        z = np.full_like(x, zz)
        hu, code = head.render(x.ravel(), y.ravel(), z.ravel())
        t = head.tissue
        pure_wm = code == WM
        assert np.median(hu[pure_wm]) == pytest.approx(t.wm, abs=6)
        if (code == VENT).any():
            assert np.median(hu[code == VENT]) == pytest.approx(t.csf, abs=1)
        if (code == BONE).any():
            assert np.percentile(hu[code == BONE], 90) > 700
        assert (code == GM).any() and (code == CSF).any()


def test_hematoma_and_noise_in_rendered_series(small_cases):
    for c in small_cases:
        s = c.baseline
        core = ndimage.binary_erosion(s.mask == 1, iterations=1)
        if core.sum() < 5:
            continue
        # untilted: mask grid == series grid
        assert s.mask.shape == s.hu.shape
        lesion = s.hu[core]
        assert 40 <= np.median(lesion) <= 90, np.median(lesion)
        # noise: air in the image corners holds only noise
        air = s.hu[:, :8, :8]
        assert np.std(air) == pytest.approx(c.extra["noise_hu"][0], rel=0.25)
        assert 3.0 * 0.75 <= np.std(air) <= 6.0 * 1.25


def test_mask_volume_matches_reported_volume(small_cases):
    for c in small_cases:
        for s, v in ((c.baseline, c.baseline_volume_ml), (c.followup, c.followup_volume_ml)):
            mask_ml = (s.mask == 1).sum() * np.prod(s.mask_grid.spacing) / 1000.0
            # 128 matrix: ~1.8 mm pixels, 5 mm slices -> discretisation error of a few %
            assert mask_ml == pytest.approx(v, rel=0.12, abs=0.5), (c.case_id, mask_ml, v)


def test_full_resolution_mask_volume_is_tight():
    c = generate_case(5, SynthOptions(matrix=512, thickness_mm=(2.5,), tilt_fraction=0.0))
    s = c.baseline
    mask_ml = (s.mask == 1).sum() * np.prod(s.mask_grid.spacing) / 1000.0
    assert mask_ml == pytest.approx(c.baseline_volume_ml, rel=0.04, abs=0.1)
    assert s.hu.shape[1:] == (512, 512) and 0.4 <= s.acq.pixel_mm <= 0.5


def test_tilted_series_geometry():
    opts = SynthOptions(matrix=128, thickness_mm=(2.5,), tilt_fraction=1.0)
    c = generate_case(2, opts)
    a = c.baseline.acq
    assert 10 <= a.tilt_deg <= 25
    assert np.allclose(a.col_dir, [0, np.cos(np.deg2rad(a.tilt_deg)), -np.sin(np.deg2rad(a.tilt_deg))])
    assert a.z_step == pytest.approx(2.5 / np.cos(np.deg2rad(a.tilt_deg)))
    img = c.baseline.mask_image()
    assert img.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert (c.baseline.mask == 1).sum() > 0


def test_real_head_source(ct_data, monkeypatch):
    monkeypatch.setenv("ICH_SYNTH_REAL_HEAD", str(ct_data / "ge-human-head-tilted"))
    opts = SynthOptions(matrix=128, thickness_mm=(5.0,), tilt_fraction=0.0, head_source="real")
    c = generate_case(1, opts)
    assert c.head_source == "real"
    s = c.baseline
    brain = (s.hu > 15) & (s.hu < 50)
    assert brain.sum() > 5000                                 # real parenchyma is there
    core = ndimage.binary_erosion(s.mask == 1)
    if core.sum() >= 5:
        assert 40 <= np.median(s.hu[core]) <= 90
    mask_ml = (s.mask == 1).sum() * np.prod(s.mask_grid.spacing) / 1000.0
    assert mask_ml == pytest.approx(c.baseline_volume_ml, rel=0.15, abs=0.5)
    # one real head yields different anatomies
    d = generate_case(2, opts)
    assert s.hu.shape != d.baseline.hu.shape or not np.allclose(s.hu, d.baseline.hu)


def test_mask_on_hu_grid_for_tilted_series():
    c = generate_case(2, SynthOptions(matrix=128, thickness_mm=(2.5,), tilt_fraction=1.0))
    s = c.baseline
    m = s.mask_on_hu_grid()
    assert m.shape == s.hu.shape
    core = ndimage.binary_erosion(m == 1)
    assert core.sum() > 5 and 40 <= np.median(s.hu[core]) <= 90
    vox_ml = s.acq.pixel_mm ** 2 * s.acq.thickness_mm / 1000
    assert (m == 1).sum() * vox_ml == pytest.approx(c.baseline_volume_ml, rel=0.2, abs=0.5)
