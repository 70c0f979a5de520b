"""The receive side against real dcmtk peers: storescu/echoscu → Storage SCP → spool + index.

The SCP runs in-process (``start_scp`` on a free loopback port); dcmtk runs as subprocesses.
Hostile byte streams that storescu would refuse to read are sent with pynetdicom, which sends a
file's data set bytes as they are.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pydicom
import pytest

from dicomnode.config import NodeConfig
from dicomnode.store.index import Index
from dicomnode.scp import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_MISMATCH,
    STATUS_OUT_OF_RESOURCES,
    STATUS_REFUSED_SOP_CLASS,
    start_scp,
)
from dicomnode.store.spool import Spool
from tests.conftest import TEST_JOURNAL_MB, unavailable

pytestmark = pytest.mark.integration


class Node:
    """An in-process Storage SCP on a free loopback port, with its index and spool."""

    def __init__(self, root: Path, **sections) -> None:
        data = {"node": {"ae_title": "ICHNODE", "host": "127.0.0.1", "port": 0, "data_dir": str(root / "var")},
                "storage": {"min_free_bytes": 0, "journal_mb": TEST_JOURNAL_MB}}
        for k, v in sections.items():
            data.setdefault(k, {}).update(v)
        self.config = NodeConfig.model_validate(data)
        self.index = Index(self.config.node.index_path)
        self.spool = Spool(self.config.node.spool_dir, self.config.storage.min_free_bytes)
        self.stored = []
        self.server = start_scp(self.config, self.index, self.spool, on_stored=self.stored.append)
        self.port = self.server.port

    def stop(self) -> None:
        self.server.stop()
        self.index.close()


@pytest.fixture
def node_factory(tmp_path):
    nodes: list[Node] = []

    def make(**sections) -> Node:
        n = Node(tmp_path / f"n{len(nodes)}", **sections)
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.stop()


@pytest.fixture
def node(node_factory) -> Node:
    return node_factory()


def images(ct_data: Path, name: str) -> list[Path]:
    return [p for p in sorted((ct_data / name).iterdir()) if p.name != "DIRFILE"]


def storescu(dcmtk, port, *args, aet="STORESCU", aec="ICHNODE"):
    return dcmtk("storescu", "-aet", aet, "-aec", aec, *args[:-1], "127.0.0.1", port, *([args[-1]] if not isinstance(args[-1], list) else args[-1]))


def echoscu(dcmtk, port, aet="ECHOSCU", aec="ICHNODE", *extra):
    return dcmtk("echoscu", "-aet", aet, "-aec", aec, *extra, "127.0.0.1", port)


def send_raw(port: int, path: Path, aec: str = "ICHNODE", full: bool = False):
    """C-STORE a file's data set bytes exactly as they are in the file (pynetdicom SCU)."""
    from pynetdicom import AE, _config

    meta = pydicom.filereader.read_file_meta_info(path)
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the bytes after the file meta unread
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title=aec)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
        if full:
            return status
        return int(status.Status) if "Status" in status else -1
    finally:
        assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = False


def write_with_meta(path: Path, template: Path, dataset_bytes: bytes, **meta_over) -> Path:
    """A file whose meta comes from ``template`` (optionally altered) and whose data set is raw bytes."""
    ds = pydicom.dcmread(template, stop_before_pixels=True)
    meta = ds.file_meta
    for k, v in meta_over.items():
        setattr(meta, k, v)
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta, enforce_standard=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + buf.getvalue() + dataset_bytes)
    return path


def dataset_bytes(path: Path) -> bytes:
    """The data set bytes of a DICOM file (everything after the file meta group)."""
    import io

    from pydicom.filereader import _read_file_meta_info

    raw = path.read_bytes()
    fp = io.BytesIO(raw)
    fp.seek(132)
    _read_file_meta_info(fp)
    return raw[fp.tell():]


# ------------------------------------------------------------------------------------------


def test_scan_dir_phantom_dicomdir_refused_images_stored(node, dcmtk, ct_data):
    r = storescu(dcmtk, node.port, "-nh", "+sd", str(ct_data / "philips-phantom-5mm"))
    assert r.returncode == 0, r.stderr
    # DIRFILE is a DICOMDIR; storescu labels it with the SOP UIDs of its first record (a real CT
    # image!). It must be refused, and must not overwrite that image.
    assert node.server.stats.failures == {STATUS_DATASET_MISMATCH: 1}
    assert node.index.counts()["instances"] == 28 and node.index.counts()["series"] == 1
    for p in images(ct_data, "philips-phantom-5mm"):
        orig = pydicom.dcmread(p)
        info = node.index.instance(str(orig.SOPInstanceUID))
        stored = pydicom.dcmread(node.spool.abspath(info.path))
        assert stored.SOPInstanceUID == orig.SOPInstanceUID and "DirectoryRecordSequence" not in stored
        assert stored.PixelData == orig.PixelData
        assert str(stored.file_meta.TransferSyntaxUID) == info.transfer_syntax
    assert len(node.stored) == 28 and {s.outcome.value for s in node.stored} == {"new"}
    # no raw UID anywhere in the spool's paths
    assert not [p for p in node.spool.root.rglob("*") if "1.3.46" in p.name]


def test_ge_series_received_and_indexed_whole(node, dcmtk, ct_data):
    files = images(ct_data, "ge-human-head-tilted")
    r = storescu(dcmtk, node.port, [str(p) for p in files])
    assert r.returncode == 0, r.stderr
    [study] = {s.study_uid for s in node.stored}
    [series] = node.index.series_of_study(study)
    assert series.instance_count == len(files) == 28 and series.modality == "CT"
    inst = node.index.instances_of(series.series_uid)
    assert [i.instance_number for i in inst] == sorted(i.instance_number for i in inst)
    assert len({node.spool.abspath(i.path).parent for i in inst}) == 1  # one directory per series
    for i in inst:
        assert pydicom.dcmread(node.spool.abspath(i.path), stop_before_pixels=True).SOPInstanceUID == i.sop_uid


def test_calling_ae_allow_list(node_factory, dcmtk, ct_data):
    n = node_factory(security={"allowed_callers": ["PACS", {"ae_title": "CT1", "host": "10.9.9.9"}]})
    one = str(images(ct_data, "philips-phantom-5mm")[0])
    r = storescu(dcmtk, n.port, one, aet="INTRUDER")
    assert r.returncode != 0 and "Rejected" in r.stderr + r.stdout
    r = storescu(dcmtk, n.port, one, aet="CT1")  # right AE, wrong address
    assert r.returncode != 0
    assert n.index.counts()["instances"] == 0 and n.server.stats.associations_rejected == 2
    assert storescu(dcmtk, n.port, one, aet="PACS").returncode == 0
    assert n.index.counts()["instances"] == 1


def test_called_ae_checked(node, dcmtk):
    r = echoscu(dcmtk, node.port, "ECHOSCU", "NOTTHENODE")
    assert r.returncode != 0 and "Rejected" in r.stderr + r.stdout
    assert echoscu(dcmtk, node.port).returncode == 0


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> dict[str, Path]:
    """A CA, a server cert for 127.0.0.1 and a client cert (plus a rogue client from another CA)."""
    shutil.which("openssl") or unavailable("openssl not installed")
    d.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "rogueca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                 "-days", "2", "-subj", f"/CN=test {ca}", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ca in (("server", "ca"), ("client", "ca"), ("rogue", "rogueca")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext", cwd=d)
    return {p.stem + ("_key" if p.suffix == ".key" else ""): p for p in d.iterdir() if p.suffix in (".pem", ".key")}


def test_mutual_tls(node_factory, dcmtk, ct_data, tmp_path):
    pki = make_pki(tmp_path / "pki")
    n = node_factory(security={"tls": {"enabled": True, "cert": str(pki["server"]), "key": str(pki["server_key"]),
                                       "ca": str(pki["ca"]), "require_client_cert": True}})
    one = str(images(ct_data, "philips-phantom-5mm")[0])
    tls = ["+tls", str(pki["client_key"]), str(pki["client"]), "+cf", str(pki["ca"])]
    r = storescu(dcmtk, n.port, *tls, one)
    assert r.returncode == 0, r.stderr
    assert n.index.counts()["instances"] == 1
    assert echoscu(dcmtk, n.port, "ECHOSCU", "ICHNODE", *tls).returncode == 0
    # plain TCP is refused when TLS is required
    r = dcmtk("echoscu", "-to", "5", "-aec", "ICHNODE", "127.0.0.1", n.port, timeout=30)
    assert r.returncode != 0
    # a client certificate from another CA is refused
    rogue = ["+tls", str(pki["rogue_key"]), str(pki["rogue"]), "+cf", str(pki["ca"])]
    assert echoscu(dcmtk, n.port, "ECHOSCU", "ICHNODE", *rogue).returncode != 0
    assert echoscu(dcmtk, n.port, "ECHOSCU", "ICHNODE", *tls).returncode == 0


def test_hostile_inputs_fail_cleanly(node, dcmtk, ct_data, tmp_path):
    src = images(ct_data, "philips-phantom-5mm")[0]
    body = dataset_bytes(src)
    outside = tmp_path / "outside"
    outside.mkdir()
    before = sorted(p for p in tmp_path.rglob("*") if node.spool.root not in p.parents)

    truncated = write_with_meta(tmp_path / "outside" / "trunc.dcm", src, body[:300])
    assert send_raw(node.port, truncated) == STATUS_CANNOT_UNDERSTAND
    garbage = write_with_meta(tmp_path / "outside" / "garbage.dcm", src, bytes(range(256)) * 64)
    assert send_raw(node.port, garbage) == STATUS_CANNOT_UNDERSTAND

    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = "../../x"
    ds.save_as(tmp_path / "outside" / "trav_study.dcm")
    assert send_raw(node.port, tmp_path / "outside" / "trav_study.dcm") == STATUS_CANNOT_UNDERSTAND
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = "../../x"
    ds.file_meta.MediaStorageSOPInstanceUID = "../../x"
    ds.save_as(tmp_path / "outside" / "trav_sop.dcm")
    r = storescu(dcmtk, node.port, str(tmp_path / "outside" / "trav_sop.dcm"))
    assert "Success" not in r.stderr + r.stdout or r.returncode != 0
    assert send_raw(node.port, tmp_path / "outside" / "trav_sop.dcm") == STATUS_CANNOT_UNDERSTAND

    # a DICOMDIR under its own SOP class gets "SOP class not supported"
    assert send_raw(node.port, ct_data / "philips-phantom-5mm" / "DIRFILE") == STATUS_REFUSED_SOP_CLASS

    assert node.index.counts()["instances"] == 0
    assert not [p for p in node.spool.root.rglob("*") if p.is_file()]
    # nothing new anywhere except the node's own data dir and the inputs we wrote
    data_dir = node.config.node.data_dir.resolve()
    new = [p for p in tmp_path.rglob("*") if p not in before and p.parent != outside
           and p.resolve() != data_dir and data_dir not in p.resolve().parents]
    assert new == []
    assert not list(tmp_path.rglob("x"))
    # the node is still fine
    assert echoscu(dcmtk, node.port).returncode == 0
    assert storescu(dcmtk, node.port, str(src)).returncode == 0


def test_disk_threshold_answers_out_of_resources(node_factory, dcmtk, ct_data):
    n = node_factory(storage={"min_free_bytes": 1 << 60})
    src = images(ct_data, "philips-phantom-5mm")[0]
    assert send_raw(n.port, src) == STATUS_OUT_OF_RESOURCES
    r = storescu(dcmtk, n.port, "-v", str(src))
    out = (r.stderr + r.stdout).lower().replace(" ", "")
    assert r.returncode != 0 and ("outofresources" in out or "a700" in out), out
    assert n.index.counts()["instances"] == 0
    assert echoscu(dcmtk, n.port).returncode == 0


def test_idempotent_resend_and_changed_instance(node, dcmtk, ct_data, tmp_path):
    folder = str(ct_data / "philips-phantom-5mm")
    assert storescu(dcmtk, node.port, "-nh", "+sd", folder).returncode == 0
    [series] = node.index.series_ready(0)
    mtimes = {p: p.stat().st_mtime_ns for p in node.spool.root.rglob("*.dcm")}
    assert node.index.claim_series(series.series_uid, series.last_received_at) == 1
    assert storescu(dcmtk, node.port, "-nh", "+sd", folder).returncode == 0
    assert node.server.stats.duplicates == 28 and node.index.counts()["instances"] == 28
    assert {p: p.stat().st_mtime_ns for p in node.spool.root.rglob("*.dcm")} == mtimes
    assert node.index.series_ready(0) == []  # an identical re-send does not trigger a re-analysis
    # same SOP Instance UID, different bytes: replaced, series flagged changed
    src = images(ct_data, "philips-phantom-5mm")[3]
    ds = pydicom.dcmread(src)
    ds.WindowCenter = 55
    ds.save_as(tmp_path / "changed.dcm")
    assert storescu(dcmtk, node.port, str(tmp_path / "changed.dcm")).returncode == 0
    assert node.stored[-1].outcome.value == "replaced"
    assert pydicom.dcmread(node.stored[-1].path).WindowCenter == 55
    [again] = node.index.series_ready(0)
    assert again.series_uid == series.series_uid and again.instance_count == 28


# -- the fast C-STORE path (dicomnode.fast_store) -----------------------------------------------


@pytest.fixture
def fast_count(monkeypatch):
    """How many C-STOREs the fast path answered (vs pynetdicom's EVT_C_STORE path)."""
    from dicomnode.receive import fast_store

    calls = []
    original = fast_store.FastStore._finish

    def finish(self, dul):
        calls.append(1)
        return original(self, dul)

    monkeypatch.setattr(fast_store.FastStore, "_finish", finish)
    return calls


def test_fast_path_answers_stores_and_failures_with_their_comment(node, ct_data, tmp_path, fast_count):
    from pynetdicom.dsutils import encode

    src = images(ct_data, "philips-phantom-5mm")[0]
    assert send_raw(node.port, src) == 0x0000
    bad = pydicom.dcmread(src)
    bad.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"             # the data set's SOP class ≠ the command's
    body = encode(bad, bad.file_meta.TransferSyntaxUID.is_implicit_VR, True)
    status = send_raw(node.port, write_with_meta(tmp_path / "mismatch.dcm", src, body), full=True)
    assert status.Status == STATUS_DATASET_MISMATCH and "SOPClassUID" in status.ErrorComment
    assert len(fast_count) == 2 and node.index.counts()["instances"] == 1


def test_fast_path_reassembles_small_pdus_byte_for_byte(node_factory, dcmtk, ct_data, fast_count):
    n = node_factory(node={"max_pdu": 4096})                  # storescu then sends ≈ 130 PDUs per slice
    src = images(ct_data, "philips-phantom-thin")[:3]
    assert storescu(dcmtk, n.port, [str(p) for p in src]).returncode == 0
    assert len(fast_count) == 3
    for p in src:
        sop = pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
        [stored] = [item for item in n.stored if item.sop_uid == sop]
        assert dataset_bytes(Path(stored.path)) == dataset_bytes(p)


def test_pynetdicom_path_still_stores_when_fast_store_is_off(node_factory, dcmtk, ct_data, fast_count):
    n = node_factory(node={"fast_store": False})
    assert storescu(dcmtk, n.port, [str(p) for p in images(ct_data, "philips-phantom-5mm")[:3]]).returncode == 0
    assert fast_count == [] and n.index.counts()["instances"] == 3


def test_fragments_out_of_order_abort_and_store_nothing(node, dcmtk, ct_data):
    """A C-STORE-RQ taken by the fast path, one data fragment, then another command before the last
    fragment: a protocol violation, so the node aborts the association and stores nothing."""
    import io
    import struct
    import time

    from pynetdicom import AE
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import encode
    from pynetdicom.sop_class import Verification

    from dicomnode.receive.fast_store import store_response

    src = images(ct_data, "philips-phantom-5mm")[0]
    ds = pydicom.dcmread(src)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(ds.SOPClassUID, "1.2.840.10008.1.2.1")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="ICHNODE")
    assert assoc.is_established
    ctx = [c for c in assoc.accepted_contexts if c.abstract_syntax == ds.SOPClassUID][0].context_id
    req = C_STORE()
    req.MessageID, req.AffectedSOPClassUID, req.AffectedSOPInstanceUID, req.Priority = 3, ds.SOPClassUID, ds.SOPInstanceUID, 2
    req.DataSet = io.BytesIO(b"")
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    raw_cmd = encode(msg.command_set, True, True)
    echo_cmd = bytes(store_response(ctx, 4, ds.SOPClassUID, ds.SOPInstanceUID, 0))[12:]  # any command set

    def pdata(context_id: int, header: int, value: bytes) -> bytes:
        pdv = struct.pack(">IBB", len(value) + 2, context_id, header) + value
        return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv

    sock = assoc.dul.socket
    sock.send(pdata(ctx, 0x03, raw_cmd))                       # C-STORE-RQ command, complete
    sock.send(pdata(ctx, 0x00, encode(ds, False, True)[:1000]))  # first data fragment, not the last
    sock.send(pdata(ctx, 0x03, echo_cmd))                      # a command again: out of order
    deadline = time.monotonic() + 10
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted
    assert node.index.counts()["instances"] == 0
    assert echoscu(dcmtk, node.port).returncode == 0


def test_without_journal_every_file_is_fsynced_before_the_answer(node_factory, dcmtk, ct_data, monkeypatch):
    """storage.journal_mb = 0: the issue's literal order (write → fsync → rename → fsync dir → index → answer)."""
    import os

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    n = node_factory(storage={"journal_mb": 0})
    assert storescu(dcmtk, n.port, [str(p) for p in images(ct_data, "philips-phantom-5mm")[:3]]).returncode == 0
    assert n.index.counts()["instances"] == 3 and n.server.receiver.journal is None
    assert not (n.config.node.data_dir / "journal").exists()
    assert len(synced) >= 6  # the file and its directory, per instance


@pytest.mark.parametrize("journal_write", ["stream", "dataset"])
def test_each_journal_write_mode_journals_every_instance_its_way(node_factory, dcmtk, ct_data, journal_write):
    """storage.journal_write: "stream" commits each data set from the fragments journaled as they came,
    "dataset" appends it whole; both store every byte (a crash replay of each: tests/dicomnode/store)."""
    n = node_factory(storage={"journal_write": journal_write})
    files = images(ct_data, "philips-phantom-5mm")[:4]
    assert storescu(dcmtk, n.port, [str(p) for p in files]).returncode == 0
    stats = n.server.receiver.journal.stats
    assert (stats["streamed"], stats["journaled"]) == ((4, 0) if journal_write == "stream" else (0, 4))
    assert stats["streams_abandoned"] == 0
    for p in files:
        ds = pydicom.dcmread(p)
        info = n.index.instance(ds.SOPInstanceUID)
        assert n.spool.abspath(info.path).read_bytes().endswith(p.read_bytes()[-4096:])


def test_kill_9_right_after_answers_loses_no_acknowledged_instance(tmp_path, ct_data, free_port):
    """The node answers once a data set is in its journal; the spool file and index row follow right
    after. A ``kill -9`` inside that window must lose nothing the peer was told is stored: the restarted
    node replays the journal before it listens. To land in that window, the killed nodes run
    with a spool whose writes first sleep 100 ms (a slow disk; fault injection in the test only)."""
    import io
    import os
    import re
    import signal
    import sys

    from pynetdicom import AE

    from dicomnode.store.digest import matches

    data_dir, port = tmp_path / "var", free_port()

    slow_disk = ("import runpy, sys, time; import dicomnode.store.spool as s; write = s.Spool.write; "
                 "s.Spool.write = lambda self, *a, **k: (time.sleep(0.1), write(self, *a, **k))[1]; "
                 "sys.argv[0] = 'dicomnode.scp'; runpy.run_module('dicomnode.scp', run_name='__main__')")

    def start(slow: bool = False) -> subprocess.Popen:
        entry = ["-c", slow_disk] if slow else ["-m", "dicomnode.scp"]
        proc = subprocess.Popen([sys.executable, *entry, "--data-dir", str(data_dir), "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "ICH_NODE__LOGGING__LEVEL": "WARNING"})
        assert proc.stdout.readline().startswith("listening"), proc.stderr.read()
        return proc

    files = images(ct_data, "philips-phantom-thin")[:60]
    originals = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, files)}
    ae = AE(ae_title="CRASHTEST")
    for sop_class in {str(ds.SOPClassUID) for ds in originals.values()}:
        ae.add_requested_context(sop_class, "1.2.840.10008.1.2.1")
    acknowledged: list[str] = []
    replayed = 0

    def replays(log: str) -> int:
        found = re.search(r"journal replay: (\d+) instance\(s\) written again", log)
        return int(found.group(1)) if found else 0

    for batch, kill_after in ((files[:20], 7), (files[20:40], 13), (files[40:], 19)):
        proc = start(slow=True)
        assoc = ae.associate("127.0.0.1", port, ae_title="ICHNODE")
        assert assoc.is_established
        for k, f in enumerate(batch, 1):
            uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
            status = assoc.send_c_store(originals[uid])
            assert status and status.Status == 0
            acknowledged.append(uid)
            if k == kill_after:
                proc.send_signal(signal.SIGKILL)  # right after the answer: the node is in its slow spool write
                break
        proc.wait(10)
        assoc.abort()
        replayed += replays(proc.stderr.read())
    proc = start()  # replays the journal, then listens
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    # each start stores again what the kill before it caught in its window (all three, unless the host
    # stalled this test for 100 ms): at least one, or this test did not test the replay
    assert 1 <= replayed + replays(proc.stderr.read()) <= 3
    assert len(acknowledged) == 7 + 13 + 19
    index, spool = Index(data_dir / "index.sqlite3"), Spool(data_dir / "spool")
    try:
        for uid in acknowledged:
            info = index.instance(uid)
            assert info is not None, f"acknowledged instance {uid} lost"
            raw = spool.abspath(info.path).read_bytes()
            fp = io.BytesIO(raw)
            fp.seek(132)
            pydicom.filereader._read_file_meta_info(fp)
            assert info.size == len(raw) and matches(info.digest, [raw[fp.tell():]])
            stored = pydicom.dcmread(io.BytesIO(raw))
            assert stored.SOPInstanceUID == uid and stored.PixelData == originals[uid].PixelData
    finally:
        index.close()


# -- what any TCP client can make the node do (issue 13; dicomnode.receive.guard / admission) -------------


def _abort_and_close(sock, timeout: float = 10.0) -> bytes:
    """Everything the node sends until it closes the connection."""
    import socket as _socket

    sock.settimeout(timeout)
    got = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except (ConnectionResetError, _socket.timeout):
            break
        if not chunk:
            break
        got += chunk
    return got


def test_a_huge_declared_pdu_costs_no_memory_and_is_aborted(node):
    """Four clients each declare a 1 GiB A-ASSOCIATE-RQ and wait: each gets an A-ABORT, the node's peak
    memory does not move (it grew by 4 GiB when the reader allocated from the declared length)."""
    import resource
    import socket as _socket

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    clients = []
    for _ in range(4):
        s = _socket.create_connection(("127.0.0.1", node.port))
        s.sendall(struct.pack(">BBL", 0x01, 0, 1 << 30) + b"\x00\x01\x00\x00")
        clients.append(s)
    answers = [_abort_and_close(s) for s in clients]
    for s in clients:
        s.close()
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert all(a[:1] == b"\x07" for a in answers), answers  # A-ABORT
    assert grown_mb < 64
    assert echoscu_ok(node.port)  # and the node still answers


def echoscu_ok(port: int) -> bool:
    from pynetdicom import AE

    ae = AE(ae_title="ECHO")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="ICHNODE")
    try:
        return assoc.is_established and assoc.send_c_echo().Status == 0
    finally:
        if assoc.is_established:
            assoc.release()


def test_a_p_data_pdu_longer_than_announced_is_aborted(node, ct_data):
    """An established association that sends a P-DATA-TF over the node's maximum PDU length is aborted."""
    from pynetdicom import AE

    ae = AE(ae_title="BIGPDU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    ae.maximum_pdu_size = 0
    assoc = ae.associate("127.0.0.1", node.port, ae_title="ICHNODE")
    assert assoc.is_established
    sock = assoc.dul.socket.socket
    too_long = node.config.node.max_pdu + 1
    sock.sendall(struct.pack(">BBL", 0x04, 0, too_long))
    import time as _time

    deadline = _time.monotonic() + 10
    while assoc.is_established and _time.monotonic() < deadline:
        _time.sleep(0.05)
    assert assoc.is_aborted
    assert node.index.counts()["instances"] == 0


def test_a_peer_that_stops_half_way_through_a_pdu_is_dropped_after_the_network_timeout(node_factory):
    import socket as _socket
    import time as _time

    n = node_factory(node={"network_timeout_s": 1})
    s = _socket.create_connection(("127.0.0.1", n.port))
    s.sendall(b"\x01\x00\x00")  # half a PDU header, then nothing
    t0 = _time.monotonic()
    _abort_and_close(s, timeout=15)
    s.close()
    assert _time.monotonic() - t0 < 8


def test_associations_over_the_per_peer_limit_are_refused_transiently(node_factory):
    from pynetdicom import AE

    n = node_factory(node={"max_associations_per_peer": 2})
    ae = AE(ae_title="MANY")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = [ae.associate("127.0.0.1", n.port, ae_title="ICHNODE") for _ in range(2)]
    assert all(a.is_established for a in held)
    third = ae.associate("127.0.0.1", n.port, ae_title="ICHNODE")
    assert third.is_rejected and not third.is_established
    for a in held:
        a.release()
    import time as _time

    _time.sleep(0.5)
    again = ae.associate("127.0.0.1", n.port, ae_title="ICHNODE")
    assert again.is_established
    again.release()


def _big_slice(ct_data: Path, tmp_path: Path, side: int = 1024) -> Path:
    """A CT slice with a 2 MB pixel matrix (random), as a file."""
    import numpy as np

    ds = pydicom.dcmread(images(ct_data, "philips-phantom-5mm")[0])
    ds.Rows = ds.Columns = side
    ds.PixelData = np.random.default_rng(1).integers(0, 2000, (side, side), dtype=np.uint16).tobytes()
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.1427.99.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_data_set_over_the_memory_limit_is_streamed_to_disk_and_stored_intact(node_factory, ct_data, tmp_path,
                                                                              fast_count):
    n = node_factory(node={"stream_over_mb": 1, "max_pdu": 65536})
    streams = []
    original = n.server.receiver.open_stream
    n.server.receiver.open_stream = lambda *a: streams.append(1) or original(*a)
    src = _big_slice(ct_data, tmp_path)
    assert send_raw(n.port, src) == 0x0000
    info = n.index.instance("1.2.826.0.1.3680043.10.1427.99.1")
    stored = n.spool.abspath(info.path).read_bytes()
    assert streams == [1] and len(fast_count) == 1
    assert dataset_bytes(n.spool.abspath(info.path)) == dataset_bytes(src) and info.size == len(stored)
    assert n.server.receiver._intact(info)
    assert send_raw(n.port, src) == 0x0000 and n.stored[-1].outcome.value == "duplicate"  # idempotent re-send
    assert not list(n.spool.root.rglob("*.partial"))


def test_a_streamed_data_set_with_a_bad_header_is_refused_and_leaves_nothing(node_factory, ct_data, tmp_path):
    n = node_factory(node={"stream_over_mb": 1, "max_pdu": 65536})
    src = _big_slice(ct_data, tmp_path)
    ds = pydicom.dcmread(src)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # header disagrees with the command
    from pynetdicom.dsutils import encode

    body = encode(ds, False, True)
    status = send_raw(n.port, write_with_meta(tmp_path / "bad.dcm", src, body), full=True)
    assert status.Status == STATUS_DATASET_MISMATCH
    assert n.index.counts()["instances"] == 0 and not list(n.spool.root.rglob("*.partial"))


def test_with_a_changed_pynetdicom_the_node_runs_stock_and_still_stores(node_factory, dcmtk, ct_data, monkeypatch,
                                                                       caplog, fast_count):
    """The fallback: a fingerprint mismatch turns the fast reader off; C-STOREs go through pynetdicom."""
    import logging

    from dicomnode.receive import fastpath

    monkeypatch.setitem(fastpath.FINGERPRINTS, "dul.DULServiceProvider._decode_pdu", "f" * 16)
    monkeypatch.setattr(fastpath.available, "_warned", False, raising=False)
    fastpath.mismatches.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            n = node_factory()
            r = storescu(dcmtk, n.port, "-nh", images(ct_data, "philips-phantom-5mm")[:5])
    finally:
        fastpath.mismatches.cache_clear()
    assert r.returncode == 0, r.stderr
    assert n.index.counts()["instances"] == 5 and fast_count == []
    assert "running stock pynetdicom" in caplog.text


def test_handlers_bound_to_bypassed_events_fire_for_every_c_store(node, dcmtk, ct_data, fast_count):
    """An audit handler on EVT_DIMSE_RECV sees every C-STORE-RQ: the fast path steps aside for it."""
    from pynetdicom import evt

    seen = []
    node.server.server.bind(evt.EVT_DIMSE_RECV, lambda event: seen.append(type(event.message).__name__))
    r = storescu(dcmtk, node.port, "-nh", images(ct_data, "philips-phantom-5mm")[:4])
    assert r.returncode == 0, r.stderr
    assert seen.count("C_STORE_RQ") == 4 and fast_count == []
    assert node.index.counts()["instances"] == 4


def test_several_receiver_processes_share_the_port_and_their_counters(node_factory, ct_data):
    """node.receivers = 2: a child process binds the same port (SO_REUSEPORT) with its own journal; eight
    concurrent associations all land in the one index; the node's totals add the child's counters up."""
    import time as _time
    from concurrent.futures import ThreadPoolExecutor

    from dicomnode.receive import processes

    n = node_factory(node={"receivers": 2})
    assert len(n.server.children) == 1 and n.server.children[0].poll() is None
    files = images(ct_data, "philips-phantom-5mm")[:24]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda k: [send_raw(n.port, f) for f in files[k::8]], range(8)))
    assert all(s == 0 for batch in statuses for s in batch)
    assert n.index.counts()["instances"] == 24
    journal_dir = Path(n.config.node.data_dir) / "journal"
    assert (journal_dir / "receive.wal").is_file() and (journal_dir / "receive-1.wal").is_file()
    deadline = _time.monotonic() + 10
    while n.server.totals()["stored"] < 24 and _time.monotonic() < deadline:
        _time.sleep(0.2)
    assert n.server.totals()["stored"] == 24
    child_share = sum(s.get("stored", 0) for s in processes.children_stats(n.config.node.data_dir))
    assert n.server.stats.stored + child_share == 24
    child = n.server.children[0]
    n.server.stop()
    n.server.stop = lambda: None  # stopped here; the fixture's stop must not run it twice
    assert child.poll() is not None
