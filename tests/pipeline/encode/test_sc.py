"""Overlay Secondary Capture: valid, key slices, contour and text burned in."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.encode.sc import CONTOUR_RGB, build_overlays, summary_line
from pipeline.volume import load_series


def test_overlays_valid_with_contour_and_text(ct_data: Path, tmp_path: Path, new_dciodvfy_errors):
    s = load_series(ct_data / "ge-human-head-tilted")
    mask = np.zeros(s.source_shape, bool)
    mask[15, 250:300, 250:300] = True
    mask[16, 240:310, 240:310] = True
    mask[20, 250:255, 250:255] = True
    text = summary_line(12.3, "high", 0.62)
    assert "NOT FOR DIAGNOSTIC USE" in text and "12.3 mL" in text
    scs = build_overlays(s.datasets, mask, text, max_slices=2, version_tag="v1/2")
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
        yellow = (px[..., 0] > 200) & (px[..., 1] > 200) & (px[..., 2] < 100)
        rows, cols = np.nonzero(yellow)
        assert len(rows) > 100                                       # the text is there ...
        assert rows.min() > 0.85 * 512                               # ... at the bottom,
        assert cols.min() > 0.2 * 512 and cols.max() < 0.8 * 512     # centred: clear of the viewers' corner text
        assert sc.BurnedInAnnotation == "YES"
        assert sc.SeriesDescription.startswith("ICH overlay v1/2 - ")
        assert sc.ImageComments == text


def test_summary_lines():
    assert "cannot assess" in summary_line(None, None, None, "missing_slices")
    assert summary_line(0.0, None, None).startswith("No intracerebral hematoma detected | ")
    assert summary_line(12.34, "high", 0.62).split(" | ") == [
        "ICH volume 12.3 mL", "expansion risk HIGH (62 %)", "NOT FOR DIAGNOSTIC USE"
    ]
