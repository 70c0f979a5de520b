"""The heartbeat study: a valid synthetic head CT the node's own selection accepts, sent through the real
path (C-STORE to the node's SCP → sweep → selection → queue → worker → sender) and found at the
destination (a real Orthanc, by C-FIND and by its REST API); last success in /metrics and `ich-node status`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from dicomnode.config import Destination
from dicomnode.observe.heartbeat import PATIENT_ID, Heartbeat, orthanc_series, read_state, synthetic_head_ct
from dicomnode.service import Node
from tests.conftest import metric_value, node_config, scrape, small_config, wait_for
from tests.integration.conftest import OrthancServer


def test_synthetic_study_is_valid_and_qualifies(tmp_path):
    from dicomnode import select as selection
    from dicomnode.config import SelectionSection

    study, files = synthetic_head_ct(tmp_path, seed=3)
    headers = [pydicom.dcmread(f) for f in files]
    assert {str(h.StudyInstanceUID) for h in headers} == {study} and len(files) == 24
    assert headers[0].PatientID == PATIENT_ID and headers[0].pixel_array.shape == (128, 128)
    hu = headers[12].pixel_array * float(headers[12].RescaleSlope) + float(headers[12].RescaleIntercept)
    assert hu.max() >= 1000 and hu.min() == -1000  # skull and air
    verdict = selection.assess_series(str(headers[0].SeriesInstanceUID), headers, SelectionSection())
    assert verdict.verdict.value == "qualifies", verdict.reason
    if (dciodvfy := __import__("shutil").which("dciodvfy")) is not None:
        out = subprocess.run([dciodvfy, str(files[0])], capture_output=True, text=True)
        assert "Error" not in out.stdout + out.stderr, out.stderr
    again, _ = synthetic_head_ct(tmp_path / "b")
    assert again != study  # fresh UIDs every time


def test_tick_sends_when_due_then_checks_until_found_or_timeout(tmp_path):
    cfg = small_config()
    cfg.node.data_dir = tmp_path
    cfg.heartbeat.enabled, cfg.heartbeat.interval_s, cfg.heartbeat.timeout_s = True, 60, 30
    sent, found = [], {}
    hb = Heartbeat(cfg, send=lambda files: sent.append([pydicom.dcmread(f).StudyInstanceUID for f in files]),
                   lookup=lambda uid: found.get(uid, []))
    s = hb.tick(now=1000.0)
    assert len(sent) == 1 and s["pending"]["study_uid"] == sent[0][0] and s["state"] == "never"
    assert hb.tick(now=1010.0)["pending"] and len(sent) == 1        # not there yet, not timed out
    found[sent[0][0]] = ["SEG"]                                      # SEG there, SR still on its way
    assert hb.tick(now=1015.0)["pending"]
    found[sent[0][0]] = ["SEG", "SR"]
    s = hb.tick(now=1020.0)
    assert s["state"] == "ok" and s["last_success"] == 1020.0 and s["last_duration_s"] == 20.0
    assert read_state(tmp_path)["last_found"] == ["SEG", "SR"]
    assert hb.tick(now=1050.0)["pending"] is None and len(sent) == 1  # next one only after interval_s
    hb.tick(now=1061.0)
    assert len(sent) == 2
    s = hb.tick(now=1100.0)
    assert s["state"] == "failed" and "no SR" in s["last_error"] and s["last_success"] == 1020.0
    bad = Heartbeat(cfg, send=lambda files: (_ for _ in ()).throw(ConnectionError("node refused")))
    s = bad.tick(now=2000.0)
    assert s["state"] == "failed" and "node refused" in s["last_error"]


def test_unknown_heartbeat_destination_is_a_clear_error(tmp_path):
    cfg = small_config()
    cfg.heartbeat.destination = "nope"
    with pytest.raises(ValueError, match="heartbeat.destination 'nope' is not a configured destination"):
        Heartbeat(cfg)


def test_heartbeat_through_the_real_path_reaches_orthanc(tmp_path, free_port, dcmtk):
    node_port = free_port()
    orthanc = OrthancServer(tmp_path / "orthanc", free_port, modalities={"node": ["ICHNODE", "127.0.0.1", node_port]})
    orthanc.start()
    cfg = node_config(tmp_path, node_port, orthanc.dicom_port)
    cfg.destinations = [Destination.from_address(orthanc.address)]
    cfg.metrics.enabled, cfg.metrics.port = True, free_port()
    cfg.heartbeat.enabled, cfg.heartbeat.interval_s, cfg.heartbeat.timeout_s = True, 3600, 120
    cfg.worker.analyzer = "pipeline.analyze:Analyzer"  # the synthetic blob gives a SEG and an SR
    node = Node(cfg).start()  # the node's own selection decides, as for a scanner's study
    try:
        state = wait_for(lambda: (s := read_state(cfg.node.data_dir)) and s.get("state") == "ok" and s, 120, 0.5)
        assert state["last_success"] > state["last_attempt"] and state["pending"] is None
        assert {"SEG", "SR"} <= set(state["last_found"]), state  # found by C-FIND at the destination
        study_uid = [j for j in node.queue.list()][0].payload["study_uid"]
        assert orthanc_series(orthanc.url, study_uid)  # the REST check sees it too
        text = scrape(cfg.metrics.port)[1]
        assert metric_value(text, "ichnode_heartbeat_last_success_timestamp_seconds") == pytest.approx(state["last_success"])
        assert metric_value(text, "ichnode_heartbeat_ok") == 1
        status = subprocess.run([str(Path(sys.executable).with_name("ich-node")), "status", "--json", "--data-dir",
                                 str(cfg.node.data_dir)], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "ICH_NODE__STORAGE__MIN_FREE_BYTES": "0"})
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["heartbeat"]["last_success"] == state["last_success"]
    finally:
        node.stop()
        orthanc.stop()
