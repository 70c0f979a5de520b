"""Completion sweep, crash windows, retention, disk check, and one-at-a-time scheduling."""

from __future__ import annotations

import threading
import time

import pytest

from dicomnode.index import Index, InstanceRecord
from dicomnode.queue import JobState
from dicomnode.queue.sqlite import SQLiteQueue
from dicomnode.scheduler import Decision, Housekeeper, NodeScheduler, Sweeper, study_key
from dicomnode.spool import Spool

STUDY = "1.2.826.0.1.3680043.10.1"


def rec(sop: str, series: str = STUDY + ".1", study: str = STUDY, sha: str = "a", n: int = 1) -> InstanceRecord:
    return InstanceRecord(sop_uid=sop, sop_class="1.2.840.10008.5.1.4.1.1.2", transfer_syntax="1.2.840.10008.1.2.1",
                          study_uid=study, series_uid=series, patient_hash="p1", modality="CT",
                          path=f"aa/bb/{sop}.dcm", digest=sha, size=10, instance_number=n)


class Env:
    def __init__(self, tmp_path, decision=Decision("analyze", series_uid=STUDY + ".1")):
        self.index = Index(tmp_path / "index.sqlite3")
        self.spool = Spool(tmp_path / "spool")
        self.queue = SQLiteQueue(tmp_path / "queue.sqlite3")
        self.decision = decision
        self.calls = 0
        self.sweeper = Sweeper(self.index, self.queue, self.spool.abspath, self.decide, quiet_seconds=10)

    def decide(self, study_uid, series):
        self.calls += 1
        return self.decision


def test_quiet_period_then_one_job_with_spool_files(tmp_path):
    env = Env(tmp_path)
    for i in range(3):
        env.index.record_instance(rec(f"{STUDY}.1.{i}", n=i), now=100 + i)
    assert env.sweeper.sweep(now=105) == 0 and env.calls == 0
    assert env.sweeper.sweep(now=113) == 1
    [job] = env.queue.list()
    assert job.state is JobState.QUEUED and job.key == study_key(STUDY) and STUDY not in job.key
    assert job.payload["files"] == [str(tmp_path / "spool" / "aa" / "bb" / f"{STUDY}.1.{i}.dcm") for i in range(3)]
    assert job.payload["last_received_at"] == 102
    assert env.sweeper.sweep(now=200) == 0  # claimed: not swept twice
    assert env.index.series(STUDY + ".1").state == "queued"


def test_late_instance_after_analysis_makes_a_second_job(tmp_path):
    env = Env(tmp_path)
    env.index.record_instance(rec(f"{STUDY}.1.1"), now=100)
    env.sweeper.sweep(now=111)
    first = env.queue.claim("w")
    env.index.record_instance(rec(f"{STUDY}.1.2", n=2), now=120)  # while the first analysis runs
    assert env.sweeper.sweep(now=131) == 1
    jobs = env.queue.list()
    assert len(jobs) == 2 and jobs[0].id != first.id and len(jobs[0].payload["files"]) == 2
    assert env.queue.claim("w2") is None  # waits for the running analysis of the same study


def test_ignored_study_gets_no_job_and_keeps_the_reason(tmp_path):
    env = Env(tmp_path, Decision("ignore", reason="not a head CT: BodyPartExamined CHEST"))
    env.index.record_instance(rec(f"{STUDY}.1.1"), now=100)
    assert env.sweeper.sweep(now=111) == 0
    assert env.queue.list() == []
    s = env.index.series(STUDY + ".1")
    assert s.state == "ignored" and "CHEST" in s.note


def test_cannot_assess_is_queued_with_its_code(tmp_path):
    env = Env(tmp_path, Decision("cannot_assess", series_uid=STUDY + ".1", code="missing_slices",
                                 reason="gap of 15 mm between slices 4 and 5"))
    env.index.record_instance(rec(f"{STUDY}.1.1"), now=100)
    env.sweeper.sweep(now=111)
    [job] = env.queue.list()
    assert job.payload["cannot_assess"] == {"code": "missing_slices", "message": "gap of 15 mm between slices 4 and 5"}


def test_lost_race_keeps_job_held_and_next_sweep_reuses_it(tmp_path, monkeypatch):
    env = Env(tmp_path)
    env.index.record_instance(rec(f"{STUDY}.1.1"), now=100)
    real = env.index.claim_study
    monkeypatch.setattr(env.index, "claim_study", lambda *a, **k: None)  # an instance arrived meanwhile
    assert env.sweeper.sweep(now=111) == 0
    [held] = env.queue.list()
    assert held.state is JobState.RECEIVED and env.queue.claim("w") is None
    monkeypatch.setattr(env.index, "claim_study", real)
    assert env.sweeper.sweep(now=112) == 1
    [job] = env.queue.list()
    assert job.id == held.id and job.state is JobState.QUEUED


def test_recover_releases_held_job_of_a_claimed_study(tmp_path, monkeypatch):
    """Crash after the index claim but before the job was released."""
    env = Env(tmp_path)
    env.index.record_instance(rec(f"{STUDY}.1.1"), now=100)
    monkeypatch.setattr(env.queue, "enqueue", _only_first_call(env.queue.enqueue))
    with pytest.raises(SystemExit):
        env.sweeper.sweep(now=111)
    [held] = env.queue.list()
    assert held.state is JobState.RECEIVED
    monkeypatch.undo()
    fresh = Sweeper(env.index, env.queue, env.spool.abspath, env.decide, quiet_seconds=10)
    assert fresh.recover() == 1
    assert env.queue.get(held.id).state is JobState.QUEUED


def _only_first_call(fn):
    state = {"n": 0}

    def wrapped(*a, **k):
        state["n"] += 1
        if state["n"] > 1:
            raise SystemExit("simulated crash")  # not an Exception: escapes like a kill
        return fn(*a, **k)

    return wrapped


def test_retention_removes_old_analysed_series_files_and_rows(tmp_path):
    env = Env(tmp_path)
    rel = env.spool.relpath(STUDY, STUDY + ".1", STUDY + ".1.1")
    env.spool.write(rel, [b"DICM"])
    r = rec(STUDY + ".1.1")
    env.index.record_instance(InstanceRecord(**{**r.__dict__, "path": rel}), now=time.time() - 40 * 86400)
    keeper = Housekeeper(env.index, env.spool.remove, tmp_path, retention_days=30, min_free_bytes=0)
    assert keeper.cleanup() == 0  # still waiting for analysis: kept
    env.sweeper.sweep()
    env.index.mark_series_analyzed(STUDY + ".1")
    assert keeper.cleanup() == 1
    assert not env.spool.abspath(rel).exists() and env.index.counts()["instances"] == 0


def test_retention_prunes_delivered_results_nothing_can_need(tmp_path):
    """Superseded and orphaned delivered results go; the study's current result, results not yet
    delivered, dead jobs and anything outside the results tree stay."""
    env = Env(tmp_path)
    root = tmp_path / "results"
    keeper = Housekeeper(env.index, env.spool.remove, tmp_path, retention_days=30, min_free_bytes=0,
                         queue=env.queue, results_root=root)

    def finished(study, name, sent=True, folder=None):
        job = env.queue.enqueue(study_key(study), {"study_uid": study})
        env.queue.claim("w")
        out = folder or root / name
        (out / "sr").mkdir(parents=True)
        env.queue.mark_encoded(job.id, "w", str(out))
        if sent:
            env.queue.complete(job.id)
        return out

    kept_study = STUDY + ".7"
    env.index.record_instance(rec(kept_study + ".1.1", series=kept_study + ".1", study=kept_study), now=time.time())
    old = finished(kept_study, "k")                                     # superseded by the next one
    current = finished(kept_study, "c")
    orphan = finished(STUDY + ".8", "o")                                # its images are gone from the spool
    pending = finished(STUDY + ".9", "p", sent=False)                   # encoded, not delivered yet
    outside = finished(STUDY + ".10", "x", folder=tmp_path / "elsewhere")
    later = time.time() + 40 * 86400
    assert keeper.prune_results(now=time.time()) == 0                   # nothing past retention yet
    assert keeper.prune_results(now=later) == 2
    assert not old.exists() and not orphan.exists()
    assert current.exists() and pending.exists() and outside.exists()


def test_disk_check_states(tmp_path):
    env = Env(tmp_path)
    assert Housekeeper(env.index, env.spool.remove, tmp_path, 30, 0).disk_check()["state"] == "ok"
    assert Housekeeper(env.index, env.spool.remove, tmp_path, 30, 1 << 62).disk_check()["state"] == "full"


def test_scheduler_never_overlaps_a_slow_job():
    running, peak, runs = [0], [0], [0]
    lock = threading.Lock()

    def slow():
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            runs[0] += 1
        time.sleep(0.6)
        with lock:
            running[0] -= 1

    def boom():
        raise RuntimeError("logged, not fatal")

    s = NodeScheduler(sweep=slow, sweep_s=0.1, retries=boom, retry_s=0.1, cleanup=lambda: None,
                      cleanup_cron="30 3 * * *", disk_check=lambda: None, disk_s=60)
    assert set(s.jobs()) == {"sweep", "retries", "cleanup", "disk_check"}
    s.start()
    try:
        time.sleep(2.5)
    finally:
        s.shutdown()
    assert peak[0] == 1 and 2 <= runs[0] <= 5  # due every 0.1 s, yet never two at once
