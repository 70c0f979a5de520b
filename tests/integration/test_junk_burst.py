"""Issue 15, part 5: a burst of junk does not hold a real head CT behind it.

A PACS re-sending a day of traffic: 100 single-slice head "studies" (coded "cannot assess" verdicts),
then one real head CT, each pushed by dcmtk ``storescu`` into the wired node (real SCP, index,
selection, queue, a dcmtk ``storescp`` as the destination). The node writes the verdicts itself
(``LocalVerdicts``: no model), so the analysis process — the test double ``FakeAnalyzer``, 1 s per
study, which would report any study it gets as "analyzed" — starts the head CT at once, and every junk
study still gets, and delivers, its coded SR.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnode.queue import JobState
from dicomnode.service import Node
from tests.conftest import StoreSCP, node_config, wait_for

pytestmark = pytest.mark.integration

JUNK = 100


def _junk(src: Path, out: Path) -> None:
    """``JUNK`` one-slice studies (new study/series/SOP UIDs): a day of stray single images."""
    out.mkdir()
    for i in range(JUNK):
        ds = pydicom.dcmread(src)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(out / f"junk{i:03d}.dcm")


def _result(job) -> dict:
    return json.loads((Path(job.result_dir) / "result.json").read_text())


def test_a_head_ct_after_a_burst_of_junk_is_analysed_at_once(tmp_path, fake_module, free_port, ct_data, dcmtk,
                                                             monkeypatch):
    monkeypatch.setenv("FAKE_SLEEP", "1")
    slices = sorted(p for p in (ct_data / "philips-phantom-5mm").iterdir() if p.name != "DIRFILE")
    _junk(slices[10], tmp_path / "junk")
    head = tmp_path / "head"
    head.mkdir()
    for p in slices:
        shutil.copy(p, head / p.name)
    peer = StoreSCP(tmp_path).start()
    node = Node(node_config(tmp_path, free_port(), peer.port)).start()
    try:
        port = node.config.node.port
        assert dcmtk("storescu", "-aec", "ICHNODE", "+sd", "127.0.0.1", port, tmp_path / "junk").returncode == 0
        # the junk is judged and queued first (quiet period 1 s), then the head CT arrives
        wait_for(lambda: len(node.queue.list(limit=1000)) >= JUNK, 60, what="junk queued")
        assert dcmtk("storescu", "-aec", "ICHNODE", "+sd", "127.0.0.1", port, head).returncode == 0
        sent_at = time.time()

        def head_job():
            return [j for j in node.queue.list(limit=1000) if not j.payload.get("cannot_assess") and j.result_dir]

        job = wait_for(head_job, 30, what="head CT analysed")[0]
        analysed_at = (Path(job.result_dir) / "result.json").stat().st_mtime
        assert analysed_at - sent_at < 10.0    # release grace + a sweep + 1 s analysis; not behind 100 verdicts
        assert _result(job)["status"] == "analyzed" and len(job.payload["files"]) == len(slices)

        def all_sent():
            jobs = node.queue.list(limit=1000)
            return len(jobs) == JUNK + 1 and all(j.state is JobState.SENT for j in jobs) and jobs

        jobs = wait_for(all_sent, 120, what="every study delivered")
        verdicts = [j for j in jobs if j.payload.get("cannot_assess")]
        assert len(verdicts) == JUNK
        for v in verdicts:                     # written by the node: the analysis double would say "analyzed"
            result = _result(v)
            assert result["status"] == "cannot_assess" and result["reason"].startswith("single_slice"), result
        assert peer.stores() == JUNK + 2       # one SR per junk study; SEG + SR of the head CT
    finally:
        node.stop()
        peer.stop()
