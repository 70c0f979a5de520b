"""SEG writer: valid, exact read-back, right codes, all frames, incomplete headers survive."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from pipeline.encode.seg import DISPLAY_RGB, SegmenterInfo, build_seg, read_seg_mask
from pipeline.encode.uids import tracking_uid
from pipeline.volume import load_series


@pytest.fixture(scope="module")
def ge(ct_data: Path):
    return load_series(ct_data / "ge-human-head-tilted")


def _blob(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    mask[10:14, 200:260, 230:300] = True
    mask[12, 300:310, 100:120] = rng.random((10, 20)) > 0.5
    return mask


def test_seg_is_valid_and_reads_back_exactly(ge, tmp_path: Path, new_dciodvfy_errors):
    mask = _blob(ge.source_shape)
    seg = build_seg(ge.datasets, mask, SegmenterInfo("classical-threshold", "7"))
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert new_dciodvfy_errors(path, Path(ge.datasets[0].filename)) == set()
    back = read_seg_mask(pydicom.dcmread(path), ge.datasets)
    assert np.array_equal(back, mask)


def test_seg_content_codes_frames_and_identity(ge):
    mask = _blob(ge.source_shape)
    seg = build_seg(ge.datasets, mask, SegmenterInfo("ich-unet3d", "2"))
    assert seg.SegmentationType == "BINARY"
    assert int(seg.NumberOfFrames) == len(ge.datasets)       # empty frames kept
    (segment,) = seg.SegmentSequence
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "50960005"
    assert segment.AnatomicRegionSequence[0].CodeValue == "12738006"
    algo = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("ich-unet3d", "2")
    src = ge.datasets[0]
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert seg.StudyInstanceUID == src.StudyInstanceUID
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID
    # the GE header has no birth date / sex: present and empty, not invented, not a crash
    assert seg.PatientBirthDate == "" and seg.PatientSex == ""
    assert "PatientBirthDate" not in src                      # caller's datasets untouched
    # one frame per source slice, in spatial order (highdicom may run it head-to-feet)
    refs = [f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID for f in seg.PerFrameFunctionalGroupsSequence]
    uids = [ds.SOPInstanceUID for ds in ge.datasets]
    assert refs in (uids, uids[::-1])


def test_seg_rejects_wrong_shape(ge):
    with pytest.raises(ValueError, match="does not match"):
        build_seg(ge.datasets, np.zeros((3, 512, 512), bool), SegmenterInfo("x", "1"))


def test_no_seg_without_hematoma(ge):
    """An empty segment shows as NaN statistics in OHIF: a negative result has no SEG at all."""
    with pytest.raises(ValueError, match="no hematoma"):
        build_seg(ge.datasets, np.zeros(ge.source_shape, bool), SegmenterInfo("x", "1"))


def test_small_hematoma_keeps_all_frames(ge):
    mask = np.zeros(ge.source_shape, bool)
    mask[3, 10, 10] = True
    seg = build_seg(ge.datasets, mask, SegmenterInfo("x", "1"))
    assert int(seg.NumberOfFrames) == len(ge.datasets)
    assert hd.seg.Segmentation.from_dataset(seg).number_of_segments == 1


def test_segment_colour_tracking_and_description_for_viewers(ge):
    seg = build_seg(ge.datasets, _blob(ge.source_shape), SegmenterInfo("ich-unet3d", "2"), version_tag="v2/1")
    (segment,) = seg.SegmentSequence
    lab = hd.color.CIELabColor.from_dicom_value(segment.RecommendedDisplayCIELabValue)
    assert lab.to_rgb() == pytest.approx(DISPLAY_RGB, abs=2)            # OHIF warns without one
    assert segment.TrackingUID == tracking_uid(ge.datasets[0].StudyInstanceUID)
    assert segment.TrackingID == "ICH-1"
    assert seg.SeriesDescription.startswith("ICH SEG v2/1 - ")           # what OHIF shows: ≤ 20 characters
    assert len(seg.SeriesDescription.split(" - ")[0]) <= 20
    assert "not for diagnostic use" in seg.SeriesDescription
    default = build_seg(ge.datasets, _blob(ge.source_shape), SegmenterInfo("ich-unet3d", "2"))
    assert default.SeriesDescription.startswith("ICH SEG v2 - ")
