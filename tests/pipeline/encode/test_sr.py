"""SR writer, both profiles: what OHIF 3.13 shows, valid TID 1500/2000 (dciodvfy, dsrdump, dsr2html,
highdicom, PixelMed), stable tracking and observer UIDs, predecessors, validation of the input."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from pipeline.encode.common import DeviceInfo
from pipeline.encode.outline import key_outline
from pipeline.encode.seg import SegmenterInfo, build_seg
from pipeline.encode.sr import (
    Findings,
    build_sr,
    profile_of,
    read_sr_probability,
    read_sr_reason,
    read_sr_risk,
    read_sr_tracking_uid,
    read_sr_volume_ml,
)
from pipeline.encode.sr.read import walk
from pipeline.volume import load_series

from .ohif_view import OhifBreaks, ohif_view
from tests.conftest import unavailable

MODELS = {"segmenter": "classical-threshold v1", "classifier": "fusion v2"}
COMPREHENSIVE_SR, COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34"
POSITIVE = Findings(12.345, 0.62, "high", model_versions=MODELS)
NEGATIVE = Findings(0.0, model_versions=MODELS)
CANNOT = Findings(reason_code="missing_slices", reason_text="slice 11 of 30 missing", model_versions=MODELS)


@pytest.fixture(scope="module")
def phantom(ct_data: Path):
    """The 5 mm phantom with a box "hematoma" (largest on slice 11) and its SEG and outline."""
    s = load_series(ct_data / "philips-phantom-5mm")
    mask = np.zeros(s.source_shape, bool)
    mask[10:13, 200:240, 200:250] = True
    mask[11, 240:250, 200:250] = True                       # slice 11 is the key slice
    mask[11, 100:104, 100:104] = True                       # a second, smaller region: not outlined
    seg = build_seg(s.datasets, mask, SegmenterInfo("classical-threshold", "1"))
    outline = key_outline(mask, tuple(float(v) for v in s.datasets[0].PixelSpacing))
    return s, mask, seg, outline


def _sr(phantom, findings: Findings, profile: str, **kw) -> pydicom.Dataset:
    s, _, seg, outline = phantom
    if findings.detected:
        kw.setdefault("seg", seg)
        kw.setdefault("outline", outline)
    return build_sr(s.datasets, findings, profile=profile, **kw)


def _saved(sr: pydicom.Dataset, path: Path) -> pydicom.Dataset:
    sr.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def _tool(name: str, *args: object) -> str:
    if shutil.which(name) is None:
        unavailable(f"dcmtk {name} not installed")
    proc = subprocess.run([name, *map(str, args)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_ohif_profile_shows_outline_and_numbers_on_the_key_slice(phantom, tmp_path: Path):
    s, mask, _, outline = phantom
    sr = _saved(_sr(phantom, POSITIVE, "ohif"), tmp_path / "sr.dcm")
    assert sr.SOPClassUID == COMPREHENSIVE_SR and profile_of(sr) == "ohif"
    (m,) = ohif_view(sr)["measurements"]
    assert outline.slice_index == 11
    assert m.image_uid == s.datasets[11].SOPInstanceUID and m.frame == 1 and m.graphic_type == "POLYLINE"
    area = float(mask[11, 200:250, 200:250].sum()) * np.prod([float(v) for v in s.datasets[0].PixelSpacing]) / 100
    assert m.lines == [
        "Volume: 12.35 ml",
        f"Area: {area:.2f} cm2",
        "Expansion probability (HIGH risk): 62.00 %",
    ]
    low = ohif_view(_sr(phantom, Findings(3.0, 0.14, "low"), "ohif"))["measurements"][0]
    assert low.lines[-1] == "Expansion probability (low risk): 14.00 %"
    plain = ohif_view(_sr(phantom, Findings(3.0), "ohif"))["measurements"][0]
    assert plain.lines == ["Volume: 3.00 ml", f"Area: {area:.2f} cm2"]


def test_ohif_profile_outline_is_the_closed_boundary_of_the_largest_region(phantom):
    s, mask, _, outline = phantom
    sr = _sr(phantom, POSITIVE, "ohif")
    (scoord,) = [i for i in walk(sr.ContentSequence) if i.ValueType == "SCOORD"]
    points = np.asarray(scoord.GraphicData, dtype=float).reshape(-1, 2)
    assert np.array_equal(points[0], points[-1])              # closed
    x, y = points[:, 0], points[:, 1]
    assert (x.min(), x.max(), y.min(), y.max()) == (200, 250, 200, 250)   # pixel edges of the box, not the small region
    shoelace = 0.5 * abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))
    assert shoelace == pytest.approx(mask[11, 200:250, 200:250].sum(), rel=0.01)


def test_ohif_profile_states_no_hematoma_and_cannot_assess_as_text(phantom, tmp_path: Path):
    neg = _saved(_sr(phantom, NEGATIVE, "ohif"), tmp_path / "neg.dcm")
    text = ohif_view(neg)["text"]
    assert text[0] == "1. Diagnostic Imaging Report"
    assert "Finding: No intracerebral hematoma detected." in text
    notice = "Comment: Research use only, not for diagnostic use. Models: classifier fusion v2; segmenter classical-threshold v1."
    assert notice in text
    assert read_sr_volume_ml(neg) == 0.0 and read_sr_reason(neg) is None
    ca = _saved(_sr(phantom, CANNOT, "ohif"), tmp_path / "ca.dcm")
    text = ohif_view(ca)["text"]
    assert "Finding: Cannot assess: Missing slices (slice 11 of 30 missing)." in text
    assert "Cannot assess: Missing slices" in text and notice in text
    assert read_sr_reason(ca) == "CA-MISSINGSLICES" and read_sr_volume_ml(ca) is None


def test_tid1500_without_an_image_region_breaks_ohif(phantom):
    """Why the "ohif" profile exists: OHIF 3.13 shows none of the strict TID 1411 reports."""
    for findings in (POSITIVE, NEGATIVE, CANNOT):
        sr = _sr(phantom, findings, "tid1411")
        with pytest.raises(OhifBreaks):
            ohif_view(sr)


@pytest.mark.parametrize("profile", ["ohif", "tid1411"])
@pytest.mark.parametrize("case", ["positive", "negative", "cannot"])
def test_reports_are_valid_rendered_and_read_back(phantom, tmp_path: Path, new_dciodvfy_errors, profile, case):
    s, _, seg, _ = phantom
    findings = {"positive": POSITIVE, "negative": NEGATIVE, "cannot": CANNOT}[case]
    path = tmp_path / "sr.dcm"
    sr = _saved(_sr(phantom, findings, profile), path)
    assert new_dciodvfy_errors(path, Path(s.datasets[0].filename)) == set()
    dump = _tool("dsrdump", path)
    assert "Research use only" in dump and "25045-6" in dump
    assert "PRELIMINARY" in dump and sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert "<html" in _tool("dsr2html", path).lower()
    assert sr.SOPClassUID == (COMPREHENSIVE_SR if profile == "ohif" else COMPREHENSIVE_3D_SR)
    assert sr.SeriesDescription.startswith("ICH report")
    assert int(sr.SeriesNumber) == (int(s.datasets[0].SeriesNumber) % 1000) + 1000 + (2 if profile == "ohif" else 4)
    document = (hd.sr.ComprehensiveSR if profile == "ohif" else hd.sr.Comprehensive3DSR).from_dataset(sr)
    assert read_sr_volume_ml(sr) == (None if case == "cannot" else findings.volume_ml)
    assert read_sr_reason(sr) == ("CA-MISSINGSLICES" if case == "cannot" else None)
    if profile == "ohif" and case != "positive":
        assert sr.ContentTemplateSequence[0].TemplateIdentifier == "2000"
        return
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    report = document.content
    planar, volumetric = report.get_planar_roi_measurement_groups(), report.get_volumetric_roi_measurement_groups()
    groups = planar + volumetric + report.get_image_measurement_groups()
    assert len(groups) == 1 and str(groups[0].tracking_uid) == read_sr_tracking_uid(sr)
    if case == "positive":
        assert len(planar if profile == "ohif" else volumetric) == 1
        units = {m.name.meaning: m.unit.value for m in groups[0].get_measurements()}
        assert units["Volume"] == "ml" and set(units.values()) <= {"ml", "cm2", "%"}
        assert read_sr_probability(sr) == pytest.approx(0.62) and read_sr_risk(sr) == "high"
    if profile == "tid1411" and case == "positive":
        (ref,) = [i for i in walk(sr.ContentSequence) if i.ValueType == "IMAGE" and i.ConceptNameCodeSequence[0].CodeValue == "121191"]
        assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert ref.ReferencedSOPSequence[0].ReferencedSegmentNumber == 1
    library = [i for i in walk(sr.ContentSequence) if i.ValueType == "IMAGE" and i.RelationshipType == "CONTAINS"
               and i.ConceptNameCodeSequence[0].CodeValue == "260753009"]
    assert len(library) == len(s.datasets)


def test_tracking_uid_is_the_segs_and_survives_reanalysis(phantom, ct_data: Path):
    s, mask, seg, _ = phantom
    seg_uid = seg.SegmentSequence[0].TrackingUID
    for profile in ("ohif", "tid1411"):
        assert read_sr_tracking_uid(_sr(phantom, POSITIVE, profile)) == seg_uid
    assert read_sr_tracking_uid(_sr(phantom, CANNOT, "tid1411")) == seg_uid
    again = build_seg(s.datasets, mask, SegmenterInfo("other", "9"))
    assert again.SegmentSequence[0].TrackingUID == seg_uid and again.SOPInstanceUID != seg.SOPInstanceUID
    other = load_series(ct_data / "ge-human-head-tilted")
    box = np.zeros(other.source_shape, bool)
    box[5, 10:20, 10:20] = True
    assert build_seg(other.datasets, box, SegmenterInfo("x", "1")).SegmentSequence[0].TrackingUID != seg_uid


def test_device_observer_uid_is_per_installation(phantom):
    def observer(sr):
        return next(str(i.UID) for i in walk(sr.ContentSequence) if i.ValueType == "UIDREF" and i.ConceptNameCodeSequence[0].CodeValue == "121012")

    here, there = DeviceInfo(installation_id="site-a"), DeviceInfo(installation_id="site-b")
    first = observer(_sr(phantom, POSITIVE, "ohif", device=here))
    assert observer(_sr(phantom, NEGATIVE, "ohif", device=here)) == first
    assert observer(_sr(phantom, POSITIVE, "tid1411", device=here)) == first
    assert observer(_sr(phantom, POSITIVE, "ohif", device=there)) != first
    assert pydicom.uid.UID(first).is_valid


def test_reanalysis_references_what_it_replaces(phantom):
    _, _, seg, _ = phantom
    first_ohif, first_strict = _sr(phantom, POSITIVE, "ohif"), _sr(phantom, POSITIVE, "tid1411")
    for profile, own in (("ohif", first_ohif), ("tid1411", first_strict)):
        second = _sr(phantom, Findings(6.0), profile, predecessors=[first_ohif, first_strict, seg])
        (pred,) = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
        assert pred.ReferencedSOPInstanceUID == own.SOPInstanceUID
        (other,) = second.PertinentOtherEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
        assert other.ReferencedSOPInstanceUID == seg.SOPInstanceUID


def test_inputs_are_validated(phantom):
    s, _, seg, outline = phantom
    with pytest.raises(ValueError):
        Findings()
    with pytest.raises(ValueError):
        Findings(1.0, expansion_probability=1.5)
    with pytest.raises(ValueError):
        Findings(1.0, risk="medium")
    with pytest.raises(ValueError, match="needs a hematoma"):
        Findings(0.0, 0.3, "low")
    with pytest.raises(ValueError, match="outline"):
        build_sr(s.datasets, POSITIVE, seg=seg, profile="ohif")
    with pytest.raises(ValueError, match="SEG"):
        build_sr(s.datasets, POSITIVE, outline=outline, profile="tid1411")
    with pytest.raises(ValueError, match="profile"):
        build_sr(s.datasets, NEGATIVE, profile="dicom")


@pytest.mark.slow
def test_pixelmed_sr_validator_finds_no_error(phantom, tmp_path: Path):
    jar = Path("/usr/share/java/pixelmed.jar")
    if shutil.which("java") is None or not jar.is_file():
        unavailable("PixelMed (Debian libpixelmed-java) not installed")
    # JDK 17+ caps XPath size; PixelMed's compiled templates exceed it
    limits = [f"-Djdk.xml.{k}=0" for k in ("xpathExprOpLimit", "xpathExprGrpLimit", "xpathTotalOpLimit")]
    for name, findings, profile in (("pos", POSITIVE, "ohif"), ("neg", NEGATIVE, "ohif"), ("vol", POSITIVE, "tid1411")):
        path = tmp_path / f"{name}.dcm"
        _saved(_sr(phantom, findings, profile), path)
        proc = subprocess.run(
            ["java", *limits, "-cp", str(jar), "com.pixelmed.validate.DicomSRValidator", str(path)],
            capture_output=True, text=True, timeout=300,
        )
        out = proc.stdout + proc.stderr
        assert "Root Template Validation Complete" in out and "IOD validation complete" in out, out
        assert [line for line in out.splitlines() if line.startswith("Error")] == [], out
