"""Keyed patient pseudonyms: the site key, the receive path, index migration (schema 2 → 3), the dataset store."""

from __future__ import annotations

import base64
import hashlib
import logging
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicomnode.config import NodeConfig
from dicomnode.store.index import Index
from dicomnode.pseudonym import PSEUDONYM_HEX, Pseudonymizer, SiteKeyError, site_key_path
from dicomnode.scp import Receiver
from dicomnode.store.spool import Spool
from tests.conftest import small_config

MRN = "00012345"


def old_patient_hash(patient_id: object, issuer: object = None) -> str:
    """What index schema 2 stored (dicomnode.uids.patient_hash before schema 3): unkeyed, 16 hex digits."""
    text = "" if patient_id is None else str(patient_id).strip()
    iss = "" if issuer is None else str(issuer).strip()
    return hashlib.sha256(f"ich-node|{iss}|{text}".encode("utf-8", "replace")).hexdigest()[:16]


def ct_instance(patient_id: str, study_uid: str | None = None, issuer: str | None = None) -> tuple[str, bytes, str]:
    """(SOP Instance UID, explicit-LE data set bytes, study UID) of a tiny CT image."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyDate, ds.StudyTime, ds.Modality = "20260301", "083000", "CT"
    ds.PatientName, ds.PatientID = "Doe^Jane", patient_id
    if issuer:
        ds.IssuerOfPatientID = issuer
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.InstanceNumber = 1
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return ds.SOPInstanceUID, buf.getvalue(), ds.StudyInstanceUID


def receive(rx: Receiver, patient_id: str, study_uid: str | None = None, issuer: str | None = None):
    sop_uid, data, study_uid = ct_instance(patient_id, study_uid, issuer)
    return rx.store(CTImageStorage, sop_uid, ExplicitVRLittleEndian, data, "PACS")


def patients(index_path: Path) -> set[str]:
    with sqlite3.connect(index_path) as db:
        return {r[0] for r in db.execute("SELECT patient_hash FROM patients")}


# -- the site key ------------------------------------------------------------------------------------


def test_key_is_created_once_private_and_reused_across_restarts(tmp_path):
    path = site_key_path(tmp_path / "var")
    first = Pseudonymizer.load_or_create(path)
    key = path.read_bytes()
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    again = Pseudonymizer.for_data_dir(tmp_path / "var")  # the next start
    assert path.read_bytes() == key and again(MRN) == first(MRN)
    assert [p.name for p in path.parent.iterdir()] == ["site.key"]  # no temporary file left behind


def test_first_starts_racing_agree_on_one_key(tmp_path):
    path = site_key_path(tmp_path)
    start, names = threading.Barrier(8), []

    def load() -> None:
        start.wait()
        names.append(Pseudonymizer.load_or_create(path)(MRN))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(names) == 8 and set(names) == {Pseudonymizer.load_or_create(path)(MRN)}


def test_a_damaged_key_is_refused_never_replaced(tmp_path):
    path = site_key_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"short")
    with pytest.raises(SiteKeyError, match="5 bytes"):
        Pseudonymizer.load_or_create(path)
    assert path.read_bytes() == b"short"


def test_a_key_readable_by_others_is_made_private(tmp_path, caplog):
    path = site_key_path(tmp_path)
    name = Pseudonymizer.load_or_create(path)(MRN)
    path.chmod(0o644)
    assert Pseudonymizer.load_or_create(path)(MRN) == name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and "readable by others" in caplog.text


def test_pseudonym_is_keyed_not_a_hash_of_the_mrn():
    a, b = Pseudonymizer.ephemeral(), Pseudonymizer.ephemeral()
    name = a(MRN)
    assert len(name) == PSEUDONYM_HEX >= 16 and int(name, 16) >= 0
    assert name == a(f" {MRN} ") and MRN not in name
    assert name != b(MRN), "another site's key gives another pseudonym"
    for plain in (hashlib.sha256(MRN.encode()).hexdigest(), old_patient_hash(MRN),
                  hashlib.sha256(f"ich-node||{MRN}".encode()).hexdigest()):
        assert not plain.startswith(name) and not name.startswith(plain[:16])
    assert a(MRN, "HOSP-A") != name != a(MRN, "HOSP-B") != a(MRN, "HOSP-A")
    assert a("b|c", "a") != a("c", "a|b")  # issuer and ID cannot be shifted into each other
    assert a.unlinkable(old_patient_hash(MRN)) not in (name, old_patient_hash(MRN))
    assert "Pseudonymizer(ephemeral key)" == repr(a)


# -- receive path and logs ---------------------------------------------------------------------------


def test_received_instance_is_indexed_and_logged_under_the_site_keys_pseudonym(tmp_path, caplog):
    from dicomnode.scp import start_scp

    caplog.set_level(logging.DEBUG)
    cfg = small_config()
    cfg.node.data_dir, cfg.node.port, cfg.node.host = tmp_path / "var", 0, "127.0.0.1"
    index = Index(tmp_path / "var" / "index.sqlite3")
    server = start_scp(cfg, index, Spool(tmp_path / "var" / "spool"))  # creates the site key
    try:
        item = receive(server.receiver, MRN, issuer="HOSP-A")
    finally:
        server.stop()
        index.close()
    site = Pseudonymizer.for_data_dir(tmp_path / "var")
    assert item.patient_hash == site(MRN, "HOSP-A")
    assert patients(tmp_path / "var" / "index.sqlite3") == {site(MRN, "HOSP-A")}
    assert f"patient={site(MRN, 'HOSP-A')}" in caplog.text and MRN not in caplog.text
    key = site_key_path(tmp_path / "var").read_bytes()
    for shown in (key.hex(), key.hex().upper(), base64.b64encode(key).decode(), key.decode("latin-1"),
                  repr(key), str(list(key))):
        assert shown not in caplog.text
    assert key.hex() not in repr(site)


# -- index schema 2 → 3 ----------------------------------------------------------------------------------


def schema_2_index(data: Path) -> tuple[Index, Spool]:
    """An index as a schema-2 node left it: unkeyed hashes; patient C's spool files are gone."""
    index, spool = Index(data / "index.sqlite3"), Spool(data / "spool")
    old = Receiver(NodeConfig(), index, spool, pseudonym=old_patient_hash)
    study = generate_uid()
    receive(old, "A-1", study)
    receive(old, "A-1", study)
    receive(old, "B-2", issuer="HOSP-B")
    gone = receive(old, "C-3")
    gone.path.unlink()
    index.close()
    with sqlite3.connect(data / "index.sqlite3") as db:
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    return Index(data / "index.sqlite3"), spool


def test_migration_rekeys_a_schema_2_index_from_its_spool(tmp_path, caplog):
    data = tmp_path / "var"
    index, spool = schema_2_index(data)
    assert index.schema_version == 2
    site = Pseudonymizer.for_data_dir(data)
    assert index.migrate_pseudonyms(spool.root, site) == {"rekeyed": 2, "unlinked": 1}
    names = patients(data / "index.sqlite3")
    assert names == {site("A-1"), site("B-2", "HOSP-B"), site.unlinkable(old_patient_hash("C-3"))}
    assert not names & {old_patient_hash("A-1"), old_patient_hash("B-2", "HOSP-B"), old_patient_hash("C-3")}
    assert "A-1" not in caplog.text and "unlinkable" in caplog.text
    assert index.migrate_pseudonyms(spool.root, site) == {} and index.schema_version == 3
    # the patient's next study joins the migrated patient
    receive(Receiver(NodeConfig(), index, spool, pseudonym=site), "A-1")
    assert index.counts()["patients"] == 3 and patients(data / "index.sqlite3") == names
    index.close()
    assert Index(data / "index.sqlite3").schema_version == 3


def test_migration_merges_a_patient_named_both_ways(tmp_path):
    """An older node wrote to the index after this one (downgrade and back): both rows become one."""
    site = Pseudonymizer.ephemeral()
    index, spool = Index(tmp_path / "index.sqlite3"), Spool(tmp_path / "spool")
    receive(Receiver(NodeConfig(), index, spool, pseudonym=site), "A-1")
    receive(Receiver(NodeConfig(), index, spool, pseudonym=old_patient_hash), "A-1")
    index.close()
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    index = Index(tmp_path / "index.sqlite3")
    assert index.migrate_pseudonyms(spool.root, site) == {"rekeyed": 1, "unlinked": 0}
    assert patients(tmp_path / "index.sqlite3") == {site("A-1")}
    assert index.counts()["studies"] == 2


def test_a_new_index_starts_at_schema_3(tmp_path):
    index = Index(tmp_path / "index.sqlite3")
    assert index.schema_version == 3 and index.migrate_pseudonyms(tmp_path, Pseudonymizer.ephemeral()) == {}


# -- one key everywhere: the node's dataset store -------------------------------------------------------------


def test_the_nodes_dataset_store_names_patients_with_the_index_pseudonym(tmp_path, monkeypatch):
    """Node start loads the site key (and migrates the index); its dataset hook pairs with the same name."""
    from dicomnode.queue.base import Job, JobState
    from dicomnode.select import Decision
    from dicomnode.service import Node
    from pipeline.result import AnalysisResult, Status
    from training.dataset import DatasetStore

    data = tmp_path / "var"
    schema_2_index(data)[0].close()
    cfg = small_config()
    cfg.node.data_dir, cfg.metrics.enabled, cfg.storage.min_free_bytes = data, False, 0
    (tmp_path / "idle_analyzer.py").write_text("class Idle:\n    def __init__(self, models):\n        pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg.worker.analyzer = "idle_analyzer:Idle"  # no models loaded: the node starts and stops in a moment
    node = Node(cfg, decide=lambda study_uid, series: Decision("ignore", reason="test"), receiver=None).start()
    try:
        assert node.pseudonymizer("A-1") == Pseudonymizer.for_data_dir(data)("A-1")
        assert node.index.schema_version == 3 and node.pseudonymizer("A-1") in patients(data / "index.sqlite3")
        item = receive(Receiver(cfg, node.index, node.spool, pseudonym=node.pseudonymizer), "A-1")
        assert node.index.series(item.series_uid).patient_hash == node.pseudonymizer("A-1")
        out = tmp_path / "result"
        out.mkdir()
        AnalysisResult(status=Status.ANALYZED, volume_ml=12.0).write(out)
        node._dataset_hook(Job(id="j1", key="k", payload={"files": [str(item.path)]}, state=JobState.ENCODED,
                               result_dir=str(out)))
    finally:
        node.stop()
    store = DatasetStore.for_data_dir(data)
    assert store.study(item.study_uid).patient_hash == item.patient_hash == node.pseudonymizer("A-1")
    assert not (data / "training" / "patient-salt").exists()
