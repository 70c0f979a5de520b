"""Retention, disk check, and one-at-a-time scheduling (the sweep itself: tests/dicomnode/select)."""

from __future__ import annotations

import threading
import time

import pytest

from dicomnode.store.index import InstanceRecord
from dicomnode.queue import JobState
from dicomnode.scheduler import Housekeeper, NodeScheduler
from dicomnode.select import study_key
from sweep_env import STUDY, Env, rec

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


def test_a_release_sweep_runs_when_the_grace_is_over_even_if_a_regular_one_was_due_sooner():
    """A regular sweep due inside the release grace would find the grace not over yet, and the next one
    would come a whole interval later (seen: +2 s on a 164-slice study); run_soon moves it to the end."""
    runs = []
    s = NodeScheduler(sweep=lambda: runs.append(time.monotonic()), sweep_s=2.0, retries=lambda: None,
                      retry_s=60, cleanup=lambda: None, cleanup_cron="30 3 * * *", disk_check=lambda: None, disk_s=60)
    s.start()
    try:
        time.sleep(0.3)
        runs.clear()
        s.run_soon("sweep", 0.1)                     # a run due before the grace is over ...
        t0 = time.monotonic()
        s.run_soon("sweep", 0.8)                     # ... the release asks for one at the end of it
        time.sleep(1.3)
    finally:
        s.shutdown()
    assert len(runs) == 1 and 0.7 <= runs[0] - t0 <= 1.2, [r - t0 for r in runs]
