"""Automatic expansion labels from follow-up CTs (pairing, window, rule, arrival order)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicomnode.pseudonym import Pseudonymizer
from pipeline.result import AnalysisResult, Status
from training.dataset import DatasetStore
from training.labels import ExpansionRule, LabelPolicy, on_analysis, record_analysis
from training.studies import read_study_info

T0 = dt.datetime(2026, 3, 1, 8, 30, 0)
SITE = Pseudonymizer.ephemeral()  # the node's site key, as the node passes it to the store


def write_study(root: Path, patient_id: str, when: dt.datetime, n: int = 2) -> Path:
    """A tiny CT series (headers only matter for pairing)."""
    study_uid = generate_uid()
    d = root / study_uid[-12:]
    d.mkdir(parents=True)
    for i in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(d / f"{i}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.PatientName = patient_id, "Doe^Jane"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
        ds.StudyDate, ds.StudyTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")
        ds.Modality = "CT"
        ds.save_as(d / f"{i}.dcm", enforce_file_format=True)
    return d


def analysed(volume: float | None) -> AnalysisResult:
    if volume is None:
        return AnalysisResult(status=Status.CANNOT_ASSESS, reason="no_brain: test")
    return AnalysisResult(status=Status.ANALYZED, volume_ml=volume, model_versions={"segmenter": "1"})


@pytest.mark.parametrize("base, fu, label", [
    (10.0, 16.5, 1),   # +6.5 mL > 6 mL
    (10.0, 13.5, 1),   # +35 % > 33 %
    (30.0, 35.0, 0),   # +5 mL, +17 %
    (20.0, 26.0, 0),   # exactly +6 mL and +30 %: not more than either threshold
    (20.0, 12.0, 0),   # shrinks
])
def test_rule_of_the_seed(base: float, fu: float, label: int) -> None:
    assert ExpansionRule().label(base, fu) == label


def test_followup_in_window_labels_the_baseline(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "training", pseudonym=SITE)
    b = write_study(tmp_path / "in", "PAT-1", T0)
    f = write_study(tmp_path / "in", "PAT-1", T0 + dt.timedelta(hours=20))
    assert on_analysis(store, b, analysed(12.0)) is None  # nothing to pair yet
    case = on_analysis(store, f, analysed(19.0))
    assert case is not None and case.label == 1 and case.label_source == "followup"
    assert (case.baseline_volume_ml, case.followup_volume_ml, case.interval_h) == (12.0, 19.0, 20.0)
    assert case.baseline_study_uid == read_study_info(b).study_uid
    assert case.followup_study_uid == read_study_info(f).study_uid
    # the baseline images are kept in the store (hard links), under hashed names
    kept = sorted(Path(case.baseline_dir).iterdir())
    assert len(kept) == 2 and pydicom.dcmread(kept[0]).PatientID == "PAT-1"
    assert str(store.root) in case.baseline_dir and case.baseline_study_uid not in case.baseline_dir
    assert "PAT-1" not in case.patient_hash and case.patient_hash == SITE("PAT-1")  # the node's key names the patient


def test_out_of_window_wrong_patient_and_cannot_assess_give_no_label(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "training", pseudonym=SITE)
    on_analysis(store, write_study(tmp_path / "in", "PAT-2", T0), analysed(12.0))
    assert on_analysis(store, write_study(tmp_path / "in", "PAT-2", T0 + dt.timedelta(hours=3)), analysed(30.0)) is None
    assert on_analysis(store, write_study(tmp_path / "in", "PAT-3", T0 + dt.timedelta(hours=24)), analysed(30.0)) is None
    assert on_analysis(store, write_study(tmp_path / "in", "PAT-2", T0 + dt.timedelta(hours=80)), analysed(30.0)) is None
    assert on_analysis(store, write_study(tmp_path / "in", "PAT-2", T0 + dt.timedelta(hours=30)), analysed(None)) is None
    assert store.counts()["cases"] == 0
    # tiny baseline: no hematoma to grow
    on_analysis(store, write_study(tmp_path / "in", "PAT-4", T0), analysed(0.2))
    assert on_analysis(store, write_study(tmp_path / "in", "PAT-4", T0 + dt.timedelta(hours=24)), analysed(9.0)) is None


def test_out_of_order_arrival_and_earliest_followup_wins(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "training", pseudonym=SITE)
    b = write_study(tmp_path / "in", "PAT-5", T0)
    late = write_study(tmp_path / "in", "PAT-5", T0 + dt.timedelta(hours=48))
    early = write_study(tmp_path / "in", "PAT-5", T0 + dt.timedelta(hours=12))
    assert on_analysis(store, late, analysed(40.0)) is None
    case = on_analysis(store, b, analysed(20.0))  # the baseline arrives after its follow-up
    assert case.label == 1 and case.interval_h == 48.0
    case = on_analysis(store, early, analysed(21.0))  # an earlier follow-up replaces the later one
    assert case.label == 0 and case.interval_h == 12.0 and store.counts()["cases"] == 1
    assert case.followup_study_uid == read_study_info(early).study_uid


def test_window_is_configurable_and_validated(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "training", pseudonym=SITE)
    policy = LabelPolicy(min_hours=1, max_hours=4)
    record_analysis(store, write_study(tmp_path / "in", "PAT-6", T0), analysed(10.0), policy=policy)
    case = record_analysis(store, write_study(tmp_path / "in", "PAT-6", T0 + dt.timedelta(hours=3)), analysed(10.5),
                           policy=policy)
    assert case is not None and case.label == 0
    with pytest.raises(ValueError, match="0 <= min < max"):
        LabelPolicy(min_hours=72, max_hours=6)
    p = LabelPolicy.from_mapping({"followup_min_hours": 12, "expansion_abs_ml": 12.5, "unrelated": 1})
    assert (p.min_hours, p.max_hours, p.rule.abs_ml, p.rule.rel) == (12.0, 72.0, 12.5, 0.33)
    assert LabelPolicy.from_mapping(None) == LabelPolicy()


def test_hook_never_raises_into_the_worker(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not dicom")
    assert on_analysis(DatasetStore(tmp_path / "training", pseudonym=SITE), [garbage], analysed(10.0)) is None
    assert "label hook failed" in caplog.text and "Doe" not in caplog.text


# ------------------------------------------------------- a synthetic pair through the real pipeline


def analyse(series_dir: Path, out_dir: Path) -> AnalysisResult:
    """What the node's worker does with one series: ``pipeline.analyze.Analyzer``.

    Model 1 here is the classical segmenter (the node's fallback model 1), not whatever CNN happens to be
    bundled: the test is about pairing and labelling, and must not change when a new default ships.
    """
    from pipeline.analyze import Analyzer
    from pipeline.models import ModelPaths

    out_dir.mkdir(parents=True, exist_ok=True)
    return Analyzer(ModelPaths(segmenter=None, classifier=None)).analyze(sorted(Path(series_dir).iterdir()), out_dir)


@pytest.fixture(scope="module")
def synthetic_pairs(tmp_path_factory) -> list[dict]:
    """One expander and one non-expander (baseline + follow-up each) from the cohort generator."""
    import csv

    from training.synth import SynthOptions, write_cohort

    rows = []
    for prevalence, seed in ((1.0, 11), (0.0, 12)):
        out = tmp_path_factory.mktemp(f"synth{seed}")
        opts = SynthOptions(matrix=128, thickness_mm=(5.0,), tilt_fraction=0.0, prevalence=prevalence,
                            streak_probability=0.0)
        write_cohort(out, 1, seed=seed, options=opts)
        row = next(csv.DictReader(open(out / "manifest.csv")))
        rows.append({**row, "root": out})
    return rows


def test_synthetic_followup_gives_the_generators_label(synthetic_pairs: list[dict], tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "training", pseudonym=SITE)
    assert sorted(int(r["expansion"]) for r in synthetic_pairs) == [0, 1]
    for row in synthetic_pairs:
        out = tmp_path / "out" / row["case_id"]
        base = analyse(row["root"] / row["baseline_dir"], out / "b")
        fu = analyse(row["root"] / row["followup_dir"], out / "f")
        assert base.status == fu.status == Status.ANALYZED
        assert on_analysis(store, row["root"] / row["baseline_dir"], base, seg_files=[out / "b" / "seg.dcm"]) is None
        case = on_analysis(store, row["root"] / row["followup_dir"], fu, seg_files=[out / "f" / "seg.dcm"])
        assert case is not None, row["case_id"]
        assert case.label == int(row["expansion"]), (row["case_id"], base.volume_ml, fu.volume_ml, row["growth_ml"])
        assert (case.baseline_study_uid, case.followup_study_uid) == (row["baseline_study_uid"], row["followup_study_uid"])
        assert case.baseline_volume_ml == base.volume_ml and case.followup_volume_ml == fu.volume_ml
        assert abs(case.interval_h - float(row["interval_h"])) < 0.02
        assert case.extra["baseline_models"] == base.model_versions
        assert pydicom.dcmread(case.extra["seg"]).Modality == "SEG"  # the node's SEG is kept with the case
        # model 1 measures what the generator drew (loosely: the label must not hinge on luck)
        assert abs(base.volume_ml - float(row["baseline_volume_ml"])) < 0.35 * float(row["baseline_volume_ml"]) + 2
    assert store.counts()["cases"] == 2 and store.counts()["expanders"] == 1


def test_images_of_studies_without_followup_are_pruned(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "training", pseudonym=SITE)
    lone = write_study(tmp_path / "in", "PAT-7", T0)
    b = write_study(tmp_path / "in", "PAT-8", T0)
    on_analysis(store, lone, analysed(10.0))
    on_analysis(store, b, analysed(10.0))
    on_analysis(store, write_study(tmp_path / "in", "PAT-8", T0 + dt.timedelta(hours=24)), analysed(10.0))
    lone_dir = store.files_dir(read_study_info(lone).study_uid)
    assert lone_dir.is_dir()
    assert store.prune(keep_days=7) == 0  # too recent
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=8)
    assert store.prune(keep_days=7, now=later) == 2  # the lone study and the follow-up; the baseline stays
    assert not lone_dir.exists() and store.study(read_study_info(lone).study_uid).series_dir is None
    assert Path(store.case_for_baseline(read_study_info(b).study_uid).baseline_dir).is_dir()
