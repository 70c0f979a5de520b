"""Queue fixtures: a real redis-server for the Celery backend, and ``q``, one fresh queue per backend
(the contract tests in test_contract.py run against each; test_sqlite.py and test_celery.py pin their own)."""

from __future__ import annotations

import pytest

from dicomnode.queue.base import Backoff
from tests.conftest import RedisServer

SETTINGS = dict(max_attempts=3, backoff=Backoff(base_s=0.2, max_s=1.0), lease_s=30)


@pytest.fixture
def redis_server(tmp_path, free_port):
    server = RedisServer(tmp_path / "redis", free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    return redis_server.url


@pytest.fixture
def sqlite_q(tmp_path):
    from dicomnode.queue.sqlite import SQLiteQueue

    queue = SQLiteQueue(tmp_path / "q.sqlite3", **SETTINGS)
    yield queue
    queue.close()


@pytest.fixture
def celery_q(redis_url):
    from dicomnode.queue.celery import CeleryQueue

    queue = CeleryQueue(redis_url, **SETTINGS)
    yield queue
    queue.close()


@pytest.fixture(params=["sqlite", "celery"])
def q(request):
    """One fresh queue of each backend in turn (for the contract tests)."""
    return request.getfixturevalue(f"{request.param}_q")
