"""Senders against real peers on loopback: dcmtk storescp (plain and mutual TLS) and an HTTP STOW-RS endpoint."""

from __future__ import annotations

import email.parser
import email.policy
import http.server
import io
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest

from dicomnode.config import Destination as DestinationConfig
from dicomnode.config import TLSClient
from dicomnode.deliver import DeliveryError, build
from dicomnode.deliver.dispatch import Dispatcher, Sender, result_objects
from dicomnode.deliver.ledger import Ledger
from dicomnode.deliver.policy import RetryPolicy
from dicomnode.queue import JobState
from dicomnode.queue.base import Backoff
from dicomnode.queue.sqlite import SQLiteQueue
from tests.conftest import StoreSCP, free_port

@pytest.fixture
def scp(tmp_path):
    peer = StoreSCP(tmp_path).start()
    yield peer
    peer.stop()


def dimse(port: int, **kw) -> DestinationConfig:
    return DestinationConfig(name=kw.pop("name", "pacs"), type="dimse", ae_title="DEST", host="127.0.0.1", port=port, **kw)


def test_result_objects_order_and_containment(results):
    kinds = [k for k, _ in result_objects(results)]
    assert kinds == ["seg", "sr", "sc"]
    (results / "result.json").write_text(json.dumps({"outputs": {"seg": ["../../etc/passwd"]}}))
    with pytest.raises(DeliveryError, match="outside the result directory"):
        result_objects(results)


def test_each_destination_gets_the_sr_of_its_profile(tmp_path, results, scp, ct_data):
    """Analyses write one SR per profile (sr.dcm "ohif", sr_tid1411.dcm "tid1411"); a peer gets one."""
    src = sorted(p for p in (ct_data / "philips-phantom-5mm").iterdir() if p.name != "DIRFILE")[3]
    shutil.copy(src, results / "sr_tid1411.dcm")
    outputs = {"seg": ["seg.dcm"], "sr": ["sr.dcm"], "sr_tid1411": ["sr_tid1411.dcm"], "sc": ["sc/001.dcm"]}
    (results / "result.json").write_text(json.dumps({"outputs": outputs}))
    assert [k for k, _ in result_objects(results)] == ["seg", "sr", "sr_tid1411", "sc"]
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    viewer = build(dimse(scp.port, name="viewer"))
    strict = build(dimse(scp.port, name="strict", sr_profile="tid1411", send_overlay=False))
    assert Dispatcher([viewer, strict], ledger).deliver("1", results) == []
    sent = {s.destination: sorted(s.delivered) for s in ledger.states("1")}
    assert sent == {"viewer": ["sc/001.dcm", "seg.dcm", "sr.dcm"], "strict": ["seg.dcm", "sr_tid1411.dcm"]}
    with pytest.raises(ValueError, match="sr_profile"):
        dimse(scp.port, sr_profile="dicom")


def test_dimse_delivers_once_and_respects_overlay_flag(tmp_path, results, scp):
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    with_overlay = build(dimse(scp.port, name="a"))
    without = build(dimse(scp.port, name="b", send_overlay=False))
    d = Dispatcher([with_overlay, without], ledger)
    assert d.deliver("1", results) == []
    assert scp.stores() == 3 + 2
    assert d.deliver("1", results) == []  # idempotent: the ledger knows everything arrived
    assert scp.stores() == 5
    assert {s.destination: len(s.delivered) for s in ledger.states("1")} == {"a": 3, "b": 2}
    expected = {pydicom.dcmread(p).SOPInstanceUID for p in results.rglob("*.dcm")}
    assert scp.received_sops() == expected


def test_interrupted_send_resumes_with_the_rest(tmp_path, results, scp):
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    real = build(dimse(scp.port))

    class DiesAfterFirst(type(real)):
        def send(self, files, on_delivered):
            def once(path):
                on_delivered(path)
                raise DeliveryError(self.name, "connection dropped")
            super().send(files, once)

    broken = DiesAfterFirst(dimse(scp.port))
    errs = Dispatcher([broken], ledger).deliver("7", results)
    assert len(errs) == 1 and errs[0].retryable and scp.stores() == 1
    assert Dispatcher([real], ledger).deliver("7", results) == []
    assert scp.stores() == 3  # 1 + the 2 that were not confirmed; nothing twice


def test_peer_down_past_give_up_is_dead_then_retry_sends_the_rest(tmp_path, results):
    """The retry policy's give-up (tiny here) dead-letters; `ich-node jobs retry` (queue retry + the
    ledger's give-up clock reset) sends it, with nothing twice."""
    port = free_port()
    q = SQLiteQueue(tmp_path / "q.sqlite3", max_attempts=3, backoff=Backoff(base_s=0.2, max_s=0.5))
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    retry = RetryPolicy(backoff_base_s=0.05, backoff_max_s=0.1, give_up_after_s=0.3, probe_interval_s=0.05)
    sender = Sender(q, Dispatcher([build(dimse(port, retry=retry))], ledger), owner="s")
    job = q.enqueue("k", {})
    q.claim("w")
    q.mark_encoded(job.id, "w", str(results))
    j = sender.deliver(q.claim("s", stage="send"))
    assert j.state is JobState.FAILED and "aborted" in j.last_error and j.next_try_at > time.time()
    assert j.attempts == 0  # the analysis' attempts are not used by deliveries
    time.sleep(0.35)
    dead = sender.deliver(q.claim("s", stage="send"))
    assert dead.state is JobState.DEAD and "gave up" in dead.last_error
    assert sender.dispatcher.dead_letters["pacs"] == 1
    peer = StoreSCP(tmp_path, port=port).start()
    try:
        q.retry(job.id)  # what `ich-node jobs retry` does
        ledger.clear_failures(job.id)
        assert sender.dispatcher.probe(now=time.time() + 1) == ["pacs"]  # its C-ECHO answers
        assert sender.drain()
        assert q.get(job.id).state is JobState.SENT
        assert peer.stores() == 3
    finally:
        peer.stop()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=test-ca", cwd=d)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d


def test_dimse_mutual_tls(tmp_path, results, pki):
    peer = StoreSCP(tmp_path, ["+tls", str(pki / "server.key"), str(pki / "server.crt"), "+cf", str(pki / "ca.crt"),
                               "-rc"]).start()
    try:
        ledger = Ledger(tmp_path / "ledger.sqlite3")
        tls = TLSClient(enabled=True, ca=pki / "ca.crt", cert=pki / "client.crt", key=pki / "client.key")
        assert Dispatcher([build(dimse(peer.port, tls=tls))], ledger).deliver("1", results) == []
        assert peer.stores() == 3
        plain = Dispatcher([build(dimse(peer.port, name="plain"))], ledger).deliver("1", results)
        assert len(plain) == 1 and peer.stores() == 3  # plain TCP against a TLS peer gets nothing through
        no_cert = TLSClient(enabled=True, ca=pki / "ca.crt")
        errs = Dispatcher([build(dimse(peer.port, name="nocert", tls=no_cert))], ledger).deliver("1", results)
        assert len(errs) == 1 and peer.stores() == 3  # the peer requires our certificate
    finally:
        peer.stop()


class _StowHandler(http.server.BaseHTTPRequestHandler):
    received: list[str] = []
    status = 200
    posts = 0

    def do_POST(self):  # noqa: N802
        type(self).posts += 1
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).status != 200:
            self.send_response(type(self).status)
            self.end_headers()
            return
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
        for part in msg.iter_parts():
            assert part.get_content_type() == "application/dicom"
            ds = pydicom.dcmread(io.BytesIO(part.get_payload(decode=True)))
            type(self).received.append(ds.SOPInstanceUID)
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        out = b"{}"
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_HEAD(self):  # noqa: N802 - the probe of a down archive
        self.send_response(type(self).status if type(self).status in (502, 503, 504) else 405)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def stow():
    _StowHandler.received = []
    _StowHandler.status = 200
    _StowHandler.posts = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StowHandler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server, _StowHandler
    server.shutdown()
    server.server_close()


def test_stowrs_delivers_and_classifies_http_errors(tmp_path, results, stow):
    server, handler = stow
    cfg = DestinationConfig(name="web", type="stowrs", url=f"http://127.0.0.1:{server.server_port}/dicomweb",
                            send_overlay=False)
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    handler.status = 503
    d = Dispatcher([build(cfg)], ledger)
    errs = d.deliver("1", results)
    assert len(errs) == 1 and errs[0].retryable and errs[0].unreachable and "HTTP 503" in str(errs[0])
    assert handler.posts == 1
    assert d.deliver("1", results)[0].waiting  # down: no POST until a probe answers
    assert Dispatcher([build(cfg)], ledger).deliver("1", results)[0].waiting  # a restart remembers it
    assert d.probe(now=time.time() + 60) == [] and handler.posts == 1  # HEAD → 503: still down
    handler.status = 400
    assert d.probe(now=time.time() + 60) == ["web"]  # HEAD → 405: the server answers
    errs = d.deliver("1", results)
    assert len(errs) == 1 and not errs[0].retryable and not errs[0].unreachable
    handler.status = 200
    assert Dispatcher([build(cfg)], ledger).deliver("1", results) == []
    assert handler.received == [pydicom.dcmread(results / n).SOPInstanceUID for n in ("seg.dcm", "sr.dcm")]


def test_unknown_destination_type_is_a_clear_error():
    cfg = DestinationConfig(name="x", type="dimse", ae_title="A", host="h", port=1)
    object.__setattr__(cfg, "type", "carrier-pigeon")
    with pytest.raises(ValueError, match="unknown destination type .carrier-pigeon."):
        build(cfg)


def test_each_type_owns_its_config_class():
    """[[destinations]] entries are validated as the config class of their type (registered sender's
    ``Config``): DIMSE fields on a DIMSE peer only, a URL on a STOW-RS one only."""
    from dicomnode.config import ConfigError, NodeConfig, load_config
    from dicomnode.deliver.dimse import DimseConfig, DimseDestination
    from dicomnode.deliver.stowrs import StowRsConfig, StowRsDestination

    cfg = NodeConfig.model_validate({"destinations": [
        {"name": "pacs", "ae_title": "PACS", "host": "h", "port": 104},  # type left out: dimse
        {"name": "web", "type": "stowrs", "url": "https://h/dicom-web", "send_overlay": False}]})
    pacs, web = cfg.destinations
    assert isinstance(pacs, DimseConfig) and isinstance(web, StowRsConfig)
    assert DimseDestination.Config is DimseConfig and StowRsDestination.Config is StowRsConfig
    assert isinstance(build(pacs), DimseDestination) and isinstance(build(web), StowRsDestination)
    assert str(pacs.address) == "PACS@h:104" and web.address is None
    assert DestinationConfig.from_address("ORTHANC@127.0.0.1:4242") == DimseConfig(
        name="ORTHANC", ae_title="ORTHANC", host="127.0.0.1", port=4242)
    for entry, problem in [({"name": "p", "host": "h", "port": 1}, "destinations.0.ae_title"),
                           ({"name": "p", "ae_title": "P", "host": "h", "port": 1, "url": "http://x"},
                            "destinations.0.url"),
                           ({"name": "w", "type": "stowrs", "url": "ftp://x"}, "destinations.0.url"),
                           ({"name": "w", "type": "stowrs", "url": "http://x", "port": 1}, "destinations.0.port"),
                           ({"name": "c", "type": "carrier-pigeon"}, "carrier-pigeon")]:
        with pytest.raises(ConfigError, match=problem.replace(".", r"\.")):
            load_config(None, env={"ICH_NODE__DESTINATIONS": "[" + ", ".join(
                f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in entry.items()).join("{}") + "]"})
