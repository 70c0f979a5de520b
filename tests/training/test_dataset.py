"""Dataset store: cases, exclusion, pseudonyms, manifest export; `ich-node dataset` commands."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from training.dataset import Case, DatasetError, DatasetStore, case_id_for


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


def test_patient_hash_is_salted_stable_and_not_the_id(tmp_path: Path) -> None:
    a, b = DatasetStore(tmp_path / "a"), DatasetStore(tmp_path / "b")
    h = a.patient_hash("PAT-0001")
    assert h == a.patient_hash(" PAT-0001 ") and "0001" not in h
    assert h != b.patient_hash("PAT-0001"), "another node's salt gives another pseudonym"
    assert (tmp_path / "a" / "patient-salt").stat().st_mode & 0o077 == 0


def test_manifest_holds_included_cases_only(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path)
    for i in range(3):
        store.upsert_case(make_case(i, label=i % 2))
    store.exclude(case_id_for("import", "1.2.3.2"), "duplicate")
    rows = list(csv.DictReader(open(store.write_manifest(tmp_path / "m.csv"))))
    got = sorted((r["baseline_study_uid"], r["expansion"]) for r in rows)
    assert got == [("1.2.3.0", "0"), ("1.2.3.1", "1")]
