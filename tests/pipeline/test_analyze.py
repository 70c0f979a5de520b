"""End to end: series folder → seg.dcm, sr.dcm, sc/*.dcm, result.json (the one public entry)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from lesions import insert_ellipsoid
from pipeline.analyze import Analyzer, OutputOptions, analyze
from pipeline.brain import extract_brain
from pipeline.encode.seg import read_seg_mask
from pipeline.encode.sr import read_sr_reason, read_sr_volume_ml
from pipeline.result import AnalysisResult, Status
from pipeline.segment import load_segmenter
from pipeline.volume import load_series, read_images

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer()


@pytest.fixture(scope="module")
def lesioned(ct_data: Path, tmp_path_factory) -> tuple[Path, float, np.ndarray]:
    """A copy of the real GE head with a 9 mL ellipsoidal 65 HU hematoma inserted."""
    base = load_series(ct_data / "ge-human-head-tilted")
    brain = extract_brain(base.volume)
    center = base.volume.index_to_physical(np.array(np.nonzero(brain)).mean(axis=1)[None])[0] + np.array([25.0, 0, 0])
    datasets, true_ml = insert_ellipsoid(base.datasets, center, (15, 12, 12))
    folder = tmp_path_factory.mktemp("lesioned")
    for i, ds in enumerate(datasets):
        ds.save_as(folder / f"{i:02d}.dcm")
    return folder, true_ml, center


@pytest.fixture(scope="module")
def lesioned_result(analyzer: Analyzer, lesioned, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return analyzer.analyze(lesioned[0], out), out


def test_inserted_hematoma_end_to_end(lesioned, lesioned_result):
    folder, true_ml, _ = lesioned
    result, out = lesioned_result
    assert result.status is Status.ANALYZED
    assert result.volume_ml == pytest.approx(true_ml, rel=0.10)
    assert set(result.timings_s) >= {"load", "brain", "segmentation", "encoding"}
    assert result.model_versions == {"segmenter": "1"}
    assert result.risk is None and result.expansion_probability is None
    assert result.outputs["seg"] == ["seg.dcm"] and result.outputs["sr"] == ["sr.dcm"]
    assert result.outputs["sr_tid1411"] == ["sr_tid1411.dcm"]
    assert result.outputs["sc"] and all((out / p).is_file() for p in result.outputs["sc"])
    assert AnalysisResult.read(out).volume_ml == result.volume_ml

    # the SEG is exactly the computed mask on the original (tilted) slices, and the SR says its volume
    series = load_series(folder)
    mask = load_segmenter(None).predict_mask(series.volume, extract_brain(series.volume))
    assert mask.sum() * series.volume.voxel_volume_ml == pytest.approx(result.volume_ml, abs=1e-3)
    seg_mask = read_seg_mask(pydicom.dcmread(out / "seg.dcm"), series.datasets)
    assert np.array_equal(seg_mask, series.mask_to_source(mask))
    for name in ("sr.dcm", "sr_tid1411.dcm"):
        assert read_sr_volume_ml(pydicom.dcmread(out / name)) == pytest.approx(result.volume_ml, abs=1e-3)


def test_outputs_pass_dciodvfy(lesioned, lesioned_result, new_dciodvfy_errors):
    folder, _, _ = lesioned
    result, out = lesioned_result
    source = sorted(folder.iterdir())[0]
    for rel in result.outputs["seg"] + result.outputs["sr"] + result.outputs["sr_tid1411"] + result.outputs["sc"]:
        assert new_dciodvfy_errors(out / rel, source) == set(), rel


def test_normal_head_has_no_seg_and_says_so(analyzer: Analyzer, ct_data: Path, tmp_path: Path):
    result = analyzer.analyze(ct_data / "ge-human-head-tilted", tmp_path)
    assert result.status is Status.ANALYZED
    assert result.volume_ml == 0.0
    assert "seg" not in result.outputs and not (tmp_path / "seg.dcm").exists()   # no empty segment (NaN in OHIF)
    assert result.outputs["sr"] == ["sr.dcm"] and result.outputs["sr_tid1411"] == ["sr_tid1411.dcm"]
    for name in ("sr.dcm", "sr_tid1411.dcm"):
        assert read_sr_volume_ml(pydicom.dcmread(tmp_path / name)) == 0.0


def test_reanalysis_references_predecessors(analyzer: Analyzer, lesioned, lesioned_result, tmp_path: Path):
    first, out = lesioned_result
    analyzer_no_sc = Analyzer(outputs=OutputOptions(overlay=False))
    second = analyzer_no_sc.analyze(lesioned[0], tmp_path, predecessor=[out / "sr.dcm", out / "seg.dcm"])
    assert "sc" not in second.outputs
    sr = pydicom.dcmread(tmp_path / "sr.dcm")
    old_sr = pydicom.dcmread(out / "sr.dcm")
    old_seg = pydicom.dcmread(out / "seg.dcm")
    pred = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pred.ReferencedSOPInstanceUID == old_sr.SOPInstanceUID
    other = sr.PertinentOtherEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert other.ReferencedSOPInstanceUID == old_seg.SOPInstanceUID
    assert sr.SeriesInstanceUID != old_sr.SeriesInstanceUID


def test_missing_slice_gives_coded_sr_and_no_seg(analyzer: Analyzer, phantom_dir: Path, tmp_path: Path):
    src = tmp_path / "series"
    src.mkdir()
    datasets = sorted(read_images(phantom_dir), key=lambda ds: float(ds.ImagePositionPatient[2]))
    for i, ds in enumerate(datasets):
        if i != 10:
            ds.save_as(src / f"{i:02d}.dcm")
    out = tmp_path / "out"
    (out / "sc").mkdir(parents=True)
    (out / "seg.dcm").write_bytes(b"stale")                 # left by an earlier run into the same folder
    (out / "sc" / "sc_004.dcm").write_bytes(b"stale")
    result = analyzer.analyze(src, out)
    assert result.status is Status.CANNOT_ASSESS
    assert result.reason.startswith("missing_slices:")
    assert not list((out / "sc").iterdir())
    assert result.volume_ml is None
    assert not (out / "seg.dcm").exists()
    assert read_sr_reason(pydicom.dcmread(out / "sr.dcm")) == "CA-MISSINGSLICES"
    assert AnalysisResult.read(out).status is Status.CANNOT_ASSESS


def test_no_frame_of_reference_still_gets_a_coded_sr(analyzer: Analyzer, phantom_dir: Path, tmp_path: Path, new_dciodvfy_errors):
    src = tmp_path / "series"
    src.mkdir()
    for i, ds in enumerate(read_images(phantom_dir)):
        del ds.FrameOfReferenceUID
        ds.save_as(src / f"{i:02d}.dcm")
    result = analyzer.analyze(src, tmp_path / "out")
    assert result.status is Status.CANNOT_ASSESS and result.reason.startswith("no_frame_of_reference")
    assert read_sr_reason(pydicom.dcmread(tmp_path / "out" / "sr.dcm")) == "CA-NOFOR"
    assert new_dciodvfy_errors(tmp_path / "out" / "sr.dcm", src / "00.dcm") == set()


def test_folder_without_images_gives_result_json_only(tmp_path: Path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "junk.bin").write_bytes(b"\x00" * 300)
    result = analyze(tmp_path / "in", tmp_path / "out")
    assert result.status is Status.CANNOT_ASSESS and result.reason.startswith("no_images")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["result.json"]


def test_classifier_output_reaches_result_and_sr(monkeypatch, phantom_dir: Path, tmp_path: Path):
    """The classifier contract (``.version``, ``.predict(volume, mask)``) is wired through to the SR."""
    import pipeline.classify as classify
    from pipeline.models import ModelPaths
    from pipeline.result import Risk

    class Prediction:
        probability, risk = 0.71, Risk.HIGH

    class FixedClassifier:   # stands in for a trained model directory: only the wiring is under test
        version, name = "9", "fusion"

        def predict(self, volume, mask):
            assert mask.shape == volume.shape
            return Prediction()

    monkeypatch.setattr(classify, "load_classifier", lambda path, *a, **k: FixedClassifier())
    result = Analyzer(ModelPaths(classifier=tmp_path)).analyze(phantom_dir, tmp_path / "out")
    assert result.expansion_probability == pytest.approx(0.71) and result.risk is Risk.HIGH
    assert result.model_versions == {"segmenter": "1", "classifier": "9"}
    sr = pydicom.dcmread(tmp_path / "out" / "sr.dcm")
    text = subprocess.run(["dsrdump", str(tmp_path / "out" / "sr.dcm")], capture_output=True, text=True).stdout if shutil.which("dsrdump") else ""
    codes = {i.ConceptCodeSequence[0].CodeValue for i in _walk(sr.ContentSequence) if i.ValueType == "CODE"}
    assert "15508007" in codes
    if text:
        assert "fusion v9" in text


def _walk(seq):
    for item in seq:
        yield item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence)


def test_cli_analyze(phantom_dir: Path, tmp_path: Path):
    exe = Path(sys.executable).with_name("ich-node")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dicomnode.cli"]
    proc = subprocess.run([*cmd, "analyze", str(phantom_dir), "--out", str(tmp_path), "--overlay-slices", "1"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    result = AnalysisResult.read(tmp_path)
    assert result.status is Status.ANALYZED and len(result.outputs["sc"]) == 1
    bad = subprocess.run([*cmd, "analyze", str(tmp_path / "sc"), "--out", str(tmp_path / "again")],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert bad.returncode == 3                               # cannot assess: a documented exit code
    assert AnalysisResult.read(tmp_path / "again").status is Status.CANNOT_ASSESS


def test_callers_cannot_assess_verdict_gives_coded_sr_only(analyzer: Analyzer, phantom_dir: Path, tmp_path: Path):
    """The node's selection (site limits, e.g. slice thickness) can decide; the pipeline only reports."""
    from pipeline.result import CannotAssess

    verdict = CannotAssess("slice_too_thick", "slices of 7 mm exceed the 5 mm limit")
    result = analyzer.analyze(phantom_dir, tmp_path / "out", cannot_assess=verdict)
    assert result.status is Status.CANNOT_ASSESS and result.reason.startswith("slice_too_thick:")
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_file()) == ["result.json", "sr.dcm", "sr_tid1411.dcm"]
    assert read_sr_reason(pydicom.dcmread(tmp_path / "out" / "sr.dcm")) == "CA-THICKSLICE"


def test_no_hematoma_means_classifier_is_not_asked(monkeypatch, phantom_dir: Path, tmp_path: Path):
    """Expansion is not applicable without a hematoma: probability and risk stay empty, no error."""
    import pipeline.classify as classify
    import pipeline.segment as segment
    from pipeline.models import ModelPaths

    class NothingFound:
        name, version = "none", "0"

        def predict_mask(self, volume, brain):
            return np.zeros(volume.shape, dtype=bool)

    class MustNotBeCalled:
        version, name = "9", "fusion"

        def predict(self, volume, mask):
            raise AssertionError("classifier asked about an empty mask")

    monkeypatch.setattr(classify, "load_classifier", lambda path, *a, **k: MustNotBeCalled())
    analyzer = Analyzer(ModelPaths(classifier=tmp_path))
    monkeypatch.setattr(analyzer, "segmenter", NothingFound(), raising=False)
    result = analyzer.analyze(phantom_dir, tmp_path / "out")
    assert result.status is Status.ANALYZED and result.volume_ml == 0
    assert result.expansion_probability is None and result.risk is None
