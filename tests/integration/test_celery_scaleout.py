"""Scale-out with real parts: redis-server + `ich-node serve` (Celery backend) + two `ich-node worker`
processes + storescu + Orthanc. Several studies are pushed, one worker is killed with -9 while it
analyses, and every study's SEG and SR must reach Orthanc exactly once.

Two runs: ``real`` with ``pipeline.analyze.Analyzer`` (skipped while it is not in the tree), and
``double`` with a test double that writes SEG- and SR-class objects after a few seconds, so the node's
own guarantees (late ack, leases, re-run, exactly-once delivery) are checked even without the pipeline.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import RedisServer, stop_process

REAL = "pipeline.analyze:Analyzer"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]

N_STUDIES = 4

DOUBLE = textwrap.dedent('''
    """Test double: SEG + SR objects (SOP classes set, content from a CT slice) after a few seconds."""
    import time
    from pathlib import Path
    import pydicom
    from pydicom.uid import generate_uid
    from pipeline.result import AnalysisResult, Status

    class Analyzer:
        def __init__(self, models):
            pass

        def analyze(self, files, out_dir, predecessor=None):
            time.sleep(4)  # long enough to be killed in the middle
            out = Path(out_dir)
            src = pydicom.dcmread(sorted(files)[0])
            for name, cls, modality in (("seg.dcm", "1.2.840.10008.5.1.4.1.1.66.4", "SEG"),
                                        ("sr.dcm", "1.2.840.10008.5.1.4.1.1.88.33", "SR")):
                src.SOPInstanceUID = src.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                src.SOPClassUID = src.file_meta.MediaStorageSOPClassUID = cls
                src.SeriesInstanceUID, src.Modality = generate_uid(), modality
                src.save_as(out / name)
            result = AnalysisResult(status=Status.ANALYZED, outputs={"seg": ["seg.dcm"], "sr": ["sr.dcm"]})
            result.write(out)
            return result
''')


@pytest.fixture(params=["real", "double"])
def analyzer(request, tmp_path):
    """``(analyzer target, extra PYTHONPATH)`` for the node's workers."""
    if request.param == "real":
        return REAL, ""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "scaleout_double.py").write_text(DOUBLE)
    return "scaleout_double:Analyzer", str(mods)


def wait_for(pred, timeout: float, step: float = 0.5, what: str = "condition"):
    end = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"{what} not met within {timeout:.0f} s")
        time.sleep(step)


def copy_study(src: Path, dst: Path) -> str:
    """The 5 mm phantom with fresh Study/Series/SOP/FoR UIDs (a new study for the node); returns the StudyUID."""
    dst.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for p in sorted(src.iterdir()):
        if p.name == "DIRFILE":
            continue
        ds = pydicom.dcmread(p)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(dst / p.name)
    return study


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Proc:
    """An `ich-node` subprocess with its own log, in its own session (stopped by PID)."""

    def __init__(self, args: list[str], log: Path, env: dict) -> None:
        exe = Path(sys.executable).with_name("ich-node")
        self.log = log
        self.proc = subprocess.Popen([str(exe), *args], stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc, grace_s=60)


def orthanc_instances(orthanc, study_uid: str) -> list[str]:
    """SOP Class UIDs of every instance Orthanc holds for the study."""
    import requests

    r = requests.post(f"{orthanc.url}/tools/find", json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid},
                                                         "Expand": True, "RequestedTags": ["SOPClassUID"]}, timeout=30)
    r.raise_for_status()
    out = []
    for inst in r.json():
        tags = requests.get(f"{orthanc.url}/instances/{inst['ID']}/simplified-tags", timeout=30).json()
        out.append(tags.get("SOPClassUID", "?"))
    return out


def test_two_workers_one_killed_every_result_once(tmp_path, free_port, orthanc, ct_data, dcmtk, analyzer):
    target, pythonpath = analyzer
    redis = RedisServer(tmp_path / "redis", free_port()).start()
    procs: list[Proc] = []
    try:
        data_dir = tmp_path / "var"
        port = free_port()
        env = {**os.environ,
               "ICH_NODE__QUEUE__BACKEND": "celery", "ICH_NODE__QUEUE__REDIS_URL": redis.url,
               "ICH_NODE__QUEUE__WORKER_LEASE_S": "6", "ICH_NODE__QUEUE__VISIBILITY_TIMEOUT_S": "30",
               "ICH_NODE__QUEUE__BACKOFF_BASE_S": "1", "ICH_NODE__QUEUE__BACKOFF_MAX_S": "3",
               "ICH_NODE__QUEUE__MAX_ATTEMPTS": "5", "ICH_NODE__QUEUE__JOB_TIMEOUT_S": "300",
               "ICH_NODE__WORKER__ANALYZER": target, "ICH_NODE__WORKER__THREADS": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (pythonpath, os.environ.get("PYTHONPATH", "")) if p),
               "ICH_NODE__STORAGE__MIN_FREE_BYTES": "0", "ICH_NODE__SCHEDULER__SWEEP_SECONDS": "0.5",
               "ICH_NODE__SCHEDULER__RETRY_SECONDS": "1", "ICH_NODE__METRICS__ENABLED": "false",
               "ICH_NODE__NODE__DATA_DIR": str(data_dir)}
        node = Proc(["serve", "--host", "127.0.0.1", "--port", str(port), "--ae-title", "ICHNODE",
                     "--destination", orthanc.address, "--quiet-seconds", "1"], tmp_path / "node.log", env)
        procs.append(node)
        wait_for(lambda: node.proc.poll() is not None or
                 dcmtk("echoscu", "-aec", "ICHNODE", "127.0.0.1", port).returncode == 0, 120, what="node echo")
        assert node.proc.poll() is None, node.log.read_text()[-3000:]
        workers = [Proc(["worker", "--concurrency", "1", "--name", f"w{i}@test"], tmp_path / f"worker{i}.log", env)
                   for i in range(2)]
        procs += workers
        # both workers up, each with one pool process that loaded the models
        wait_for(lambda: all("ready (models" in w.log.read_text() for w in workers)
                 or any(w.proc.poll() is not None for w in workers), 240, what="workers ready")
        assert all(w.proc.poll() is None for w in workers), "\n".join(w.log.read_text()[-2000:] for w in workers)

        studies = []
        for i in range(N_STUDIES):
            d = tmp_path / f"study{i}"
            studies.append(copy_study(ct_data / "philips-phantom-5mm", d))
            sent = dcmtk("storescu", "-aec", "ICHNODE", "+sd", "127.0.0.1", port, d, timeout=120)
            assert sent.returncode == 0, sent.stderr

        from dicomnode.queue import JobState
        from dicomnode.queue.celery import CeleryQueue

        q = CeleryQueue(redis.url)
        # kill -9 the worker that runs the first analysis, while it runs
        victim_job = wait_for(lambda: next(iter(q.list(states=[JobState.RUNNING])), None), 240, step=0.2,
                              what="a running job")
        pool_pid = int(victim_job.lease_owner.rsplit("-", 1)[1])
        victim = next(w for w in workers if pool_pid in children(w.pid))
        victim.kill9()
        wait_for(lambda: not alive(pool_pid), 10, step=0.1, what="the pool process dying with its worker")
        survivor = next(w for w in workers if w is not victim)

        def all_sent():
            counts = q.counts()
            assert counts[JobState.DEAD] == 0, [j.last_error for j in q.list(states=[JobState.DEAD])]
            return counts[JobState.SENT] >= N_STUDIES and not any(
                counts[s] for s in (JobState.QUEUED, JobState.RUNNING, JobState.ENCODED, JobState.FAILED))

        wait_for(all_sent, 420, step=1, what="every study delivered")
        assert survivor.proc.poll() is None
        redone = q.get(victim_job.id)
        assert redone.state is JobState.SENT and redone.last_error == "previous worker lost (lease expired)"
        assert f"job {victim_job.id} (study" in survivor.log.read_text()  # re-run by the survivor

        for study in studies:
            classes = orthanc_instances(orthanc, study)
            assert classes.count(SEG_CLASS) == 1, (study, classes)
            assert sum(c.startswith(SR_PREFIX) for c in classes) == 1, (study, classes)

        status = subprocess.run([str(Path(sys.executable).with_name("ich-node")), "status", "--json"],
                                capture_output=True, text=True, env=env, timeout=120)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["queue"]["sent"] == N_STUDIES
    finally:
        for p in reversed(procs):
            p.stop()
        redis.stop()
