"""Issue 15, part 5: a burst of junk does not hold a real head CT behind it.

A PACS re-sending a day of traffic: 100 single-slice head "studies" (coded "cannot assess" verdicts),
then one real head CT, each pushed by dcmtk ``storescu`` into the wired node (real SCP, index,
selection, queue). The node writes the verdicts itself (``LocalVerdicts``: no model), so the analysis
process sees only the head CT and starts it at once; every junk study still gets its coded SR.
The analysis is a stand-in that records what it was given and takes 1 s.
"""

from __future__ import annotations

import json
import shutil
import textwrap
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnode.queue import JobState
from dicomnode.service import Node
from tests.conftest import small_config

pytestmark = pytest.mark.integration

JUNK = 100

RECORD = textwrap.dedent('''
    import json, os, time
    from pipeline.result import AnalysisResult, Status

    class Record:
        """Analysis stand-in: notes each call (time, files, verdict asked for) and takes a second."""
        def __init__(self, models):
            pass

        def analyze(self, files, out_dir, predecessor=None, cannot_assess=None):
            with open(os.environ["RECORD_LOG"], "a") as fh:
                fh.write(json.dumps({"t": time.time(), "files": len(files), "verdict": cannot_assess is not None}) + "\\n")
            time.sleep(1.0)
            result = AnalysisResult(status=Status.ANALYZED, volume_ml=1.0)
            result.write(out_dir)
            return result
''')


@pytest.fixture
def node(tmp_path, free_port, monkeypatch):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "record_analyzer.py").write_text(RECORD)
    monkeypatch.syspath_prepend(str(mods))
    monkeypatch.setenv("RECORD_LOG", str(tmp_path / "calls.jsonl"))
    cfg = small_config()
    cfg.node.data_dir = tmp_path / "var"
    cfg.node.host = "127.0.0.1"
    cfg.node.port = free_port()
    cfg.storage.min_free_bytes = 0
    cfg.selection.quiet_seconds = 1.0
    cfg.worker.analyzer = "record_analyzer:Record"
    cfg.metrics.enabled = False
    n = Node(cfg).start()
    try:
        yield n
    finally:
        n.stop()


def _junk(src: Path, out: Path) -> None:
    """``JUNK`` one-slice studies (new study/series/SOP UIDs): a day of stray single images."""
    out.mkdir()
    for i in range(JUNK):
        ds = pydicom.dcmread(src)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(out / f"junk{i:03d}.dcm")


def _wait(predicate, timeout: float, step: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def test_a_head_ct_after_a_burst_of_junk_is_analysed_at_once(tmp_path, node, ct_data, dcmtk):
    phantom = ct_data / "philips-phantom-5mm"
    slices = sorted(p for p in phantom.iterdir() if p.name != "DIRFILE")
    _junk(slices[10], tmp_path / "junk")
    port = node.config.node.port
    r = dcmtk("storescu", "-aec", "ICHNODE", "+sd", "127.0.0.1", port, tmp_path / "junk")
    assert r.returncode == 0, r.stderr
    # the junk is judged and queued first (quiet period 1 s), then the head CT arrives
    assert _wait(lambda: len(node.queue.list(limit=1000)) >= JUNK, 60), "junk not queued"
    head = tmp_path / "head"
    head.mkdir()
    for p in slices:
        shutil.copy(p, head / p.name)
    r = dcmtk("storescu", "-aec", "ICHNODE", "+sd", "127.0.0.1", port, head)
    assert r.returncode == 0, r.stderr
    sent_at = time.time()

    calls_log = tmp_path / "calls.jsonl"
    assert _wait(lambda: calls_log.is_file(), 30), "the head CT was never analysed"
    calls = [json.loads(line) for line in calls_log.read_text().splitlines()]
    assert calls[0]["files"] == len(slices) and not calls[0]["verdict"]
    assert calls[0]["t"] - sent_at < 10.0          # release grace + a sweep; not behind 100 verdicts

    done = {JobState.ENCODED, JobState.SENT}

    def all_done():
        jobs = node.queue.list(limit=1000)
        return len(jobs) == JUNK + 1 and all(j.state in done for j in jobs) and jobs

    jobs = _wait(all_done, 120)
    assert jobs, {j.state.value for j in node.queue.list(limit=1000)}
    calls = [json.loads(line) for line in calls_log.read_text().splitlines()]
    assert len(calls) == 1, "the analysis process was given verdict jobs"   # only the head CT
    verdicts = [j for j in jobs if j.payload.get("cannot_assess")]
    assert len(verdicts) == JUNK
    for job in verdicts[:5] + verdicts[-5:]:       # each has its coded SR, written by the node
        result = json.loads((Path(job.result_dir) / "result.json").read_text())
        assert result["status"] == "cannot_assess" and result["reason"].startswith("single_slice")
        sr = pydicom.dcmread(Path(job.result_dir) / "sr.dcm")
        assert sr.Modality == "SR" and sr.StudyInstanceUID != ""
