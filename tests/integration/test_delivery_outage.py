"""A PACS outage loses nothing and needs no one (issue 15, part 6), with a real Orthanc.

The node (in-process: real SCP, queue, sender, pynetdicom C-STORE/C-ECHO; the analysis is the fast
test double ``fake_module`` of ``tests/conftest.py``) receives two studies while Orthanc is down. Orthanc
stays down far longer than the old policy lasted (the queue's analysis attempts: here 2 attempts,
0.5 s apart), with tiny retry-policy values so the test runs in well under a minute. Orthanc then comes
back on the same port and both results arrive, oldest first, without anyone running ``jobs retry``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time

import pytest

from dicomnode.deliver.policy import ALERT_DOWN, RetryPolicy
from dicomnode.queue import JobState, Stage
from dicomnode.service import Node
from tests.conftest import metric_value, node_config, scrape, take_ct_series, wait_for

pytestmark = [pytest.mark.integration]

DOWN_FOR_S = 8.0  # the old policy gave up after ~1.5 s with these queue settings


def test_orthanc_down_longer_than_the_old_give_up_then_everything_is_delivered_oldest_first(
        tmp_path, free_port, fake_module, orthanc, ct_data, dcmtk, caplog):
    caplog.set_level(logging.INFO, logger="dicomnode.deliver")
    cfg = node_config(tmp_path, free_port(), orthanc.dicom_port, max_attempts=2)  # queue: 0.5 s, then dead
    cfg.destinations[0].retry = RetryPolicy(backoff_base_s=0.2, backoff_max_s=2, probe_interval_s=0.5,
                                            warn_after_s=2, give_up_after_s=3600)
    cfg.metrics.enabled, cfg.metrics.port = True, free_port()
    orthanc.stop()  # the PACS is down when the studies arrive
    node = Node(cfg, decide=take_ct_series).start()
    try:
        t0 = time.monotonic()
        for study in ("philips-phantom-5mm", "ge-human-head-tilted"):
            r = dcmtk("storescu", "-aec", "ICHNODE", "-nh", "+sd", "127.0.0.1", cfg.node.port, ct_data / study)
            assert r.returncode == 0, r.stderr
        waiting = wait_for(lambda: len(jobs := [j for j in node.queue.list() if j.state is JobState.FAILED
                                                and j.stage is Stage.SEND]) == 2 and jobs, 60)
        ids = sorted((j.id for j in waiting), key=int)
        time.sleep(max(0.0, DOWN_FOR_S - (time.monotonic() - t0)))

        text = scrape(cfg.metrics.port)[1]
        for i in ids:  # waiting (FAILED, or ENCODED while the sender looks at it again), not dead
            job = node.queue.get(i)
            assert job.state in (JobState.FAILED, JobState.ENCODED) and job.attempts == 0, job  # analysis' attempts untouched
        assert metric_value(text, "ichnode_destination_up", destination="pacs") == 0
        assert metric_value(text, "ichnode_destination_down_seconds", destination="pacs") >= 2
        assert metric_value(text, "ichnode_destination_waiting_jobs", destination="pacs") == 2
        assert metric_value(text, "ichnode_send_failures_total", destination="pacs") == 1  # then only probes
        assert node.sender.dispatcher.health["pacs"].probes >= 5
        alerts = [r for r in caplog.records if r.levelno == logging.WARNING and ALERT_DOWN in r.getMessage()]
        assert alerts and "destination pacs down for" in alerts[0].getMessage()
        assert all("1.2.840" not in r.getMessage() and "1.3.46" not in r.getMessage() for r in caplog.records)

        orthanc.start()  # same ports
        t_up = time.monotonic()
        wait_for(lambda: all(node.queue.get(i).state is JobState.SENT for i in ids), 60)
        assert time.monotonic() - t_up < 60  # within a minute (probe every 0.5 s here)

        assert len(orthanc.instances()) == 4  # SEG + SR of each study, each once
        with sqlite3.connect(cfg.ledger_path) as db:
            order = [r[0] for r in db.execute("SELECT job_id FROM delivered GROUP BY job_id ORDER BY MIN(delivered_at)")]
            assert db.execute("SELECT COUNT(*) FROM pending").fetchone()[0] == 0
        assert order == ids  # oldest first
        for i in ids:
            (state,) = node.ledger.states(i)
            assert state.destination == "pacs" and state.delivered == ("seg.dcm", "sr.dcm")
        text = scrape(cfg.metrics.port)[1]
        assert metric_value(text, "ichnode_destination_up", destination="pacs") == 1
        assert metric_value(text, "ichnode_destination_down_seconds", destination="pacs") == 0
        assert metric_value(text, "ichnode_studies_delivered_total") == 2
        assert metric_value(text, "ichnode_delivery_dead_letters_total", destination="pacs") == 0
        health = json.loads(scrape(cfg.metrics.port, "/healthz")[1])
        assert health["checks"]["destinations"] == {"pacs": "up"}
        assert any("answers again" in r.getMessage() for r in caplog.records)
    finally:
        node.stop()
