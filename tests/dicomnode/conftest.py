"""Fixtures shared by the node's tests (tests/dicomnode/**).

- ``data_dir``: a node data directory whose queue holds job 1 (sent; its ``seg.dcm`` confirmed by
  destination ``pacs`` in the ledger) and job 2 (dead: "analysis process died (exit code -9)"), for the
  admin CLI's listings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import small_config


@pytest.fixture
def data_dir(tmp_path) -> Path:
    from dicomnode.deliver.ledger import Ledger
    from dicomnode.queue import open_queue

    cfg = small_config()
    cfg.node.data_dir = tmp_path / "var"
    cfg.queue.max_attempts = 1
    q = open_queue(cfg)
    sent = q.enqueue("a" * 32, {"files": ["/x/1.dcm"], "study_uid": "1.2.3"})
    q.claim("w")
    q.mark_encoded(sent.id, "w", str(tmp_path / "r"))
    q.claim("s", stage="send")
    q.complete(sent.id, "s")
    dead = q.enqueue("b" * 32, {"files": []})
    q.claim("w")
    q.fail(dead.id, "w", "analysis process died (exit code -9)")
    Ledger(cfg.ledger_path).record_delivered(sent.id, "pacs", "seg.dcm")
    return tmp_path / "var"
