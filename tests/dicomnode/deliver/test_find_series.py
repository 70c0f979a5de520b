"""Destinations answer "which series do you hold for this study" (the heartbeat's arrival check): C-FIND for
DIMSE against an in-process pynetdicom SCP, QIDO-RS for STOW-RS against a loopback HTTP server."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.parse

import pytest

from dicomnode.config import Destination, NodeConfig
from dicomnode.deliver import build
from dicomnode.observe.heartbeat import Heartbeat

STUDY = "1.2.826.0.1.3680043.8.498.1"
HELD = {STUDY: ["SEG", "SR"]}  # what the peer holds: study → modality of each series


@pytest.fixture
def find_scp():
    from pydicom.dataset import Dataset
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    callers: list[str] = []

    def on_find(event):
        callers.append(event.assoc.requestor.ae_title)
        query = event.identifier
        assert query.QueryRetrieveLevel == "SERIES"
        for i, modality in enumerate(HELD.get(query.StudyInstanceUID, [])):
            match = Dataset()
            match.QueryRetrieveLevel = "SERIES"
            match.StudyInstanceUID, match.SeriesInstanceUID = query.StudyInstanceUID, f"{STUDY}.{i + 1}"
            match.Modality = modality
            yield 0xFF00, match

    ae = AE(ae_title="FINDSCP")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)])
    yield server.server_address[1], callers
    server.shutdown()


class _QidoHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        url = urllib.parse.urlsplit(self.path)
        study = urllib.parse.parse_qs(url.query).get("StudyInstanceUID", [""])[0]
        found = [{"0020000E": {"vr": "UI", "Value": [f"{study}.{i}"]}, "00080060": {"vr": "CS", "Value": [m]}}
                 for i, m in enumerate(HELD.get(study, []))] if url.path == "/dicomweb/series" else None
        if not found:
            self.send_response(204 if found is not None else 404)  # QIDO-RS: no match → 204 No Content
            self.end_headers()
            return
        out = json.dumps(found).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def qido():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QidoHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/dicomweb"
    server.shutdown()
    server.server_close()


def test_dimse_destination_finds_series_by_c_find(find_scp):
    port, callers = find_scp
    pacs = build(Destination(name="pacs", ae_title="FINDSCP", host="127.0.0.1", port=port), calling_ae_title="ICHNODE")
    assert pacs.find_series(STUDY) == ["SEG", "SR"]
    assert pacs.find_series("1.2.3.4") == []
    mine = build(Destination(name="p2", ae_title="FINDSCP", host="127.0.0.1", port=port, calling_ae_title="ICHQUERY"))
    assert mine.find_series(STUDY, timeout_s=10) == ["SEG", "SR"]
    assert callers == ["ICHNODE", "ICHNODE", "ICHQUERY"]  # the AE title the peer knows us by


def test_stowrs_destination_finds_series_by_qido_rs(qido):
    web = build(Destination(name="web", type="stowrs", url=qido))
    assert sorted(web.find_series(STUDY)) == ["SEG", "SR"]
    assert web.find_series("1.2.3.4") == []


def test_heartbeat_asks_its_destination(find_scp, qido, tmp_path):
    """No per-type branch in the heartbeat: it calls the configured destination's ``find_series``."""
    port, _ = find_scp
    cfg = NodeConfig.model_validate({"node": {"data_dir": str(tmp_path)}, "destinations": [
        {"name": "pacs", "ae_title": "FINDSCP", "host": "127.0.0.1", "port": port},
        {"name": "web", "type": "stowrs", "url": qido}]})
    for name in ("pacs", "web"):
        cfg.heartbeat.destination = name
        assert sorted(Heartbeat(cfg)._lookup(STUDY)) == ["SEG", "SR"], name


def test_a_type_that_cannot_be_asked_says_so():
    from dicomnode.deliver.base import Destination as Sender

    class Blind(Sender):
        def send(self, files, on_delivered):
            pass

    blind = Blind(Destination(name="x", ae_title="X", host="h", port=1))
    with pytest.raises(NotImplementedError, match="cannot be asked for a study's series"):
        blind.find_series(STUDY)
