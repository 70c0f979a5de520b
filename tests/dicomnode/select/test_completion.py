"""The completion sweep: quiet period, early start on release, crash windows."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dicomnode.queue import JobState
from dicomnode.select import Decision, Sweeper, study_key
from sweep_env import STUDY, Env, rec


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


# -- complete on release ------------------------------------------------------------------------------

COMPLETE = Decision("analyze", series_uid=STUDY + ".1", complete=True)


def _with_ae(r, ae):
    return replace(r, calling_ae=ae)


def _three(env, t0=100.0, series=STUDY + ".1", ae="CT1"):
    for i in range(3):
        env.index.record_instance(_with_ae(rec(f"{series}.{i}", series=series, n=i), ae), now=t0 + i)


def test_released_complete_series_starts_after_the_grace_not_the_quiet_period(tmp_path):
    env = Env(tmp_path, COMPLETE, release_grace_s=1.0)
    _three(env)
    assert env.index.mark_released("CT1", since=99.5, now=102.5) == 1
    assert env.sweeper.sweep(now=103.0) == 0                   # within the grace: a next association may follow
    assert env.sweeper.sweep(now=103.6) == 1                   # 1.1 s after the last image, not 10 s
    [job] = env.queue.list()
    assert job.payload["completed"] == "release" and env.sweeper.stats["on_release"] == 1


def test_incomplete_geometry_waits_for_the_quiet_period_and_is_judged_once(tmp_path):
    env = Env(tmp_path, Decision("analyze", series_uid=STUDY + ".1", complete=False), release_grace_s=1.0)
    _three(env)
    env.index.mark_released("CT1", since=99.5, now=102.5)
    assert env.sweeper.sweep(now=104) == 0 and env.calls == 1
    assert env.sweeper.sweep(now=105) == 0 and env.calls == 1   # remembered: not re-read every sweep
    assert env.sweeper.sweep(now=112.5) == 1                     # the quiet period still completes it
    assert env.queue.list()[0].payload["completed"] == "quiet"


@pytest.mark.parametrize("decision", [Decision("cannot_assess", series_uid=STUDY + ".1", code="missing_slices"),
                                      Decision("ignore", reason="not a head CT")])
def test_no_early_verdict_that_is_not_an_analysis(tmp_path, decision):
    env = Env(tmp_path, decision, release_grace_s=1.0)
    _three(env)
    env.index.mark_released("CT1", since=99.5, now=102.5)
    assert env.sweeper.sweep(now=104) == 0
    assert env.index.series(STUDY + ".1").state == "receiving"   # not claimed, not ignored yet


def test_series_begun_by_an_earlier_association_is_not_marked(tmp_path):
    """One image per association (or a series spread over several): only the quiet period completes it."""
    env = Env(tmp_path, COMPLETE, release_grace_s=1.0)
    _three(env)
    assert env.index.mark_released("CT1", since=101.5, now=102.5) == 0
    assert env.sweeper.sweep(now=104) == 0 and env.calls == 0


def test_an_instance_after_the_release_cancels_the_hint(tmp_path):
    env = Env(tmp_path, COMPLETE, release_grace_s=1.0)
    _three(env)
    env.index.mark_released("CT1", since=99.5, now=102.5)
    env.index.record_instance(_with_ae(rec(f"{STUDY}.1.9", n=9), "CT1"), now=103.0)   # another association
    assert env.sweeper.sweep(now=104) == 0 and env.calls == 0


def test_every_changed_series_of_the_study_must_be_released(tmp_path):
    env = Env(tmp_path, COMPLETE, release_grace_s=1.0)
    _three(env)
    _three(env, t0=100.5, series=STUDY + ".2", ae="PACS")       # another sender, still open
    env.index.mark_released("CT1", since=99.5, now=102.5)
    assert env.sweeper.sweep(now=104) == 0
    env.index.mark_released("PACS", since=100.0, now=104.0)
    assert env.sweeper.sweep(now=105.1) == 1


def test_release_hints_off_means_quiet_period_only(tmp_path):
    env = Env(tmp_path, COMPLETE, release_grace_s=None)
    _three(env)
    env.index.mark_released("CT1", since=99.5, now=102.5)
    assert env.sweeper.sweep(now=104) == 0 and env.calls == 0
