"""The embedded queue: state machine, leases, backoff, dead letters, kill -9 survival."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Literal

import pytest

from dicomnode.queue import BACKENDS, JobState, QueueConfig, QueueError, Stage, backend_class
from dicomnode.queue.base import Backoff
from dicomnode.queue.sqlite import SQLiteQueue


@pytest.fixture
def q(tmp_path):
    queue = SQLiteQueue(tmp_path / "q.sqlite3", max_attempts=3, backoff=Backoff(base_s=0.2, max_s=1.0), lease_s=30)
    yield queue
    queue.close()


def test_happy_path_walks_every_state(q):
    job = q.enqueue("study-a", {"series": "s1"})
    assert job.state is JobState.QUEUED
    running = q.claim("w1")
    assert running.id == job.id and running.state is JobState.RUNNING and running.lease_owner == "w1"
    assert q.claim("w2") is None  # leased
    encoded = q.mark_encoded(job.id, "w1", "/tmp/out")
    assert encoded.state is JobState.ENCODED and encoded.result_dir == "/tmp/out"
    assert q.claim("w2") is None  # analysis stage has nothing
    sending = q.claim("s1", stage=Stage.SEND)
    assert sending.id == job.id and sending.lease_owner == "s1"
    assert q.claim("s2", stage=Stage.SEND) is None
    done = q.complete(job.id, "s1")
    assert done.state is JobState.SENT
    assert q.counts()[JobState.SENT] == 1 and set(q.counts()) == set(JobState)


def test_enqueue_coalesces_until_claimed_then_serialises_per_key(q):
    a = q.enqueue("k", {"n": 1})
    b = q.enqueue("k", {"n": 2})
    assert a.id == b.id and q.get(a.id).payload == {"n": 2}
    q.claim("w1")
    c = q.enqueue("k", {"n": 3})  # late instances while the first runs: a second job
    assert c.id != a.id
    assert q.claim("w2") is None  # same key still running → waits
    q.mark_encoded(a.id, "w1", "/r/a")
    assert q.claim("w2").id == c.id
    assert q.latest_result("k", before=c.id).id == a.id


def test_delay_holds_job_received(q):
    job = q.enqueue("k", {}, delay_s=0.3)
    assert job.state is JobState.RECEIVED
    assert q.claim("w") is None
    time.sleep(0.35)
    assert q.claim("w").id == job.id


def test_backoff_then_dead_after_max_attempts(q):
    job = q.enqueue("k", {})
    q.claim("w")
    failed = q.fail(job.id, "w", "boom 1")
    assert failed.state is JobState.FAILED and failed.attempts == 1 and failed.last_error == "boom 1"
    assert 0.0 < failed.next_try_at - time.time() <= 0.2  # base 0.2 s
    assert q.claim("w") is None  # not due yet
    time.sleep(0.25)
    assert q.claim("w").id == job.id
    failed = q.fail(job.id, "w", "boom 2")
    assert 0.2 < failed.next_try_at - time.time() <= 0.4  # doubled
    time.sleep(0.45)
    q.claim("w")
    dead = q.fail(job.id, "w", "boom 3")
    assert dead.state is JobState.DEAD and dead.attempts == 3
    assert [j.id for j in q.last_errors()] == [job.id]
    retried = q.retry(job.id)
    assert retried.state is JobState.QUEUED and retried.attempts == 0
    with pytest.raises(QueueError, match="only failed or dead"):
        q.retry(job.id)


def test_non_retryable_failure_is_dead_at_once(q):
    job = q.enqueue("k", {})
    q.claim("w")
    assert q.fail(job.id, "w", "bad input", retryable=False).state is JobState.DEAD


def test_send_failures_retry_from_encoded(q):
    job = q.enqueue("k", {})
    q.claim("w")
    q.mark_encoded(job.id, "w", "/r")
    q.claim("s", stage="send")
    f = q.fail(job.id, "s", "PACS down")
    assert f.state is JobState.FAILED and f.stage is Stage.SEND
    assert q.claim("w") is None  # not an analysis job
    time.sleep(0.25)
    again = q.claim("s", stage=Stage.SEND)
    assert again.id == job.id and again.state is JobState.ENCODED
    q.fail(job.id, "s", "x")
    time.sleep(0.45)
    q.claim("s", stage=Stage.SEND)
    assert q.fail(job.id, "s", "x").state is JobState.DEAD
    assert q.retry(job.id).state is JobState.ENCODED  # outputs exist: resend, no re-analysis


def test_deferred_deliveries_count_no_attempt_and_wake_oldest_first(q):
    """A delivery waits as its destination's retry policy says (``defer``), never using the analysis'
    attempts however often it waits; ``wake`` (the destination answers again) makes every waiting
    delivery due at once, oldest job first, whatever their next-try times were."""
    ids = []
    for key in ("a", "b", "c"):
        job = q.enqueue(key, {})
        q.claim("w")
        ids.append(q.mark_encoded(job.id, "w", f"/r/{key}").id)
    for _round in range(q.max_attempts + 2):  # more rounds than the analysis may fail
        claimed = [q.claim("s", stage=Stage.SEND) for _ in ids]
        assert [j.id for j in claimed] == ids  # oldest first
        for j, delay in zip(claimed, (300, 200, 100)):  # the newest would be due first
            d = q.defer(j.id, "s", "pacs: down", delay_s=delay)
            assert d.state is JobState.FAILED and d.stage is Stage.SEND and d.attempts == 0
            assert d.last_error == "pacs: down" and d.lease_owner is None
        assert q.claim("s", stage=Stage.SEND) is None and q.claim("w") is None  # waiting; never re-analysed
        assert q.wake() == 3
    for job_id, delay in zip(ids, (0.2, 300, 300)):  # a short wait is due without a wake
        assert q.claim("s", stage=Stage.SEND).id == job_id
        q.defer(job_id, "s", "busy", delay_s=delay)
    assert q.claim("s", stage=Stage.SEND) is None
    time.sleep(0.25)
    assert (short := q.claim("s", stage=Stage.SEND)).id == ids[0]
    dead = q.fail(short.id, "s", "gave up after 24 h", retryable=False)  # the policy gave up
    assert dead.state is JobState.DEAD
    other = q.enqueue("d", {})
    with pytest.raises(QueueError):  # only a delivery waits this way
        q.defer(other.id, None, "x", delay_s=1)


def test_analyses_are_claimed_before_cannot_assess_reports(q):
    """Issue 15: a PACS re-sending a day of single-slice head series queues hundreds of cheap "cannot
    assess" reports; a real head CT queued after them is analysed first, and the reports keep their order."""
    junk = [q.enqueue(f"junk{i}", {"cannot_assess": {"code": "single_slice", "message": "x"}}).id for i in range(30)]
    head = [q.enqueue(f"head{i}", {"files": ["a"]}).id for i in range(2)]
    assert [q.claim("w").id for _ in range(2)] == head
    assert [q.claim("w").id for _ in range(30)] == junk


def test_verdict_and_analysis_claimers_take_only_their_kind(q):
    """The node's verdict lane (no model) takes only "cannot assess" reports, the analysis process only
    analyses: a burst of junk and a head CT are worked on at the same time, neither waits for the other."""
    from dicomnode.queue import Work

    junk = [q.enqueue(f"junk{i}", {"cannot_assess": {"code": "single_slice", "message": "x"}}).id for i in range(3)]
    head = q.enqueue("head", {"files": ["a"]}).id
    assert q.claim("verdicts", work=Work.VERDICT).id == junk[0]
    assert q.claim("analysis", work=Work.ANALYSIS).id == head
    assert q.claim("analysis", work=Work.ANALYSIS) is None          # the rest are verdicts: not for it
    assert [q.claim("verdicts", work=Work.VERDICT).id for _ in range(2)] == junk[1:]
    assert q.claim("verdicts", work=Work.VERDICT) is None


def test_lost_lease_is_refused(q, tmp_path):
    short = SQLiteQueue(tmp_path / "q.sqlite3", lease_s=0.1)
    job = short.enqueue("k", {})
    short.claim("w1")
    time.sleep(0.15)
    assert short.claim("w2").id == job.id  # expired lease re-claimed
    assert short.get(job.id).attempts == 1
    assert not short.heartbeat(job.id, "w1")
    with pytest.raises(QueueError, match="cannot mark encoded"):
        short.mark_encoded(job.id, "w1", "/x")
    assert short.heartbeat(job.id, "w2")


def test_recover_hands_back_previous_incarnation(q):
    a = q.enqueue("a", {})
    q.claim("node-1/worker-0")
    b = q.enqueue("b", {})
    q.claim("other/worker-0")
    assert q.recover("node-1/") == 1
    assert q.get(a.id).state is JobState.QUEUED
    assert q.get(b.id).state is JobState.RUNNING


def test_get_unknown_and_invalid_ids(q):
    with pytest.raises(QueueError, match="no job"):
        q.get("999")
    with pytest.raises(QueueError, match="integers"):
        q.get("abc")


def test_registry_knows_backends():
    assert backend_class("sqlite") is SQLiteQueue
    assert "celery" in BACKENDS
    with pytest.raises(QueueError, match="unknown queue backend"):
        backend_class("kafka")


def test_each_backend_owns_its_config_class(tmp_path):
    """[queue] is validated as the ``Config`` of its backend: the Celery keys belong to CeleryConfig; the
    embedded queue's config opens its file in the data directory and says when there is none yet."""
    from dicomnode.config import ConfigError, load_config
    from dicomnode.queue import open_queue
    from dicomnode.queue.celery import CeleryConfig, CeleryQueue
    from dicomnode.queue.sqlite import SQLiteConfig

    assert SQLiteQueue.Config is SQLiteConfig and CeleryQueue.Config is CeleryConfig
    cfg = load_config(None, env={"ICH_NODE__NODE__DATA_DIR": str(tmp_path), "ICH_NODE__QUEUE__MAX_ATTEMPTS": "2"})
    assert isinstance(cfg.queue, SQLiteConfig) and cfg.queue.backend == "sqlite" and cfg.queue.max_attempts == 2
    assert not hasattr(cfg.queue, "redis_url") and "redis_url" not in cfg.model_dump()["queue"]
    assert cfg.queue.absent(tmp_path) == f"no queue at {tmp_path / 'queue.sqlite3'}"
    q = open_queue(cfg)
    assert isinstance(q, SQLiteQueue) and q.path == tmp_path / "queue.sqlite3" and q.max_attempts == 2
    assert q.lease_s == cfg.queue.job_timeout_s + 60 and cfg.queue.absent(tmp_path) is None
    q.close()
    celery = load_config(None, env={"ICH_NODE__QUEUE__BACKEND": "celery", "ICH_NODE__QUEUE__WORKER_LEASE_S": "20",
                                    "ICH_NODE__QUEUE__REDIS_URL": "redis://r:6379/0"}).queue
    assert isinstance(celery, CeleryConfig) and celery.worker_lease_s == 20 and celery.absent(tmp_path) is None
    # a Celery key with the embedded queue is another backend's key, ignored as before; a misspelt one is an error
    sqlite = load_config(None, env={"ICH_NODE__QUEUE__REDIS_URL": "redis://r", "ICH_NODE__QUEUE__WORKER_LEASE_S": "5"})
    assert isinstance(sqlite.queue, SQLiteConfig)
    for env, key, why in [({"ICH_NODE__QUEUE__BACKEND": "kafka"}, "queue.backend", "unknown queue backend 'kafka'"),
                          ({"ICH_NODE__QUEUE__MAX_ATTEMPT": "3"}, "queue.max_attempt", "unknown key"),
                          ({"ICH_NODE__QUEUE__BACKEND": "celery"}, "queue", "needs redis_url"),
                          ({"ICH_NODE__QUEUE__BACKOFF_MAX_S": "1"}, "queue", "backoff_max_s is smaller")]:
        with pytest.raises(ConfigError) as err:
            load_config(None, env=env)
        [problem] = err.value.problems
        assert problem.key == key and why in problem.message, problem


def test_a_backend_registered_later_is_configured_by_its_own_config_class(tmp_path, monkeypatch):
    """A site's own backend: one module with a JobQueue and its Config, registered by name; [queue] then takes
    its keys, and the node opens it through its config, with no change to the node."""
    from dicomnode.config import ConfigError, load_config
    from dicomnode.queue import open_queue, register

    monkeypatch.setattr(BACKENDS, "entries", dict(BACKENDS.entries))  # the registration ends with the test
    register("toyq", f"{__name__}:ToyQueue")
    f = tmp_path / "node.toml"
    f.write_text(f'[node]\ndata_dir = "{tmp_path}"\n'
                 '[queue]\nbackend = "toyq"\nfile_name = "toy.db"\nmax_attempts = 3\n')
    cfg = load_config(f, env={})
    assert type(cfg.queue).__name__ == "ToyQueueConfig" and isinstance(cfg.queue, QueueConfig)
    q = open_queue(cfg)
    assert isinstance(q, ToyQueue) and q.path == tmp_path / "toy.db" and q.max_attempts == 3
    assert q.enqueue("k", {}).state is JobState.QUEUED
    q.close()
    # the toy's key with another backend is ignored (as the Celery keys are with "sqlite"); a misspelt one is not
    assert not hasattr(load_config(None, env={"ICH_NODE__QUEUE__FILE_NAME": "x.db"}).queue, "file_name")
    with pytest.raises(ConfigError, match="queue.file_nme: unknown key"):
        load_config(f, env={"ICH_NODE__QUEUE__FILE_NME": "x.db"})


class ToyQueueConfig(QueueConfig):
    backend: Literal["toyq"]
    file_name: str = "toy.sqlite3"  # a key only this backend has

    def open(self, data_dir: Path) -> "ToyQueue":
        return ToyQueue(Path(data_dir) / self.file_name, **self.queue_options())


class ToyQueue(SQLiteQueue):
    """The embedded queue under another name and file: a stand-in for a site's own backend."""

    Config = ToyQueueConfig


_CHILD = textwrap.dedent("""
    import sys, time
    from dicomnode.queue.sqlite import SQLiteQueue
    q = SQLiteQueue(sys.argv[1], lease_s=float(sys.argv[2]))
    job = q.claim("child")
    print(job.id, flush=True)
    time.sleep(60)
""")


def test_kill_9_while_running_job_is_claimed_again(tmp_path):
    path = tmp_path / "q.sqlite3"
    q = SQLiteQueue(path, lease_s=30)
    job = q.enqueue("k", {"x": 1})
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), "0.5"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == job.id
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    assert q.get(job.id).state is JobState.RUNNING
    assert q.claim("parent") is None  # lease still valid
    time.sleep(0.6)
    again = q.claim("parent")
    assert again.id == job.id and again.payload == {"x": 1} and again.attempts == 1


def test_two_processes_never_claim_the_same_job(tmp_path):
    path = tmp_path / "q.sqlite3"
    q = SQLiteQueue(path)
    for i in range(40):
        q.enqueue(f"k{i}", {})
    code = textwrap.dedent("""
        import sys
        from dicomnode.queue.sqlite import SQLiteQueue
        q = SQLiteQueue(sys.argv[1])
        while (job := q.claim(sys.argv[2])) is not None:
            print(job.id, flush=True)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), f"p{i}"], stdout=subprocess.PIPE, text=True)
             for i in range(2)]
    ids = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        ids += out.split()
    assert sorted(ids, key=int) == [str(i) for i in range(1, 41)]
