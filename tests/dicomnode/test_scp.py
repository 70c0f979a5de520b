"""Receiver (the SCP minus the network): store order, statuses, listeners, reconcile after loss."""

from __future__ import annotations

import io

import pydicom
import pytest

from dicomnode.store.index import Index, StoreOutcome
from dicomnode.scp import (
    MEDIA_STORAGE_DIRECTORY,
    STATUS_DATASET_MISMATCH,
    STATUS_OUT_OF_RESOURCES,
    STATUS_REFUSED_SOP_CLASS,
    Receiver,
    StoreRefused,
    file_meta_bytes,
    reconcile,
)
from dicomnode.store.spool import Spool
from tests.conftest import small_config


def dataset_of(path):
    raw = path.read_bytes()
    fp = io.BytesIO(raw)
    fp.seek(132)
    meta = pydicom.filereader._read_file_meta_info(fp)
    return meta, raw[fp.tell():]


@pytest.fixture
def phantom(ct_data):
    return [p for p in sorted((ct_data / "philips-phantom-5mm").iterdir()) if p.name != "DIRFILE"][:4]


def make(tmp_path, min_free=0):
    cfg = small_config()
    ix = Index(tmp_path / "index.sqlite3")
    sp = Spool(tmp_path / "spool", min_free)
    return Receiver(cfg, ix, sp), ix, sp


def store(rx, path):
    meta, body = dataset_of(path)
    return rx.store(str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID),
                    str(meta.TransferSyntaxUID), body, "PACS")


def test_store_then_duplicate_and_listener_errors_do_not_fail(tmp_path, phantom):
    rx, ix, sp = make(tmp_path)
    seen = []
    rx.on_stored(seen.append)
    rx.on_stored(lambda item: 1 / 0)  # a broken listener is logged, the store still succeeds
    item = store(rx, phantom[0])
    assert item.outcome is StoreOutcome.NEW and item.path.is_file()
    ds = pydicom.dcmread(item.path)
    assert ds.file_meta.SourceApplicationEntityTitle == "PACS"
    assert ds.PixelData == pydicom.dcmread(phantom[0]).PixelData
    assert store(rx, phantom[0]).outcome is StoreOutcome.DUPLICATE
    assert [s.outcome for s in seen] == [StoreOutcome.NEW, StoreOutcome.DUPLICATE]
    assert (rx.stats.stored, rx.stats.duplicates) == (1, 1)


def test_refusals(tmp_path, phantom):
    rx, ix, sp = make(tmp_path)
    meta, body = dataset_of(phantom[0])
    with pytest.raises(StoreRefused) as ei:
        rx.store(MEDIA_STORAGE_DIRECTORY, "1.2.3", str(meta.TransferSyntaxUID), body)
    assert ei.value.status == STATUS_REFUSED_SOP_CLASS
    with pytest.raises(StoreRefused) as ei:  # command and data set disagree
        rx.store(str(meta.MediaStorageSOPClassUID), "1.2.3.999", str(meta.TransferSyntaxUID), body)
    assert ei.value.status == STATUS_DATASET_MISMATCH
    full, _, _ = make(tmp_path / "full", min_free=1 << 62)
    with pytest.raises(StoreRefused) as ei:
        store(full, phantom[0])
    assert ei.value.status == STATUS_OUT_OF_RESOURCES
    assert ix.counts()["instances"] == 0


def test_reconcile_restores_a_lost_index(tmp_path, phantom):
    rx, ix, sp = make(tmp_path)
    for p in phantom:
        store(rx, p)
    before = {i.sop_uid: i.digest for s in ix.series_ready(0) for i in ix.instances_of(s.series_uid)}
    ix.close()
    for f in tmp_path.glob("index.sqlite3*"):
        f.unlink()
    ix2 = Index(tmp_path / "index.sqlite3")
    assert reconcile(ix2, sp, rx.pseudonym) == 4 and reconcile(ix2, sp, rx.pseudonym) == 0
    after = {i.sop_uid: i.digest for s in ix2.series_ready(0) for i in ix2.instances_of(s.series_uid)}
    assert after == before
    assert {s.patient_hash for s in ix2.series_ready(0)} == {rx.pseudonym(pydicom.dcmread(phantom[0]).PatientID)}


def test_file_meta_is_valid_for_any_uid_length():
    for uid in ("1.2", "1.2.3", "1." + "2" * 62):
        raw = file_meta_bytes("1.2.840.10008.5.1.4.1.1.2", uid, "1.2.840.10008.1.2", "")
        fp = io.BytesIO(raw)
        fp.seek(132)
        meta = pydicom.filereader._read_file_meta_info(fp)
        assert meta.MediaStorageSOPInstanceUID == uid and fp.tell() == len(raw)
        assert meta.FileMetaInformationGroupLength == len(raw) - 132 - 12


def test_the_scp_keeps_element_values_out_of_the_log_but_pydicom_still_validates(tmp_path, phantom, caplog):
    """pydicom warns about invalid values quoting them (a patient name, say); in a node that does not log
    PHI the warning reaches the log without the value, and pydicom's own validation is left as it was."""
    import logging
    import warnings

    from pydicom import config as pydicom_config

    from dicomnode.scp import start_scp

    mode = pydicom_config.settings.reading_validation_mode
    cfg = small_config()
    cfg.node.data_dir, cfg.node.port = str(tmp_path / "node"), 0
    ds = pydicom.dcmread(phantom[0])
    ds.ReferencedSOPInstanceUID = "1.2.Doe^Jane"  # not a UID: pydicom warns with the value
    path = tmp_path / "odd.dcm"
    ds.save_as(path)
    caplog.set_level(logging.WARNING)
    caplog.clear()  # setting the value above warned already
    server = start_scp(cfg, Index(tmp_path / "node" / "index.sqlite3"), Spool(tmp_path / "node" / "spool"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            pydicom.dcmread(path).ReferencedSOPInstanceUID
    finally:
        server.stop()
        logging.captureWarnings(False)
    assert pydicom_config.settings.reading_validation_mode == mode
    assert "Invalid value for VR UI: '<withheld>'" in caplog.text  # the warning happened and was logged...
    assert "Doe^Jane" not in caplog.text  # ...without the value
