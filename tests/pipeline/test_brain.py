"""Brain extraction on a real head, a phantom (empty skull) and degenerate input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.brain import extract_brain
from pipeline.volume import Volume, load_series


def test_real_head_brain_is_plausible(ct_data: Path):
    s = load_series(ct_data / "ge-human-head-tilted")
    brain = extract_brain(s.volume)
    ml = brain.sum() * s.volume.voxel_volume_ml
    assert 900 < ml < 1700                                  # adult brain within the scanned range
    hu = s.volume.hu[brain]
    assert np.percentile(hu, 99) < 100                      # no bone inside
    assert np.median(hu) == pytest.approx(30, abs=10)       # brain parenchyma density
    assert not brain[:3].any()                              # below the skull base: neck, no brain


def test_phantom_without_brain_gives_the_cranial_cavity(ct_data: Path):
    s = load_series(ct_data / "philips-phantom-5mm")
    brain = extract_brain(s.volume)
    ml = brain.sum() * s.volume.voxel_volume_ml
    assert 500 < ml < 2000
    assert (s.volume.hu[brain] <= 200).all()
    # the same phantom in 1 mm slices (inserts there cut the cavity in two) gives the same cavity
    thin = load_series(ct_data / "philips-phantom-thin")
    thin_ml = extract_brain(thin.volume).sum() * thin.volume.voxel_volume_ml
    assert thin_ml == pytest.approx(ml, rel=0.1)


def test_no_head_gives_empty_mask():
    air = Volume(np.full((5, 64, 64), -1000, np.float32), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    assert not extract_brain(air).any()
