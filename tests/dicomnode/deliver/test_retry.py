"""The delivery retry policy: backoff, give-up, probing a down destination, oldest first when it is back.

Real peers on loopback (dcmtk storescp, pynetdicom's C-ECHO/C-STORE); policy values are tiny so each
test runs in a few seconds. The queue side (``defer``/``wake``) is a contract test of both backends in
``tests/dicomnode/queue/test_contract.py`` (SQLite and Redis).
"""

from __future__ import annotations

import logging
import sqlite3
import time

import pytest
from pydantic import ValidationError

from dicomnode.config import Destination as DestinationConfig
from dicomnode.config import NodeConfig
from dicomnode.deliver import build
from dicomnode.deliver.dispatch import Dispatcher, Sender
from dicomnode.deliver.ledger import Ledger
from dicomnode.deliver.policy import ALERT_DEAD, ALERT_DOWN, RetryPolicy
from dicomnode.queue import JobState
from dicomnode.queue.base import Backoff
from dicomnode.queue.sqlite import SQLiteQueue
from tests.conftest import StoreSCP, free_port


def test_backoff_sequence_is_capped_and_give_up_waits_a_day_by_default():
    p = RetryPolicy()
    assert [p.delay(n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 300, 300, 300]
    assert p.give_up_after_s >= 24 * 3600 and p.backoff_max_s <= 600
    assert not p.gives_up(first_failed_at=0, now=24 * 3600 - 1) and p.gives_up(first_failed_at=0, now=24 * 3600)
    tiny = RetryPolicy(backoff_base_s=0.5, backoff_factor=3, backoff_max_s=4)
    assert [tiny.delay(n) for n in range(1, 5)] == [0.5, 1.5, 4, 4]
    with pytest.raises(ValidationError, match="backoff_max_s"):
        RetryPolicy(backoff_base_s=60, backoff_max_s=10)


def test_policy_is_set_per_destination_in_the_config(tmp_path):
    from dicomnode.config import load_config

    f = tmp_path / "node.toml"
    f.write_text('[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "h"\nport = 104\n'
                 '[destinations.retry]\nbackoff_max_s = 120\ngive_up_after_s = 172800\nprobe_interval_s = 5\n'
                 '[[destinations]]\nname = "web"\ntype = "stowrs"\nurl = "http://h/dicomweb"\n')
    cfg = load_config(f, env={"ICH_NODE__DESTINATIONS__1__RETRY__WARN_AFTER_S": "60"})
    pacs, web = cfg.destinations
    assert (pacs.retry.backoff_max_s, pacs.retry.give_up_after_s, pacs.retry.probe_interval_s) == (120, 172800, 5)
    assert web.retry == RetryPolicy(warn_after_s=60)
    assert NodeConfig().queue.max_attempts == 5  # the analysis keeps its own attempts
    bad = tmp_path / "bad.toml"
    bad.write_text('[[destinations]]\nname = "p"\nae_title = "P"\nhost = "h"\nport = 1\n[destinations.retry]\nretries = 3\n')
    with pytest.raises(ValueError, match="retries"):
        load_config(bad, env={})


def _encoded(q: SQLiteQueue, n: int, result_dir) -> list[str]:
    ids = []
    for i in range(n):
        job = q.enqueue(f"study-{i}", {})
        q.claim("w")
        ids.append(q.mark_encoded(job.id, "w", str(result_dir)).id)
    return ids


def _delivered_order(ledger_path) -> list[str]:
    with sqlite3.connect(ledger_path) as db:
        return [r[0] for r in db.execute("SELECT job_id FROM delivered GROUP BY job_id ORDER BY MIN(delivered_at)")]


def test_down_destination_is_probed_not_resent_and_everything_goes_out_oldest_first(tmp_path, results, caplog):
    """Down far longer than the queue's analysis attempts would last (2 attempts, 0.1 s apart): nothing
    dead, nothing re-sent while down (only C-ECHO probes), then all three jobs delivered, oldest first."""
    caplog.set_level(logging.INFO, logger="dicomnode.deliver")
    port = free_port()
    q = SQLiteQueue(tmp_path / "q.sqlite3", max_attempts=2, backoff=Backoff(base_s=0.1, max_s=0.1))
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    retry = RetryPolicy(backoff_base_s=0.1, backoff_max_s=0.5, probe_interval_s=0.2, warn_after_s=0.5,
                        give_up_after_s=3600)
    cfg = DestinationConfig(name="pacs", ae_title="DEST", host="127.0.0.1", port=port, retry=retry)
    sender = Sender(q, Dispatcher([build(cfg)], ledger), owner="s", poll_s=0.05)
    ids = _encoded(q, 3, results)
    sender.start()
    try:
        time.sleep(2.0)  # down: the old policy would have dead-lettered after ~0.1 s
        health = sender.dispatcher.health["pacs"]
        assert not health.up and health.probes >= 3 and health.waiting == set(ids)
        jobs = [q.get(i) for i in ids]  # waiting (or just claimed by the sender to wait again)
        assert all(j.state in (JobState.FAILED, JobState.ENCODED) and j.attempts == 0 for j in jobs), jobs
        sends = {s.destination: s.attempts for s in ledger.states(ids[0])}
        assert sends == {"pacs": 1}  # one failed C-STORE association, then only probes
        assert all(ledger.states(i) == [] for i in ids[1:])  # never tried while down
        assert any(ALERT_DOWN in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)

        peer = StoreSCP(tmp_path, port=port).start()  # the PACS is back, same port
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(q.get(i).state is not JobState.SENT for i in ids):
                time.sleep(0.05)
            assert [q.get(i).state for i in ids] == [JobState.SENT] * 3
            assert peer.stores() == 9  # 3 objects × 3 jobs, none twice
            assert _delivered_order(ledger.path) == ids  # oldest first
            assert health.up and not health.waiting
            assert ledger.destination_states()["pacs"]["down_since"] is None
            with sqlite3.connect(ledger.path) as db:
                assert db.execute("SELECT COUNT(*) FROM pending").fetchone()[0] == 0  # give-up clocks cleared
        finally:
            peer.stop()
    finally:
        sender.stop()
    assert any("answers again" in r.getMessage() for r in caplog.records)


@pytest.fixture
def full_pacs():
    """A pynetdicom Storage SCP that answers every C-STORE 0xA700 (Out of Resources): it answers, so it
    is not down, but it takes nothing."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    ae = AE(ae_title="DEST")
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0xA700)])
    yield server.server_address[1]
    server.shutdown()


def test_a_destination_that_answers_but_refuses_backs_off_per_job_then_gives_up(tmp_path, results, caplog,
                                                                                  full_pacs):
    """A full PACS (0xA700) answers: the destination is not 'down', the job waits base, base·2, …
    capped, and is dead-lettered once give_up_after_s has passed, with the alert."""
    caplog.set_level(logging.WARNING, logger="dicomnode.deliver")
    q = SQLiteQueue(tmp_path / "q.sqlite3", max_attempts=2, backoff=Backoff(base_s=0.1, max_s=0.1))
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    retry = RetryPolicy(backoff_base_s=0.1, backoff_max_s=0.3, give_up_after_s=1.0)
    cfg = DestinationConfig(name="pacs", ae_title="DEST", host="127.0.0.1", port=full_pacs, retry=retry)
    sender = Sender(q, Dispatcher([build(cfg)], ledger), owner="s")
    (job_id,) = _encoded(q, 1, results)
    waits = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        job = q.claim("s", stage="send")
        if job is None:
            time.sleep(0.01)
            continue
        done = sender.deliver(job)
        if done.state is JobState.DEAD:
            break
        assert done.state is JobState.FAILED and done.attempts == 0 and sender.dispatcher.health["pacs"].up
        waits.append(round(done.next_try_at - done.updated_at, 2))
    assert done.state is JobState.DEAD and "gave up" in done.last_error and "0xA700" in done.last_error
    assert waits[:4] == [0.1, 0.2, 0.3, 0.3] and len(waits) >= 4
    assert sender.dispatcher.dead_letters["pacs"] == 1
    assert any(ALERT_DEAD in r.getMessage() and f"job {job_id}" in r.getMessage() for r in caplog.records)


def test_a_node_restarted_while_the_destination_is_down_probes_before_it_sends(tmp_path, results):
    port = free_port()
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.set_destination_state("pacs", time.time() - 600, "pacs: association aborted")
    cfg = DestinationConfig(name="pacs", ae_title="DEST", host="127.0.0.1", port=port)
    dispatcher = Dispatcher([build(cfg)], ledger)
    assert not dispatcher.health["pacs"].up and dispatcher.health["pacs"].down_for() >= 600
    (err,) = dispatcher.deliver("1", results)
    assert err.waiting and ledger.states("1") == []  # no send tried
    assert dispatcher.probe() == []  # due at once after the restart; nobody answers
    peer = StoreSCP(tmp_path, port=port).start()
    try:
        assert dispatcher.probe(now=time.time() + 60) == ["pacs"]  # C-ECHO
        assert dispatcher.deliver("1", results) == [] and peer.stores() == 3
    finally:
        peer.stop()


def test_an_idle_sender_probes_at_the_policys_interval_not_its_poll(tmp_path, results):
    """A down destination's probe interval (0.2 s) shorter than the sender's poll (5 s) is kept: the idle
    sender wakes when the next probe is due (it used to nap a whole poll between probes)."""
    q = SQLiteQueue(tmp_path / "q.sqlite3", max_attempts=2, backoff=Backoff(base_s=0.1, max_s=0.1))
    retry = RetryPolicy(backoff_base_s=0.1, backoff_max_s=0.5, probe_interval_s=0.2, give_up_after_s=3600)
    cfg = DestinationConfig(name="pacs", ae_title="DEST", host="127.0.0.1", port=free_port(), retry=retry)
    sender = Sender(q, Dispatcher([build(cfg)], Ledger(tmp_path / "ledger.sqlite3")), owner="s", poll_s=5.0)
    _encoded(q, 1, results)
    sender.start()
    try:
        time.sleep(2.0)
        health = sender.dispatcher.health["pacs"]
        assert not health.up and health.probes >= 4, health.probes  # a 5 s nap would allow at most one
        assert sender.nap_s() <= 0.2
    finally:
        sender.stop()
