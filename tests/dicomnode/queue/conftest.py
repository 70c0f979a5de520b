"""Queue fixtures: a real redis-server for the Celery backend, and ``q``, one fresh queue per backend
(the contract tests in test_contract.py run against each; test_sqlite.py and test_celery.py pin their own).

Each queue is opened from a ``QueueSpec`` (``queue_spec``, ``sqlite_spec``, ``celery_spec``): the backend's
name and where its jobs live, plain data a child process gets on its command line and opens the same queue
with (``QueueSpec.CHILD``), for the tests that claim from several processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict, dataclass

import pytest

from dicomnode.queue import JobQueue, backend_class
from dicomnode.queue.base import Backoff
from tests.conftest import REPO, RedisServer

SETTINGS = dict(max_attempts=3, backoff=Backoff(base_s=0.2, max_s=1.0), lease_s=30)


@dataclass(frozen=True)
class QueueSpec:
    """One backend's queue, as a constructor that works in this process and in a child."""

    backend: str   # a name in dicomnode.queue.BACKENDS
    where: str     # the SQLite file or the Redis URL

    # the start of a child's script: ``q`` is the spec's queue (sys.argv[1] is the spec as JSON)
    CHILD = textwrap.dedent("""
        import json, sys
        from tests.dicomnode.queue.conftest import QueueSpec
        q = QueueSpec(**json.loads(sys.argv[1])).open()
    """)

    def open(self) -> JobQueue:
        return backend_class(self.backend)(self.where, **SETTINGS)

    def child(self, script: str, *args: str) -> subprocess.Popen:
        """A Python child that opens this queue as ``q`` and runs ``script`` (extra ``args`` from sys.argv[2])."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        return subprocess.Popen([sys.executable, "-c", self.CHILD + textwrap.dedent(script), json.dumps(asdict(self)),
                                 *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)


@pytest.fixture
def redis_server(tmp_path, free_port):
    server = RedisServer(tmp_path / "redis", free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    return redis_server.url


@pytest.fixture
def sqlite_spec(tmp_path):
    return QueueSpec("sqlite", str(tmp_path / "q.sqlite3"))


@pytest.fixture
def celery_spec(redis_url):
    return QueueSpec("celery", redis_url)


@pytest.fixture(params=["sqlite", "celery"])
def queue_spec(request):
    """Each backend in turn (for the contract tests)."""
    return request.getfixturevalue(f"{request.param}_spec")


def _opened(spec: QueueSpec):
    queue = spec.open()
    yield queue
    queue.close()


@pytest.fixture
def sqlite_q(sqlite_spec):
    yield from _opened(sqlite_spec)


@pytest.fixture
def celery_q(celery_spec):
    yield from _opened(celery_spec)


@pytest.fixture
def q(queue_spec):
    """One fresh queue of each backend in turn (for the contract tests)."""
    yield from _opened(queue_spec)
