"""The Celery backend against a real redis-server beyond the shared contract (test_contract.py): tokens,
leases, re-publishing, verdicts the node writes itself (two processes claiming: test_contract.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dicomnode.queue import JobState, QueueError, Work, backend_class
from tests.conftest import RedisServer


@pytest.fixture
def q(celery_q):
    return celery_q  # this backend only (conftest's q runs the contract on both)


def tokens(url: str) -> list[str]:
    """Job ids of the analysis tokens waiting in the broker queue, oldest first."""
    import base64
    import json

    import redis

    from dicomnode.queue.celery import TASK_QUEUE

    out = []
    for raw in reversed(redis.Redis.from_url(url).lrange(TASK_QUEUE, 0, -1)):  # LPUSHed: newest first
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        out.append(args[0])
    return out


def test_registry_opens_celery_from_config(redis_url):
    from dicomnode.config import NodeConfig
    from dicomnode.queue import open_queue
    from dicomnode.queue.celery import CeleryQueue

    assert backend_class("celery") is CeleryQueue
    cfg = NodeConfig.model_validate({"queue": {"backend": "celery", "redis_url": redis_url}})
    q = open_queue(cfg)
    assert isinstance(q, CeleryQueue) and not q.needs_local_workers
    assert q.counts() == {s: 0 for s in JobState}


def test_bad_url_and_unreachable_redis_are_queue_errors(free_port):
    from dicomnode.queue.celery import CeleryQueue

    with pytest.raises(QueueError, match="redis:// URL"):
        CeleryQueue("amqp://x")
    q = CeleryQueue(f"redis://:secret@127.0.0.1:{free_port()}/0")
    with pytest.raises(QueueError, match="unavailable") as err:
        q.counts()
    assert "secret" not in str(err.value)


def test_enqueue_publishes_one_token_per_due_job(q, redis_url):
    a = q.enqueue("a", {})
    q.enqueue("a", {"n": 2})          # coalesced into the queued job: no second token
    held = q.enqueue("b", {}, delay_s=60)
    assert tokens(redis_url) == [a.id]
    q.enqueue("b", {})                # released: now due
    assert tokens(redis_url) == [a.id, held.id]


def test_verdicts_the_node_writes_itself_get_no_token(q, redis_url):
    """With the node's verdict lane (``verdicts_local``) the workers' FIFO holds analyses only: a burst of
    "cannot assess" jobs sends no token and is not re-published; a verdict that becomes an analysis (the
    rest of the study arrived) gets its token then."""
    q.verdicts_local = True
    q.republish_after_s = 0.0
    verdict = {"cannot_assess": {"code": "single_slice", "message": "x"}}
    junk = [q.enqueue(f"junk{i}", verdict) for i in range(3)]
    head = q.enqueue("head", {"files": ["a"]})
    assert tokens(redis_url) == [head.id]
    late = q.enqueue("junk0", {"files": ["a", "b"]})   # coalesced: same job, now an analysis
    assert late.id == junk[0].id and tokens(redis_url) == [head.id, junk[0].id]
    import redis

    from dicomnode.queue.celery import TASK_QUEUE

    redis.Redis.from_url(redis_url).delete(TASK_QUEUE)
    q.maintain()
    assert sorted(tokens(redis_url)) == sorted([head.id, junk[0].id])   # never the verdicts
    assert {q.claim("lane", work=Work.VERDICT).id for _ in range(2)} == {junk[1].id, junk[2].id}


def test_claim_job_is_exclusive_and_serialised_per_study(q):
    a = q.enqueue("k", {})
    assert q.claim_job(a.id, "w1").state is JobState.RUNNING
    assert q.claim_job(a.id, "w2") is None            # a duplicate token: no second run
    b = q.enqueue("k", {"late": True})                # new instances while it runs
    assert b.id != a.id and q.claim_job(b.id, "w2") is None  # same study: waits for a
    q.mark_encoded(a.id, "w1", "/r/a")
    assert q.claim_job(b.id, "w2").id == b.id
    assert q.latest_result("k", before=b.id).id == a.id
    assert q.claim_job("404", "w2") is None


def test_expired_lease_is_claimed_again_and_counts_an_attempt(redis_url):
    from dicomnode.queue.celery import CeleryQueue

    q = CeleryQueue(redis_url, max_attempts=2, lease_s=0.2)
    job = q.enqueue("k", {})
    q.claim_job(job.id, "w1")
    assert q.claim_job(job.id, "w2") is None
    time.sleep(0.3)
    again = q.claim_job(job.id, "w2")
    assert again.lease_owner == "w2" and again.attempts == 1
    assert not q.heartbeat(job.id, "w1") and q.heartbeat(job.id, "w2")
    with pytest.raises(QueueError, match="cannot mark encoded"):
        q.mark_encoded(job.id, "w1", "/x")
    time.sleep(0.3)
    assert q.claim_job(job.id, "w3") is None          # lost twice: dead letter
    dead = q.get(job.id)
    assert dead.state is JobState.DEAD and "worker lost" in dead.last_error
    assert [j.id for j in q.last_errors()] == [job.id]


def test_maintain_republishes_lost_and_expired_work(q, redis_url):
    import redis

    from dicomnode.queue.celery import TASK_QUEUE

    q.republish_after_s = 0.2
    a = q.enqueue("a", {})
    r = redis.Redis.from_url(redis_url)
    r.delete(TASK_QUEUE)                               # the token is lost (e.g. Redis restored from an old AOF)
    assert q.maintain() == 0                           # a token was sent recently: maybe still on its way
    time.sleep(0.25)
    assert q.maintain() == 1 and tokens(redis_url) == [a.id]
    q.claim_job(a.id, "w1", lease_s=0.2)               # its worker dies: lease expires
    assert q.maintain() == 0
    time.sleep(0.25)
    assert q.maintain() == 1
    assert q.claim_job(a.id, "w2").attempts == 1


def test_jobs_survive_a_redis_restart(tmp_path, free_port):
    from dicomnode.queue.celery import CeleryQueue

    server = RedisServer(tmp_path / "r", free_port()).start()
    try:
        q = CeleryQueue(server.url, max_attempts=3)
        job = q.enqueue("k", {"files": ["a"]})
        q.claim_job(job.id, "w")
        q.fail(job.id, "w", "boom", retryable=False)
        import redis

        redis.Redis.from_url(server.url).execute_command("BGREWRITEAOF")
        time.sleep(1.2)  # appendfsync everysec
        server.stop()
        server.start()
        again = CeleryQueue(server.url)
        assert again.get(job.id).state is JobState.DEAD and again.get(job.id).payload == {"files": ["a"]}
        assert again.counts()[JobState.DEAD] == 1
    finally:
        server.stop()


def test_status_and_jobs_cli_show_celery_dead_letters(q, redis_url, tmp_path):
    job = q.enqueue("k", {"files": []})
    q.claim_job(job.id, "w")
    q.fail(job.id, "w", "no series", retryable=False)
    env = {**os.environ, "ICH_NODE__QUEUE__BACKEND": "celery", "ICH_NODE__QUEUE__REDIS_URL": redis_url}
    exe = Path(sys.executable).with_name("ich-node")
    status = subprocess.run([str(exe), "status", "--json", "--data-dir", str(tmp_path)], capture_output=True,
                            text=True, env=env, timeout=120)
    assert status.returncode == 0, status.stderr
    import json

    info = json.loads(status.stdout)
    assert info["queue"]["dead"] == 1 and info["errors"][0]["error"] == "no series"
    listed = subprocess.run([str(exe), "jobs", "list", "--state", "dead", "--json", "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert [j["id"] for j in json.loads(listed.stdout)] == [job.id]
    retried = subprocess.run([str(exe), "jobs", "retry", job.id, "--data-dir", str(tmp_path)], capture_output=True,
                             text=True, env=env, timeout=120)
    assert retried.returncode == 0, retried.stderr
    assert q.get(job.id).state is JobState.QUEUED


_DOUBLE = textwrap.dedent('''
    """Test double of pipeline.analyze.Analyzer: counts model loads, sleeps, writes a result."""
    import os, time
    from pathlib import Path
    from pipeline.result import AnalysisResult, Status

    class Analyzer:
        def __init__(self, models):
            print(f"MODEL LOAD pid={os.getpid()}", flush=True)

        def analyze(self, files, out_dir, predecessor=None):
            time.sleep(float(os.environ.get("DOUBLE_SLEEP", "0")))
            result = AnalysisResult(status=Status.ANALYZED, outputs={})
            result.write(Path(out_dir))
            return result
''')


def test_worker_loads_models_once_per_process_and_survives_a_killed_pool_process(tmp_path, redis_url):
    """`ich-node worker`: a pool process killed mid-job is replaced (and loads the models once); the job
    is re-run after its lease expires; later jobs reuse the loaded models."""
    from dicomnode.queue.celery import CeleryQueue

    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "double_analyzer.py").write_text(_DOUBLE)
    spool_file = tmp_path / "var" / "spool" / "x.dcm"
    spool_file.parent.mkdir(parents=True)
    spool_file.write_bytes(b"not read by the double")
    env = {**os.environ, "ICH_NODE__QUEUE__BACKEND": "celery", "ICH_NODE__QUEUE__REDIS_URL": redis_url,
           "ICH_NODE__QUEUE__WORKER_LEASE_S": "3", "ICH_NODE__WORKER__ANALYZER": "double_analyzer:Analyzer",
           "ICH_NODE__NODE__DATA_DIR": str(tmp_path / "var"), "DOUBLE_SLEEP": "3",
           "PYTHONPATH": os.pathsep.join([str(mods), os.environ.get("PYTHONPATH", "")])}
    log = tmp_path / "worker.log"
    exe = Path(sys.executable).with_name("ich-node")
    worker = subprocess.Popen([str(exe), "worker", "-j", "1", "-n", "t@test"], stdout=open(log, "ab"),
                              stderr=subprocess.STDOUT, env=env, start_new_session=True)
    q = CeleryQueue(redis_url, lease_s=3)

    def wait(pred, timeout=120.0):
        end = time.monotonic() + timeout
        while not (value := pred()):
            assert worker.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < end, log.read_text()[-3000:]
            time.sleep(0.1)
        return value

    try:
        wait(lambda: "ready (models" in log.read_text())
        a = q.enqueue("study-a", {"files": [str(spool_file)]})
        running = wait(lambda: q.get(a.id).state is JobState.RUNNING and q.get(a.id))
        os.kill(int(running.lease_owner.rsplit("-", 1)[1]), signal.SIGKILL)  # the pool process, not the worker
        wait(lambda: log.read_text().count("ready (models") == 2)       # replaced, models loaded again
        wait(lambda: q.maintain() >= 0 and q.get(a.id).state is JobState.ENCODED, 60)  # lease expired → re-run
        assert q.get(a.id).last_error == "previous worker lost (lease expired)"
        for key in ("study-b", "study-c"):
            job = q.enqueue(key, {"files": [str(spool_file)]})
            wait(lambda: q.get(job.id).state is JobState.ENCODED, 60)
        assert log.read_text().count("MODEL LOAD") == 2  # one per pool process, not per job
        assert worker.poll() is None
    finally:
        os.kill(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(worker.pid, signal.SIGKILL)
