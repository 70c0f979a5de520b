"""TID 1500 SR writer: valid, rendered by dsrdump, right concepts, cannot-assess, predecessors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pipeline.encode.seg import SegmenterInfo, build_seg
from pipeline.encode.sr import Findings, build_sr, read_sr_reason, read_sr_volume_ml
from pipeline.volume import load_series

MODELS = {"segmenter": "classical-threshold v1", "classifier": "fusion v2"}


@pytest.fixture(scope="module")
def phantom(ct_data: Path):
    s = load_series(ct_data / "philips-phantom-5mm")
    mask = np.zeros(s.source_shape, bool)
    mask[10:13, 200:240, 200:250] = True
    seg = build_seg(s.datasets, mask, SegmenterInfo("classical-threshold", "1"))
    return s, seg


def _dsrdump(path: Path) -> str:
    if shutil.which("dsrdump") is None:
        pytest.skip("dcmtk dsrdump not installed")
    proc = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _walk(seq):
    for item in seq:
        yield item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence)


def test_analysed_sr_valid_rendered_and_complete(phantom, tmp_path: Path, new_dciodvfy_errors):
    s, seg = phantom
    sr = build_sr(s.datasets, Findings(12.345, 0.62, "high", model_versions=MODELS), seg=seg)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert new_dciodvfy_errors(path, Path(s.datasets[0].filename)) == set()
    text = _dsrdump(path)
    assert "Volume" in text and "cm3" in text and "High risk" in text and "25045-6" in text
    assert "fusion v2" in text                                   # device observer names model versions
    sr = pydicom.dcmread(path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"     # Comprehensive 3D SR
    assert sr.PreliminaryFlag == "PRELIMINARY" and sr.VerificationFlag == "UNVERIFIED"
    assert read_sr_volume_ml(sr) == pytest.approx(12.345)
    items = list(_walk(sr.ContentSequence))
    nums = {i.ConceptNameCodeSequence[0].CodeValue: i.MeasuredValueSequence[0] for i in items if i.ValueType == "NUM" and "MeasuredValueSequence" in i}
    assert nums["118565006"].MeasurementUnitsCodeSequence[0].CodeValue == "cm3"
    assert nums["ICH-EXP-PROB"].MeasurementUnitsCodeSequence[0].CodeValue == "1"
    assert float(nums["ICH-EXP-PROB"].NumericValue) == pytest.approx(0.62)
    seg_refs = [i for i in items if i.ValueType == "IMAGE" and i.ConceptNameCodeSequence[0].CodeValue == "121191"]
    assert len(seg_refs) == 1
    ref = seg_refs[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == seg.SOPInstanceUID and ref.ReferencedSegmentNumber == 1
    library = [i for i in items if i.ValueType == "IMAGE" and i.ConceptNameCodeSequence[0].CodeValue == "260753009"]
    assert len(library) == len(s.datasets)                        # image library of the source series
    evidence = {r.ReferencedSOPInstanceUID for st in sr.CurrentRequestedProcedureEvidenceSequence for se in st.ReferencedSeriesSequence for r in se.ReferencedSOPSequence}
    assert seg.SOPInstanceUID in evidence and s.datasets[0].SOPInstanceUID in evidence


def test_low_risk_and_no_classifier(phantom):
    s, seg = phantom
    low = build_sr(s.datasets, Findings(3.0, 0.1, "low"), seg=seg)
    codes = {i.ConceptCodeSequence[0].CodeValue for i in _walk(low.ContentSequence) if i.ValueType == "CODE"}
    assert "75976002" in codes and "15508007" not in codes
    none = build_sr(s.datasets, Findings(3.0), seg=seg)
    names = {i.ConceptNameCodeSequence[0].CodeValue for i in _walk(none.ContentSequence)}
    assert "ICH-EXP-PROB" not in names and "ICH-EXP-RISK" not in names


def test_cannot_assess_sr_carries_coded_reason(phantom, tmp_path: Path, new_dciodvfy_errors):
    s, _ = phantom
    sr = build_sr(s.datasets, Findings(reason_code="missing_slices"))
    path = tmp_path / "ca.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert new_dciodvfy_errors(path, Path(s.datasets[0].filename)) == set()
    assert "Missing slices" in _dsrdump(path)
    assert read_sr_reason(sr) == "CA-MISSINGSLICES"
    assert read_sr_volume_ml(sr) is None


def test_reanalysis_references_what_it_replaces(phantom):
    s, seg = phantom
    first = build_sr(s.datasets, Findings(5.0), seg=seg)
    second = build_sr(s.datasets, Findings(6.0), seg=seg, predecessors=[first, seg])
    pred = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pred.ReferencedSOPInstanceUID == first.SOPInstanceUID
    other = second.PertinentOtherEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert other.ReferencedSOPInstanceUID == seg.SOPInstanceUID


def test_findings_are_validated():
    with pytest.raises(ValueError):
        Findings()
    with pytest.raises(ValueError):
        Findings(1.0, expansion_probability=1.5)
    with pytest.raises(ValueError):
        Findings(1.0, risk="medium")
