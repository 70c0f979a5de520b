"""Issue 15, part 1: a study starts when its sender releases the association, not after the quiet period.

Real dcmtk ``storescu`` senders → the wired node (real SCP, index, selection, sweep, scheduler) with the
5 mm phantom. The quiet period is set long (8 s) so that what starts earlier can only have started on
release. The analysis is a stand-in that refuses (what is asserted is when and why the job was made).
"""

from __future__ import annotations

import shutil
import textwrap
import time
from pathlib import Path

import pytest

from dicomnode.service import Node
from tests.conftest import small_config

pytestmark = pytest.mark.integration

QUIET_S = 8.0

REFUSE = textwrap.dedent('''
    class Refuse:
        """Analysis stand-in: these tests look at when the job was made, not at its result."""
        def __init__(self, models):
            pass

        def analyze(self, files, out_dir, predecessor=None):
            raise ValueError("not analysed in this test")
''')


@pytest.fixture
def node(tmp_path, free_port, monkeypatch):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "refuse_analyzer.py").write_text(REFUSE)
    monkeypatch.syspath_prepend(str(mods))
    cfg = small_config()
    cfg.node.data_dir = tmp_path / "var"
    cfg.node.host = "127.0.0.1"
    cfg.node.port = free_port()
    cfg.storage.min_free_bytes = 0
    cfg.selection.quiet_seconds = QUIET_S
    cfg.worker.analyzer = "refuse_analyzer:Refuse"
    cfg.metrics.enabled = False
    n = Node(cfg).start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture
def phantom(ct_data) -> list[Path]:
    return sorted(p for p in (ct_data / "philips-phantom-5mm").iterdir() if p.name != "DIRFILE")


def _folder(tmp_path: Path, files: list[Path], name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    for p in files:
        shutil.copy(p, d / p.name)
    return d


def _send(dcmtk, node, path: Path) -> float:
    r = dcmtk("storescu", "-aec", "ICHNODE", "+sd", "127.0.0.1", node.config.node.port, path)
    assert r.returncode == 0, r.stderr
    return time.time()


def _job(node, timeout: float):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        jobs = node.queue.list()
        if jobs:
            return jobs[0]
        time.sleep(0.1)
    return None


def test_one_association_with_the_whole_series_starts_within_seconds(tmp_path, node, phantom, dcmtk):
    done = _send(dcmtk, node, _folder(tmp_path, phantom, "series"))
    job = _job(node, QUIET_S - 2)
    assert job is not None, "no job before the quiet period: release did not complete the study"
    assert job.payload["completed"] == "release" and len(job.payload["files"]) == len(phantom)
    assert job.created_at - done < 3.0   # grace 1 s + one sweep; the quiet period would be 8 s
    assert node.sweeper.stats["on_release"] == 1


def test_one_instance_per_association_waits_for_the_quiet_period(tmp_path, node, phantom, dcmtk):
    for p in phantom:
        done = _send(dcmtk, node, p)
    assert _job(node, QUIET_S - 3) is None
    job = _job(node, 6)
    assert job is not None and job.payload["completed"] == "quiet"
    assert job.created_at - done >= QUIET_S - 0.5


def test_series_split_over_two_associations_waits_for_the_quiet_period(tmp_path, node, phantom, dcmtk):
    half = len(phantom) // 2
    _send(dcmtk, node, _folder(tmp_path, phantom[:half], "first"))
    done = _send(dcmtk, node, _folder(tmp_path, phantom[half:], "second"))
    assert _job(node, QUIET_S - 3) is None
    job = _job(node, 6)
    assert job is not None and job.payload["completed"] == "quiet"
    assert job.created_at - done >= QUIET_S - 0.5 and len(job.payload["files"]) == len(phantom)


def test_a_series_with_a_missing_slice_is_not_judged_on_release(tmp_path, node, phantom, dcmtk):
    """Missing slice: "cannot assess" is a verdict sent to the radiologist; it waits for the quiet period."""
    done = _send(dcmtk, node, _folder(tmp_path, phantom[:10] + phantom[11:], "gap"))
    assert _job(node, QUIET_S - 3) is None
    job = _job(node, 6)
    assert job is not None and job.payload["cannot_assess"]["code"] == "missing_slices"
    assert job.created_at - done >= QUIET_S - 0.5
