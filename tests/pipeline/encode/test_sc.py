"""Overlay Secondary Capture: valid, key slices, contour and text burned in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.encode.sc import CONTOUR_RGB, build_overlays, key_slices, summary_line
from pipeline.volume import load_series


def test_overlays_valid_with_contour_and_text(ct_data: Path, tmp_path: Path, new_dciodvfy_errors):
    s = load_series(ct_data / "ge-human-head-tilted")
    mask = np.zeros(s.source_shape, bool)
    mask[15, 250:300, 250:300] = True
    mask[16, 240:310, 240:310] = True
    mask[20, 250:255, 250:255] = True
    text = summary_line(12.3, "high", 0.62)
    assert "NOT FOR DIAGNOSTIC USE" in text and "12.3 mL" in text
    scs = build_overlays(s.datasets, mask, text, max_slices=2)
    assert len(scs) == 2
    assert len({sc.SeriesInstanceUID for sc in scs}) == 1
    refs = [sc.SourceImageSequence[0].ReferencedSOPInstanceUID for sc in scs]
    assert refs == [s.datasets[15].SOPInstanceUID, s.datasets[16].SOPInstanceUID]
    for i, sc in enumerate(scs):
        path = tmp_path / f"sc{i}.dcm"
        sc.save_as(path, enforce_file_format=True)
        assert new_dciodvfy_errors(path, Path(s.datasets[0].filename)) == set()
        px = sc.pixel_array
        assert px.shape == (512, 512, 3)
        assert (px == CONTOUR_RGB).all(axis=-1).sum() > 100        # contour burned in
        assert (px[:12, :, 0] > 200).any()                         # yellow text banner on top
        assert sc.BurnedInAnnotation == "YES"


def test_key_slices():
    mask = np.zeros((6, 4, 4), bool)
    mask[1, :2] = True
    mask[4] = True
    mask[5, 0, 0] = True
    assert key_slices(mask, 2) == [1, 4]
    assert key_slices(np.zeros((6, 4, 4), bool), 3) == [3]
    with pytest.raises(ValueError):
        key_slices(mask, 0)


def test_cannot_assess_line():
    assert "cannot assess" in summary_line(None, None, None, "missing_slices")
