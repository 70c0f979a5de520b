"""The embedded (SQLite) queue beyond the shared contract (test_contract.py): lost leases, ids, the backend
registry and config classes, kill -9 survival (two processes claiming: test_contract.py)."""

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

from dicomnode.queue import BACKENDS, JobState, QueueConfig, QueueError, backend_class
from dicomnode.queue.sqlite import SQLiteQueue


@pytest.fixture
def q(sqlite_q):
    return sqlite_q  # this backend only (conftest's q runs the contract on both)


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
