"""The wired node with real peers (storescu → node → storescp) and a test double for the analysis.

Covers the node's own guarantees independent of the pipeline: delivery after the quiet period,
late instance → re-analysis linked to its predecessor, destination down → retries → delivered,
kill -9 during analysis → restart → delivered exactly once. The e2e test repeats the important
ones with the real ``pipeline.analyze`` and Orthanc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dicomnode.queue import JobState, open_queue
from dicomnode.service import Node
from tests.conftest import StoreSCP, node_config, take_ct_series, wait_for


def storescu(dcmtk, port, path):
    r = dcmtk("storescu", "-aec", "ICHNODE", "+sd", "127.0.0.1", port, path)
    assert "Store Response" in r.stdout + r.stderr or r.returncode == 0, r.stderr


def test_node_delivers_then_reanalyses_a_late_instance(tmp_path, free_port, fake_module, series_dir, dcmtk):
    series, late = series_dir
    peer = StoreSCP(tmp_path).start()
    cfg = node_config(tmp_path, free_port(), peer.port)
    node = Node(cfg, decide=take_ct_series).start()
    try:
        dcmtk("storescu", "-aec", "ICHNODE", "+sd", "127.0.0.1", cfg.node.port, series)
        first = wait_for(lambda: [j for j in node.queue.list() if j.state is JobState.SENT])[0]
        assert peer.stores() == 2 and len(first.payload["files"]) == 27
        assert Path(first.result_dir, "predecessor").read_text() == "None"
        assert node.index.series_of_study(first.payload["study_uid"])[0].state == "analyzed"

        dcmtk("storescu", "-aec", "ICHNODE", "127.0.0.1", cfg.node.port, *late.iterdir())
        second = wait_for(lambda: [j for j in node.queue.list() if j.state is JobState.SENT and j.id != first.id])[0]
        assert len(second.payload["files"]) == 28
        expected = [str(Path(first.result_dir, n)) for n in ("sr.dcm", "seg.dcm")]
        assert Path(second.result_dir, "predecessor").read_text() == str(expected)  # replace link
        assert peer.stores() == 4  # two results, each delivered once
        assert len(peer.received_sops()) == 4
    finally:
        node.stop()
        peer.stop()


def test_one_node_per_data_dir(tmp_path, free_port, fake_module):
    cfg = node_config(tmp_path, free_port(), free_port())
    node = Node(cfg, decide=take_ct_series, receiver=None).start()
    try:
        other = node_config(tmp_path, free_port(), free_port())
        with pytest.raises(RuntimeError, match="already running with data directory"):
            Node(other, decide=take_ct_series, receiver=None).start()
    finally:
        node.stop()


def test_destination_down_then_up_is_delivered(tmp_path, free_port, fake_module, series_dir, dcmtk):
    series, _ = series_dir
    dest_port = free_port()
    cfg = node_config(tmp_path, free_port(), dest_port, max_attempts=2)  # deliveries do not use these
    cfg.destinations[0].retry.probe_interval_s = 0.3
    node = Node(cfg, decide=take_ct_series).start()
    peer = StoreSCP(tmp_path, port=dest_port)
    try:
        dcmtk("storescu", "-aec", "ICHNODE", "+sd", "127.0.0.1", cfg.node.port, series)
        job = wait_for(lambda: [j for j in node.queue.list() if j.state is JobState.FAILED and j.stage.value == "send"])[0]
        assert "aborted" in job.last_error
        wait_for(lambda: node.sender.dispatcher.health["pacs"].probes >= 3)  # probed (C-ECHO), not re-sent
        assert node.queue.get(job.id).state in (JobState.FAILED, JobState.ENCODED)  # waiting, not dead
        assert node.queue.get(job.id).attempts == 0
        peer.start()
        wait_for(lambda: node.queue.get(job.id).state is JobState.SENT)
        assert peer.stores() == 2
    finally:
        node.stop()
        peer.stop()


def _serve(cfg_path: Path, log: Path, env: dict) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("ich-node")
    return subprocess.Popen([str(exe), "serve", "--config", str(cfg_path)], stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)


def test_kill_9_during_analysis_then_restart_delivers_once(tmp_path, free_port, fake_module, series_dir, dcmtk):
    series, _ = series_dir
    peer = StoreSCP(tmp_path).start()
    port = free_port()
    cfg_path = tmp_path / "node.toml"
    cfg_path.write_text(textwrap.dedent(f"""
        [node]
        host = "127.0.0.1"
        port = {port}
        data_dir = "{tmp_path / 'var'}"
        [storage]
        min_free_bytes = 0
        [selection]
        quiet_seconds = 1
        [scheduler]
        sweep_seconds = 0.3
        [worker]
        analyzer = "fake_node_analyzer:FakeAnalyzer"
        local_verdicts = false   # the series lacks a slice ("cannot assess"): keep it in the analysis process
        [metrics]
        enabled = false
        [[destinations]]
        name = "pacs"
        ae_title = "DEST"
        host = "127.0.0.1"
        port = {peer.port}
    """))
    env = {**os.environ, "PYTHONPATH": f"{fake_module}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "FAKE_SLEEP": "4"}
    log = tmp_path / "node.log"
    proc = _serve(cfg_path, log, env)
    try:
        wait_for(lambda: dcmtk("echoscu", "-aec", "ICHNODE", "127.0.0.1", port).returncode == 0, timeout=60)
        dcmtk("storescu", "-aec", "ICHNODE", "+sd", "127.0.0.1", port, series)
        from dicomnode.config import load_config

        q = open_queue(load_config(cfg_path))
        wait_for(lambda: [j for j in q.list() if j.state is JobState.RUNNING], timeout=60)
        os.kill(proc.pid, signal.SIGKILL)  # the node dies mid-analysis; its analysis child follows
        proc.wait(10)
        assert peer.stores() == 0
        env["FAKE_SLEEP"] = "0"
        proc = _serve(cfg_path, log, env)
        job = wait_for(lambda: [j for j in q.list() if j.state is JobState.SENT], timeout=90)[0]
        assert "restarted" in (job.last_error or "")  # the interrupted run was handed back at start
        time.sleep(2)  # nothing else arrives later
        assert peer.stores() == 2 and len(q.list()) == 1
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
        peer.stop()
    assert "node stopped" in log.read_text()  # SIGTERM → graceful stop


def test_retrain_cron_is_scheduled_only_when_configured(tmp_path):
    from apscheduler.triggers.cron import CronTrigger

    from dicomnode.config import load_config
    from dicomnode.service import Node

    off = load_config(None, env={"ICH_NODE__NODE__DATA_DIR": str(tmp_path)})
    assert "retrain" not in Node(off)._extra_jobs()
    on = load_config(None, env={"ICH_NODE__NODE__DATA_DIR": str(tmp_path), "ICH_NODE__SCHEDULER__RETRAIN_CRON": "0 3 * * 0"})
    fn, trigger = Node(on)._extra_jobs()["retrain"]
    assert isinstance(trigger, CronTrigger) and callable(fn)
