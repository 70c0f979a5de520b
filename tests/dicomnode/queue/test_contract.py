"""The job queue's contract (``dicomnode.queue.base.JobQueue``), run unchanged against every backend: the
``q`` fixture (conftest.py) gives the embedded SQLite queue and the Celery queue on a real redis-server."""

from __future__ import annotations

import time

import pytest

from dicomnode.queue import JobState, QueueError, Stage, Work


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
    junk = [q.enqueue(f"junk{i}", {"cannot_assess": {"code": "single_slice", "message": "x"}}).id for i in range(3)]
    head = q.enqueue("head", {"files": ["a"]}).id
    assert q.claim("verdicts", work=Work.VERDICT).id == junk[0]
    assert q.claim("analysis", work=Work.ANALYSIS).id == head
    assert q.claim("analysis", work=Work.ANALYSIS) is None          # the rest are verdicts: not for it
    assert [q.claim("verdicts", work=Work.VERDICT).id for _ in range(2)] == junk[1:]
    assert q.claim("verdicts", work=Work.VERDICT) is None


def test_recover_hands_back_previous_incarnation(q):
    a = q.enqueue("a", {})
    q.claim("node-1/worker-0")
    b = q.enqueue("b", {})
    q.claim("other/worker-0")
    assert q.recover("node-1/") == 1
    assert q.get(a.id).state is JobState.QUEUED
    assert q.get(b.id).state is JobState.RUNNING


def test_two_processes_never_claim_the_same_job(q, queue_spec):
    """Two child processes, each with its own connection to the same queue (one SQLite file, one Redis),
    claim as fast as they can from the same moment on: every job is claimed exactly once."""
    ids = sorted(q.enqueue(f"k{i}", {}).id for i in range(30))
    claim_all = """
        print("ready", flush=True)
        sys.stdin.readline()                      # both start claiming together
        while (job := q.claim(sys.argv[2])) is not None:
            print(job.id, flush=True)
    """
    procs = [queue_spec.child(claim_all, f"p{i}") for i in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        claimed = []
        for p in procs:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0
            claimed += out.split()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert sorted(claimed) == ids                 # each job once: none twice, none lost
    assert q.counts()[JobState.RUNNING] == 30
    assert {q.get(i).lease_owner for i in ids} <= {"p0", "p1"}
