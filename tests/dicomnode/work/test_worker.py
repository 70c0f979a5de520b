"""The worker's child process: models once, per-job timeout, crash isolation, memory returned, outputs by hash.

A test double stands in for ``pipeline.analyze`` here (unit test of the node); the e2e test uses the real one.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest

from dicomnode.queue import JobState
from dicomnode.queue.sqlite import SQLiteQueue
from dicomnode.work import AnalysisFailed, AnalysisProcess, AnalysisStopped, ModelSource, Worker, job_dir
from model_dirs import make_model

FAKE = textwrap.dedent('''
    """Test double with the shape of pipeline.analyze.Analyzer."""
    import os, time
    from pathlib import Path
    from pipeline.result import AnalysisResult, Status

    class FakeAnalyzer:
        def __init__(self, models):
            with open(os.environ["FAKE_LOG"], "a") as fh:
                fh.write(f"load {os.getpid()}\\n")

        def analyze(self, files, out_dir, predecessor=None):
            names = [Path(f).name for f in files]
            if "sleep" in names:
                time.sleep(60)
            if "crash" in names:
                os._exit(3)
            if "error" in names:
                raise RuntimeError("cannot read pixel data")
            out = Path(out_dir)
            (out / "seg.dcm").write_bytes(b"seg")
            (out / "sr.dcm").write_bytes(b"sr")
            (out / "pid").write_text(str(os.getpid()))
            (out / "predecessor").write_text(str(predecessor))
            r = AnalysisResult(status=Status.ANALYZED, outputs={"seg": ["seg.dcm"], "sr": ["sr.dcm"]})
            r.write(out)
            return r

    class WarmAnalyzer(FakeAnalyzer):
        """Logs which models it loaded and when it was warmed (as pipeline.analyze.Analyzer.warm)."""

        def __init__(self, models):
            self.models = models
            with open(os.environ["FAKE_LOG"], "a") as fh:
                fh.write(f"load {models.classifier}\\n")

        def warm(self):
            with open(os.environ["FAKE_LOG"], "a") as fh:
                fh.write(f"warm {self.models.classifier}\\n")
            return {"segmentation": 0.0}

    class SlowLoadAnalyzer(FakeAnalyzer):
        """Models that take a minute to load; says its pid first."""

        def __init__(self, models):
            Path(os.environ["FAKE_LOG"]).write_text(f"loading {os.getpid()}\\n")
            time.sleep(60)

    class CodedAnalyzer(FakeAnalyzer):
        """Accepts the selection's verdict, as pipeline.analyze may."""

        def analyze(self, files, out_dir, predecessor=None, cannot_assess=None):
            (Path(out_dir) / "sr.dcm").write_bytes(b"sr")
            r = AnalysisResult(status=Status.CANNOT_ASSESS, reason=f"{cannot_assess.code}: {cannot_assess.message}",
                               outputs={"sr": ["sr.dcm"]})
            r.write(out_dir)
            return r
''')


@pytest.fixture
def fake(tmp_path, monkeypatch):
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "fake_analyzer_mod.py").write_text(FAKE)
    monkeypatch.syspath_prepend(str(mod_dir))  # spawn children inherit sys.path
    log = tmp_path / "loads.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    return log


def inputs(tmp_path: Path, *names: str) -> list[str]:
    d = tmp_path / "in"
    d.mkdir(exist_ok=True)
    out = []
    for n in names:
        (d / n).write_bytes(b"x")
        out.append(str(d / n))
    return out


def make(tmp_path, fake, **kw):
    q = SQLiteQueue(tmp_path / "q.sqlite3", max_attempts=3)
    proc = AnalysisProcess("fake_analyzer_mod:FakeAnalyzer", max_jobs=kw.pop("max_jobs", 50), start_timeout_s=60)
    encoded = []
    w = Worker(q, proc, tmp_path / "results", owner="node/w0", timeout_s=kw.pop("timeout_s", 20),
               on_encoded=encoded.append, **kw)
    return q, proc, w, encoded


def run_one(q, w, key, files):
    job = q.enqueue(key, {"files": files})
    return w.run_job(q.claim(w.owner))


def test_models_load_once_outputs_by_hash_and_predecessor_link(tmp_path, fake):
    q, proc, w, encoded = make(tmp_path, fake)
    try:
        key = "ab" + "0" * 30
        first = run_one(q, w, key, inputs(tmp_path, "a.dcm"))
        second = run_one(q, w, key, inputs(tmp_path, "b.dcm"))
        assert first.state is JobState.ENCODED and second.state is JobState.ENCODED
        assert [j.id for j in encoded] == [first.id, second.id]
        assert Path(first.result_dir) == job_dir(tmp_path / "results", first)
        assert Path(first.result_dir).relative_to(tmp_path / "results").parts == ("ab", key, f"job-{first.id}")
        assert fake.read_text().count("load") == 1  # one child, models loaded once
        pids = {Path(j.result_dir, "pid").read_text() for j in (first, second)}
        assert len(pids) == 1 and str(proc.pid) in pids
        # the re-analysis is told which earlier result it replaces
        expected = [str(Path(first.result_dir, n)) for n in ("sr.dcm", "seg.dcm")]
        assert Path(second.result_dir, "predecessor").read_text() == str(expected)
        assert Path(first.result_dir, "predecessor").read_text() == "None"
    finally:
        proc.stop()


def test_timeout_kills_child_and_next_job_runs(tmp_path, fake):
    q, proc, w, _ = make(tmp_path, fake, timeout_s=2)
    try:
        proc.start()
        old = proc.pid
        t0 = time.monotonic()
        job = run_one(q, w, "k1", inputs(tmp_path, "sleep"))
        assert time.monotonic() - t0 < 10
        assert job.state is JobState.FAILED and "timed out after 2 s" in job.last_error and job.attempts == 1
        assert proc.pid is None  # killed, not left running
        ok = run_one(q, w, "k2", inputs(tmp_path, "c.dcm"))
        assert ok.state is JobState.ENCODED and proc.pid not in (None, old)
    finally:
        proc.stop()


def test_child_crash_and_errors_are_recorded_not_fatal(tmp_path, fake):
    q, proc, w, _ = make(tmp_path, fake)
    try:
        crashed = run_one(q, w, "k1", inputs(tmp_path, "crash"))
        assert crashed.state is JobState.FAILED and "exit code 3" in crashed.last_error
        err = run_one(q, w, "k2", inputs(tmp_path, "error"))
        assert err.state is JobState.FAILED and "RuntimeError: cannot read pixel data" in err.last_error
        missing = run_one(q, w, "k3", [str(tmp_path / "gone.dcm")])
        assert missing.state is JobState.DEAD and "missing from the spool" in missing.last_error
    finally:
        proc.stop()


def test_child_restarts_after_max_jobs_to_free_memory(tmp_path, fake):
    q, proc, w, _ = make(tmp_path, fake, max_jobs=1)
    try:
        a = run_one(q, w, "k1", inputs(tmp_path, "a.dcm"))
        assert proc.pid is None  # stopped after its quota
        b = run_one(q, w, "k2", inputs(tmp_path, "b.dcm"))
        assert Path(a.result_dir, "pid").read_text() != Path(b.result_dir, "pid").read_text()
        assert fake.read_text().count("load") == 2
    finally:
        proc.stop()


def test_unloadable_analyzer_is_a_clear_error(tmp_path, fake):
    proc = AnalysisProcess("no_such_module_x:Analyzer", start_timeout_s=60)
    with pytest.raises(AnalysisFailed, match="cannot load its models: ModuleNotFoundError"):
        proc.start()


def test_worker_thread_claims_and_stops(tmp_path, fake):
    q, proc, w, encoded = make(tmp_path, fake, poll_s=0.2)
    w.start()
    try:
        job = q.enqueue("k", {"files": inputs(tmp_path, "a.dcm")})
        deadline = time.monotonic() + 60
        while q.get(job.id).state is not JobState.ENCODED and time.monotonic() < deadline:
            time.sleep(0.1)
        assert q.get(job.id).state is JobState.ENCODED
    finally:
        w.stop()
    assert not w.is_alive() and proc.pid is None


def test_shutdown_during_analysis_hands_the_job_back(tmp_path, fake):
    q, proc, w, _ = make(tmp_path, fake, poll_s=0.2)
    w.start()
    try:
        job = q.enqueue("k", {"files": inputs(tmp_path, "sleep")})
        deadline = time.monotonic() + 60
        while q.get(job.id).state is not JobState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        t0 = time.monotonic()
        w.stop()
    assert time.monotonic() - t0 < 5
    back = q.get(job.id)
    assert back.state is JobState.QUEUED and back.attempts == 0 and back.lease_owner is None


def test_selection_cannot_assess_reaches_an_analyzer_that_accepts_it(tmp_path, fake):
    q = SQLiteQueue(tmp_path / "q.sqlite3")
    proc = AnalysisProcess("fake_analyzer_mod:CodedAnalyzer", start_timeout_s=60)
    w = Worker(q, proc, tmp_path / "results", owner="w")
    try:
        q.enqueue("k", {"files": inputs(tmp_path, "a.dcm"),
                        "cannot_assess": {"code": "too_thick", "message": "7 mm slices"}})
        job = w.run_job(q.claim("w"))
        assert job.state is JobState.ENCODED
        assert json.loads(Path(job.result_dir, "result.json").read_text())["reason"] == "too_thick: 7 mm slices"
    finally:
        proc.stop()


def test_every_sr_profile_of_an_earlier_result_is_a_predecessor(tmp_path):
    import json

    from dicomnode.work import predecessor_files

    for name in ("sr.dcm", "sr_tid1411.dcm", "seg.dcm", "sc/1.dcm"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "result.json").write_text(json.dumps({"outputs": {
        "seg": ["seg.dcm"], "sc": ["sc/1.dcm"], "sr_tid1411": ["sr_tid1411.dcm"], "sr": ["sr.dcm"]}}))
    assert [Path(f).relative_to(tmp_path).as_posix() for f in predecessor_files(tmp_path)] == [
        "sr.dcm", "sr_tid1411.dcm", "seg.dcm", "sc/1.dcm"]


def test_the_node_names_its_installation_as_the_device_observer(tmp_path):
    """The analyzer built in the child gets DeviceInfo(installation_id=...) when it accepts a device."""
    from dicomnode.pseudonym import Pseudonymizer
    from dicomnode.work import with_device
    from pipeline.encode.common import DeviceInfo

    seen = []

    def build(paths, device=None):
        seen.append(device)

    pz = Pseudonymizer.load_or_create(tmp_path / "site.key")
    with_device(build, pz.installation_id())("paths")
    assert seen[0].installation_id == pz.installation_id() == Pseudonymizer.load_or_create(tmp_path / "site.key").installation_id()
    assert seen[0].observer_uid != DeviceInfo().observer_uid  # not the shared fallback
    assert pz.installation_id() != Pseudonymizer.ephemeral().installation_id()
    assert with_device(lambda paths: "old-style", "x")("p") == "old-style"  # an analyzer without device


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_stop_signal_while_loading_is_a_stop_not_a_model_failure(tmp_path, fake, sig):
    """``kill -TERM -- -PGID`` of a node still warming up reaches its analysis child too: that is the node
    stopping (AnalysisStopped, logged as a warning), while any other death stays an AnalysisFailed."""
    proc = AnalysisProcess("fake_analyzer_mod:SlowLoadAnalyzer", start_timeout_s=60)
    caught: list[BaseException] = []

    def start():
        try:
            proc.start()
        except AnalysisFailed as exc:
            caught.append(exc)

    t = threading.Thread(target=start)
    t.start()
    deadline = time.monotonic() + 60
    while not (fake.is_file() and fake.read_text().startswith("loading ")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(int(fake.read_text().split()[1]), sig)
    t.join(30)
    assert not t.is_alive() and len(caught) == 1
    if sig == signal.SIGTERM:
        assert isinstance(caught[0], AnalysisStopped) and "stopped by SIGTERM" in str(caught[0])
    else:
        assert not isinstance(caught[0], AnalysisStopped) and "exit code -9" in str(caught[0])


def test_models_are_warmed_before_the_first_study(tmp_path, fake):
    proc = AnalysisProcess("fake_analyzer_mod:WarmAnalyzer", start_timeout_s=60)
    try:
        assert not proc.ready
        proc.start()
        assert proc.ready and fake.read_text().splitlines()[-1].startswith("warm ")
    finally:
        proc.stop()


def test_an_idle_worker_loads_and_warms_a_promoted_model_before_the_next_study(tmp_path, fake):
    """Issue 15: no cold start in the path, after a promotion too (not when the next study arrives)."""
    from pipeline.models import ModelMetadata
    from training.registry import Registry

    bundled = tmp_path / "bundled"
    for kind in ("segmenter", "classifier"):
        make_model(bundled / kind / "1", kind, "1")
    registry = Registry(tmp_path / "registry", bundled_root=bundled)
    proc = AnalysisProcess("fake_analyzer_mod:WarmAnalyzer", ModelSource(registry_dir=str(registry.root)),
                           start_timeout_s=60)
    q = SQLiteQueue(tmp_path / "q.sqlite3")
    w = Worker(q, proc, tmp_path / "results", owner="node/w0", poll_s=0.1, refresh_s=0.2)
    w.start()
    try:
        wait = lambda pred: any(pred() or time.sleep(0.1) for _ in range(200))  # noqa: E731
        assert wait(lambda: proc.ready)
        v2 = registry.add("classifier", make_model(tmp_path / "new", "classifier"), parent_version="1")
        registry.promote("classifier", v2.version, reason="test")
        assert wait(lambda: f"warm {registry.root / 'classifier' / v2.version}" in fake.read_text()), fake.read_text()
        assert ModelMetadata.read(registry.root / "classifier" / v2.version).version == v2.version
    finally:
        w.stop()


def test_local_verdicts_write_the_coded_report_in_the_node(tmp_path, ct_data):
    """The verdict lane: a "cannot assess" job is answered without an analysis process; an analysis job
    handed to it by mistake is refused for good (it would otherwise loop)."""
    from dicomnode.queue import Work
    from dicomnode.work import LocalVerdicts

    q = SQLiteQueue(tmp_path / "q.sqlite3")
    files = [str(p) for p in sorted((ct_data / "philips-phantom-5mm").iterdir()) if p.name != "DIRFILE"]
    verdict = q.enqueue("k1", {"files": files, "cannot_assess": {"code": "missing_slices", "message": "gap at 10"}})
    q.enqueue("k2", {"files": files})
    lane = LocalVerdicts(ModelSource(bundled_fallback=False), installation_id="site-7")
    w = Worker(q, lane, tmp_path / "results", owner="verdicts", work=Work.VERDICT)
    job = q.claim("verdicts", work=Work.VERDICT)
    assert job.id == verdict.id and q.claim("verdicts", work=Work.VERDICT) is None   # k2 is an analysis
    done = w.run_job(job)
    assert done.state is JobState.ENCODED
    result = json.loads((Path(done.result_dir) / "result.json").read_text())
    assert result["status"] == "cannot_assess" and result["reason"].startswith("missing_slices")
    from pipeline.models import ModelPaths
    from pipeline.verdict import ModelIdentity

    assert result["model_versions"] == ModelIdentity.of(ModelPaths()).versions  # no registry, no bundle
    assert (Path(done.result_dir) / "sr.dcm").is_file()
    with pytest.raises(AnalysisFailed, match="not a verdict job") as exc:
        lane.analyze(files, str(tmp_path / "x"))
    assert not exc.value.retryable
