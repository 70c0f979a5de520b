"""The node's model-free "cannot assess" report: the same SRs the analysis process would write."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom

from pipeline.analyze import Analyzer
from pipeline.encode.sr import read_sr_reason
from pipeline.models import ModelMetadata, ModelPaths
from pipeline.result import AnalysisResult, CannotAssess, Status
from pipeline.verdict import ModelIdentity, report_cannot_assess

THICK = CannotAssess("slice_too_thick", "slices of 7 mm exceed the 5 mm limit")


def test_identity_from_metadata_names_the_models_the_analyzer_loads():
    classical = ModelIdentity.of(ModelPaths())
    assert classical == Analyzer(ModelPaths()).identity            # nothing to read: the code's own
    bundled = ModelPaths.bundled()
    ident = ModelIdentity.of(bundled)
    seg, clf = ModelMetadata.read(bundled.segmenter), ModelMetadata.read(bundled.classifier)
    assert ident.versions == {"segmenter": str(seg.version), "classifier": str(clf.version)}
    assert ident.names == {"segmenter": f"{seg.name} v{seg.version}", "classifier": f"{clf.name} v{clf.version}"}


def test_same_report_as_the_analysis_process(phantom_dir: Path, tmp_path: Path):
    ident = ModelIdentity.of(ModelPaths())
    ours = report_cannot_assess(phantom_dir, tmp_path / "node", THICK, ident)
    theirs = Analyzer(ModelPaths()).analyze(phantom_dir, tmp_path / "child", cannot_assess=THICK)
    assert ours.status is theirs.status is Status.CANNOT_ASSESS
    assert (ours.reason, ours.model_versions, ours.outputs) == (theirs.reason, theirs.model_versions, theirs.outputs)
    for name in ("sr.dcm", "sr_tid1411.dcm"):
        a, b = pydicom.dcmread(tmp_path / "node" / name), pydicom.dcmread(tmp_path / "child" / name)
        assert read_sr_reason(a) == read_sr_reason(b) == "CA-THICKSLICE"
        for kw in ("StudyInstanceUID", "PatientID", "SeriesDescription", "ContentSequence"):
            if kw == "ContentSequence":  # same tree (observer, reason, models), apart from the UIDs/dates
                assert _codes(a) == _codes(b)
            else:
                assert a.get(kw) == b.get(kw), kw
    assert AnalysisResult.read(tmp_path / "node").reason.startswith("slice_too_thick:")


def test_a_successor_references_the_earlier_report_and_stale_outputs_go(phantom_dir: Path, tmp_path: Path):
    ident = ModelIdentity.of(ModelPaths())
    out = tmp_path / "out"
    first = report_cannot_assess(phantom_dir, tmp_path / "first", THICK, ident)
    out.mkdir()
    (out / "seg.dcm").write_bytes(b"stale")
    report_cannot_assess(phantom_dir, out, THICK, ident, predecessor=[tmp_path / "first" / "sr.dcm"])
    assert not (out / "seg.dcm").exists()
    sr = pydicom.dcmread(out / "sr.dcm")
    earlier = pydicom.dcmread(tmp_path / "first" / "sr.dcm").SOPInstanceUID
    assert earlier in json.dumps(sr.to_json_dict())                # predecessor evidence
    assert first.outputs["sr"] == ["sr.dcm"]


def test_nothing_identifying_gives_a_result_without_sr(tmp_path: Path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.dcm").write_bytes(b"not dicom")
    result = report_cannot_assess(tmp_path / "in", tmp_path / "out", THICK, ModelIdentity.of(ModelPaths()))
    assert result.status is Status.CANNOT_ASSESS and result.outputs == {}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["result.json"]


def _codes(ds) -> list[tuple[str, str]]:
    out = []
    for item in ds.get("ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else ""
        value = item.ConceptCodeSequence[0].CodeValue if "ConceptCodeSequence" in item else item.get("TextValue", "")
        out.append((name, str(value)))
        out.extend(_codes(item))
    return out

