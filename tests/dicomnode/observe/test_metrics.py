"""/metrics and /healthz of a running node, scraped over HTTP after real activity (storescu → node →
analysis test double → storescp), and the time-to-result target."""

from __future__ import annotations

import json
import logging
import re

import pytest

from dicomnode.config import Destination
from dicomnode.queue import JobState
from dicomnode.service import Node
from tests.conftest import StoreSCP, metric_value, node_config, scrape, take_ct_series, wait_for


@pytest.fixture
def metrics_node(tmp_path, free_port, fake_module):
    peer = StoreSCP(tmp_path).start()
    cfg = node_config(tmp_path, free_port(), peer.port)
    cfg.metrics.enabled, cfg.metrics.port = True, free_port()
    cfg.metrics.time_to_result_target_s = 0.5  # the quiet period alone is longer: every study misses it
    node = Node(cfg, decide=take_ct_series).start()
    yield node, cfg, peer
    node.stop()
    peer.stop()


def test_metrics_after_a_delivered_study(metrics_node, series_dir, dcmtk, caplog):
    node, cfg, peer = metrics_node
    series, _late = series_dir
    status, text = scrape(cfg.metrics.port)
    assert status == 200 and metric_value(text, "ichnode_jobs", state="sent") == 0
    caplog.set_level(logging.WARNING, logger="dicomnode.observe.metrics")

    r = dcmtk("storescu", "-aec", "ICHNODE", "+sd", "127.0.0.1", cfg.node.port, series)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: any(j.state is JobState.SENT for j in node.queue.list()), 120)
    wait_for(lambda: metric_value(scrape(cfg.metrics.port)[1], "ichnode_studies_delivered_total") == 1, 10)
    text = scrape(cfg.metrics.port)[1]

    n = len(list(series.iterdir()))
    assert metric_value(text, "ichnode_instances_received_total", outcome="new") == n
    assert metric_value(text, "ichnode_jobs", state="sent") == 1 and metric_value(text, "ichnode_queue_up") == 1
    for stage in ("receive_to_queued", "queued_to_analysed", "analysed_to_delivered", "time_to_result"):
        assert metric_value(text, "ichnode_stage_seconds_count", stage=stage) == 1, stage
    ttr = metric_value(text, "ichnode_stage_seconds_sum", stage="time_to_result")
    parts = sum(metric_value(text, "ichnode_stage_seconds_sum", stage=s)
                for s in ("receive_to_queued", "queued_to_analysed", "analysed_to_delivered"))
    assert cfg.selection.quiet_seconds <= ttr < 120 and abs(parts - ttr) < 1.0  # stages add up to the total
    assert metric_value(text, "ichnode_time_to_result_target_missed_total") == 1
    assert any("missed the" in r.getMessage() for r in caplog.records)
    assert metric_value(text, "ichnode_disk_free_bytes") > 0
    assert metric_value(text, "ichnode_send_failures_total", destination="pacs") is None  # none failed
    assert re.search(r'^ichnode_model_info\{kind="segmenter",', text, re.M)

    status, body = scrape(cfg.metrics.port, "/healthz")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok"
    assert health["checks"] == {"receiver": "ok", "scheduler": "ok", "queue": "ok", "disk": "ok", "analysis": "ok",
                                "destinations": {"pacs": "up"}}
    assert metric_value(text, "ichnode_destination_up", destination="pacs") == 1
    assert metric_value(text, "ichnode_destination_down_seconds", destination="pacs") == 0
    assert metric_value(text, "ichnode_delivery_dead_letters_total", destination="pacs") == 0
    assert scrape(cfg.metrics.port, "/nope")[0] == 404


def test_send_failures_and_unhealthy_disk(tmp_path, free_port, fake_module, series_dir, dcmtk):
    series, _late = series_dir
    cfg = node_config(tmp_path, free_port(), free_port())  # nobody listens at the destination
    cfg.destinations = [Destination(name="down", ae_title="DEST", host="127.0.0.1", port=free_port(),
                                    retry={"probe_interval_s": 0.2})]
    cfg.metrics.enabled, cfg.metrics.port = True, free_port()
    node = Node(cfg, decide=take_ct_series).start()
    try:
        dcmtk("storescu", "-aec", "ICHNODE", "+sd", "127.0.0.1", cfg.node.port, series)
        wait_for(lambda: (metric_value(scrape(cfg.metrics.port)[1], "ichnode_destination_down_seconds", destination="down")
                          or 0) >= 1, 120)
        text = scrape(cfg.metrics.port)[1]
        assert metric_value(text, "ichnode_send_failures_total", destination="down") == 1  # then probes, no re-sends
        assert metric_value(text, "ichnode_destination_up", destination="down") == 0
        assert metric_value(text, "ichnode_destination_waiting_jobs", destination="down") == 1
        assert metric_value(text, "ichnode_jobs", state="failed") == 1
        assert metric_value(text, "ichnode_studies_delivered_total") == 0
        health = json.loads(scrape(cfg.metrics.port, "/healthz")[1])
        assert health["status"] == "ok" and health["checks"]["destinations"]["down"].startswith("down for")
        node.config.storage.min_free_bytes = 1 << 62  # no disk is that big: refusing C-STORE
        status, body = scrape(cfg.metrics.port, "/healthz")
        assert status == 503 and json.loads(body)["checks"]["disk"] == "full"
    finally:
        node.stop()


def test_taken_metrics_port_does_not_stop_the_node(tmp_path, free_port, fake_module):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg = node_config(tmp_path, free_port(), free_port())
        cfg.metrics.enabled, cfg.metrics.port = True, busy.getsockname()[1]
        node = Node(cfg, decide=take_ct_series, receiver=None).start()
        try:
            assert node.metrics is not None and node.metrics_server is None
        finally:
            node.stop()


def test_healthz_says_warming_until_the_analysis_process_is_warm(tmp_path, free_port, fake_module):
    """Issue 15: the node takes C-STOREs at once, but /healthz is 503 "warming" until its models are
    loaded and warmed, so a load balancer or the benchmark knows when a study will start at once."""
    gate = tmp_path / "warm-now"
    (fake_module / "gated_analyzer.py").write_text(
        "import os, time\n"
        "class Gated:\n"
        "    def __init__(self, models):\n"
        "        pass\n"
        "    def warm(self):\n"
        f"        while not os.path.exists({str(gate)!r}):\n"
        "            time.sleep(0.05)\n"
        "        return {}\n")
    cfg = node_config(tmp_path, free_port(), free_port())
    cfg.worker.analyzer = "gated_analyzer:Gated"
    cfg.metrics.enabled, cfg.metrics.port = True, free_port()
    node = Node(cfg, decide=take_ct_series).start()
    try:
        status, body = wait_for(lambda: _answered(cfg.metrics.port), 30)
        health = json.loads(body)
        assert status == 503 and health["status"] == "warming" and health["checks"]["analysis"] == "warming"
        assert health["checks"]["receiver"] == "ok"
        gate.touch()
        wait_for(lambda: scrape(cfg.metrics.port, "/healthz")[0] == 200, 30)
        assert json.loads(scrape(cfg.metrics.port, "/healthz")[1])["checks"]["analysis"] == "ok"
    finally:
        gate.touch()
        node.stop()


def _answered(port):
    try:
        return scrape(port, "/healthz")
    except OSError:
        return None
