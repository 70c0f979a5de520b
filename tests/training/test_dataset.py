"""Dataset store: cases, exclusion, pseudonyms, manifest export; `ich-node dataset` commands."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicomnode.pseudonym import Pseudonymizer
from training.dataset import Case, DatasetError, DatasetStore, StudyRecord, case_id_for, hash_patient_id


def make_case(i: int, label: int = 0, **kw) -> Case:
    uid = f"1.2.3.{i}"
    base = dict(case_id=case_id_for("import", uid), patient_hash=f"p{i}", source="import", label=label,
                label_source="import", baseline_study_uid=uid, followup_study_uid=None, baseline_volume_ml=10.0 + i,
                followup_volume_ml=None, interval_h=None, baseline_dir=f"/data/{i}", baseline_mask=None,
                excluded=False, exclude_reason=None, extra={}, created="", updated="")
    base.update(kw)
    return Case(**base)


def test_cases_roundtrip_exclude_and_counts(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "training")
    for i in range(5):
        store.upsert_case(make_case(i, label=int(i < 2)))
    assert store.counts() == {"cases": 5, "excluded": 0, "expanders": 2, "studies": 0}
    cid = case_id_for("import", "1.2.3.0")
    assert cid.startswith("i-") and "1.2.3" not in cid
    c = store.exclude(cid, "motion artefact")
    assert c.excluded and c.exclude_reason == "motion artefact"
    assert len(store.cases(include_excluded=False)) == 4
    assert store.counts()["expanders"] == 1
    # relabelling must not silently re-include a case a reviewer excluded
    store.upsert_case(make_case(0, label=0))
    assert store.case(cid).excluded
    assert not store.exclude(cid, "", excluded=False).excluded
    with pytest.raises(DatasetError, match="no case 'i-nope'"):
        store.exclude("i-nope", "x")


def test_label_must_be_binary(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path)
    with pytest.raises(Exception, match="CHECK constraint"):
        store.upsert_case(make_case(1, label=2))


def test_patient_hash_is_the_nodes_keyed_pseudonym(tmp_path: Path) -> None:
    site = Pseudonymizer.ephemeral()  # the node's site key (dicomnode.pseudonym), given by the caller
    store = DatasetStore(tmp_path / "a", pseudonym=site)
    h = store.patient_hash("PAT-0001")
    assert h == store.patient_hash(" PAT-0001 ") == site("PAT-0001") and "0001" not in h
    assert store.patient_hash("PAT-0001", "HOSP-A") == site("PAT-0001", "HOSP-A") != h
    assert h != DatasetStore(tmp_path / "b", pseudonym=Pseudonymizer.ephemeral()).patient_hash("PAT-0001")
    assert not (tmp_path / "a" / "patient-salt").exists(), "one secret: the site key"
    with pytest.raises(DatasetError, match="pseudonymizer"):
        DatasetStore(tmp_path / "a").patient_hash("PAT-0001")


def write_series(d: Path, patient_id: str) -> Path:
    d.mkdir(parents=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(d / "0.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient_id, generate_uid(), generate_uid()
    ds.save_as(d / "0.dcm", enforce_file_format=True)
    return d


def study(uid: str, patient: str, series_dir: Path | None) -> StudyRecord:
    return StudyRecord(study_uid=uid, patient_hash=patient, study_time="2026-03-01T08:30:00", volume_ml=10.0,
                       status="analyzed", model_versions={}, series_dir=str(series_dir) if series_dir else None,
                       mask_path=None, analysed_at="2026-03-01T09:00:00+00:00")


def test_a_store_with_a_legacy_salt_moves_to_the_site_key(tmp_path: Path) -> None:
    root = tmp_path / "training"
    legacy = DatasetStore(root)
    (root / "patient-salt").write_text("0f1e2d3c4b5a69788796a5b4c3d2e1f0\n")

    def old(pid: str) -> str:
        return hash_patient_id(pid, "0f1e2d3c4b5a69788796a5b4c3d2e1f0")

    kept = write_series(tmp_path / "kept", "PAT-1")  # a baseline whose images the store still holds
    legacy.record_study(study("1.2.1", old("PAT-1"), kept))
    legacy.upsert_case(make_case(1, patient_hash=old("PAT-1"), baseline_study_uid="1.2.1", baseline_dir=str(kept)))
    legacy.record_study(study("1.2.2", old("PAT-2"), None))  # its images were pruned
    assert DatasetStore(root).study("1.2.1").patient_hash == old("PAT-1"), "no pseudonymizer: nothing renamed"

    site = Pseudonymizer.ephemeral()
    store = DatasetStore(root, pseudonym=site)
    assert store.study("1.2.1").patient_hash == store.case(case_id_for("import", "1.2.3.1")).patient_hash == site("PAT-1")
    assert store.study("1.2.2").patient_hash == old("PAT-2") and (root / "patient-salt").exists()
    # PAT-2 comes again: the old study is renamed, so it still pairs with the new one
    assert store.patient_hash("PAT-2") == site("PAT-2")
    assert [s.study_uid for s in store.studies_of(site("PAT-2"))] == ["1.2.2"]
    assert not (root / "patient-salt").exists(), "no row needs the legacy salt any more"
    assert DatasetStore(root, pseudonym=site).study("1.2.2").patient_hash == site("PAT-2")


def test_manifest_holds_included_cases_only(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path)
    for i in range(3):
        store.upsert_case(make_case(i, label=i % 2))
    store.exclude(case_id_for("import", "1.2.3.2"), "duplicate")
    rows = list(csv.DictReader(open(store.write_manifest(tmp_path / "m.csv"))))
    got = sorted((r["baseline_study_uid"], r["expansion"]) for r in rows)
    assert got == [("1.2.3.0", "0"), ("1.2.3.1", "1")]
