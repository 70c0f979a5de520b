"""Fixtures shared by the node's tests (tests/dicomnode/**).

- ``data_dir``: a node data directory whose queue holds job 1 (sent; its ``seg.dcm`` confirmed by
  destination ``pacs`` in the ledger) and job 2 (dead: "analysis process died (exit code -9)"), for the
  admin CLI's listings.
- ``series_dir``: (folder with the 5 mm phantom minus its last slice, folder with that late slice).
"""

from __future__ import annotations

import shutil
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


@pytest.fixture
def series_dir(ct_data, tmp_path):
    """The 5 mm phantom without its DICOMDIR, minus one slice kept back as the 'late instance'."""
    d = tmp_path / "series"
    d.mkdir()
    files = sorted(p for p in (ct_data / "philips-phantom-5mm").iterdir() if p.name != "DIRFILE")
    for p in files[:-1]:
        shutil.copy(p, d / p.name)
    late = tmp_path / "late"
    late.mkdir()
    shutil.copy(files[-1], late / files[-1].name)
    return d, late
