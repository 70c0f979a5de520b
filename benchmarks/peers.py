"""The peers the benchmarks start and talk to on loopback, written once (load, ingest, fuzz_store, turnaround).

- ``free_port()``: a TCP port free on 127.0.0.1 right now.
- ``dicom_files(folder)``: the DICOM files of a folder (Part 10 preamble; DIRFILE/DICOMDIR left out).
- ``copy_study(src, dst)``: a copy of a series folder with fresh study, series, frame-of-reference and SOP
  instance UIDs (a new study for the node each time); returns ``(study_uid, files)``.
- ``OrthancServer``: a throw-away Orthanc (the PACS): generated JSON config in its own folder, free DICOM and
  HTTP ports, started and stopped by PID; REST lookups ``study_sop_classes(uid)``, ``study_modalities(uid)``.
  ``tests/integration/conftest.py`` serves the same class to the tests.
- ``start_node(args, log, env)``: ``ich-node ARGS`` in its own session, output appended to ``log``;
  ``stop(proc)``: SIGTERM, then SIGKILL to its process group.
- ``wait_echo(port, proc)``: until the receiver answers C-ECHO (``echoscu``); ``storescu(port, paths)``:
  push files or folders with dcmtk's ``storescu``, raising when it fails.
- ``process_tree(pid)``, ``hwm_mib(pid)``, ``PeakRSS``: a process and its descendants, their peak resident
  memory (VmHWM) sampled from /proc.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

REPO = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).with_name("ich-node")
CT_DATA = Path(os.environ.get("ICH_CT_DATA") or REPO.parent / "shared" / "data" / "ct")  # as tests/conftest.py
PHANTOM_5MM = CT_DATA / "philips-phantom-5mm"
NODE_AE = "ICHNODE"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dicom_files(folder: Path) -> list[Path]:
    out = []
    for p in sorted(Path(folder).iterdir()):
        with open(p, "rb") as f:
            f.seek(128)
            if f.read(4) == b"DICM" and p.name.upper() not in ("DIRFILE", "DICOMDIR"):
                out.append(p)
    return out


def copy_study(src: Path, dst: Path) -> tuple[str, list[Path]]:
    """``src``'s instances written to ``dst`` with new study, series, frame-of-reference and SOP UIDs."""
    import pydicom
    from pydicom.uid import generate_uid

    dst.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    files = []
    for p in dicom_files(src):
        ds = pydicom.dcmread(p)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(dst / p.name)
        files.append(dst / p.name)
    return study, files


# ------------------------------------------------------------------------------------------------
# processes


def stop(proc: subprocess.Popen, timeout: float = 60, group: bool = False) -> None:
    """SIGTERM (to the process, or its whole group), then SIGKILL to the group after ``timeout`` s.
    The process must have been started with ``start_new_session=True``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        (os.killpg if group else os.kill)(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def start_node(args: list[str], log: Path, env: dict, cwd: Path | None = None) -> subprocess.Popen:
    """``ich-node ARGS`` (this venv's) in a session of its own, stdout and stderr appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen([str(EXE), *args], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)


def wait_echo(port: int, proc: subprocess.Popen | None = None, timeout: float = 60, aec: str = NODE_AE,
              env: dict | None = None, period: float = 0.2) -> None:
    """Until ``echoscu`` gets an answer from 127.0.0.1:``port``; raises if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode}")
        if subprocess.run(["echoscu", "-aec", aec, "127.0.0.1", str(port)], capture_output=True, env=env).returncode == 0:
            return
        time.sleep(period)
    raise RuntimeError(f"receiver did not answer C-ECHO within {timeout:.0f} s")


def storescu(port: int, paths: Iterable[Path], aec: str = NODE_AE, aet: str | None = None,
             options: Iterable[str] = ("+sd",), env: dict | None = None) -> subprocess.CompletedProcess:
    """One ``storescu`` association to 127.0.0.1:``port`` with ``paths``; raises when it exits non-zero."""
    cmd = ["storescu", *(["-aet", aet] if aet else []), "-aec", aec, *options, "127.0.0.1", str(port), *map(str, paths)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"storescu failed ({r.returncode}): {r.stderr[-500:]}")
    return r


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (any session), from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def hwm_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of a live process, MiB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakRSS(threading.Thread):
    """Samples VmHWM of process trees every ``period`` s; ``peak[role]`` and ``peak["role (largest child)"]``."""

    def __init__(self, roots: dict[str, int], period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.roots, self.period = roots, period
        self.peak: dict[str, float] = {}
        self.halt = threading.Event()

    def sample(self) -> None:
        for role, pid in self.roots.items():
            tree = process_tree(pid)
            self.peak[role] = max(self.peak.get(role, 0.0), hwm_mib(pid))
            children = [hwm_mib(c) for c in tree[1:]]
            if children:
                key = f"{role} (largest child)"
                self.peak[key] = max(self.peak.get(key, 0.0), max(children))

    def run(self) -> None:
        while not self.halt.wait(self.period):
            self.sample()


# ------------------------------------------------------------------------------------------------
# Orthanc


class OrthancUnavailable(RuntimeError):
    """Orthanc is not installed (``make test`` installs it)."""


class OrthancServer:
    """A throw-away Orthanc: own storage, own ports, no authentication, loopback only."""

    def __init__(self, workdir: Path, free_port: Callable[[], int] = free_port, aet: str = "ORTHANC",
                 modalities: dict[str, list] | None = None) -> None:
        self.exe = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        if not Path(self.exe).exists():
            raise OrthancUnavailable("Orthanc not installed (make test installs it)")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.host = "127.0.0.1"
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.config_path = self.workdir / "orthanc.json"
        self.log_path = self.workdir / "orthanc.log"
        self.config_path.write_text(json.dumps({
            "Name": f"test-{aet}",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "HttpServerEnabled": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomCheckModalityHost": False,
            "DicomModalities": modalities or {},
            "Plugins": [],
            "StorageCompression": False,
            "ConcurrentJobs": 1,
            "HttpTimeout": 30,
            "UnknownSopClassAccepted": True,
        }, indent=2))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def address(self) -> str:
        return f"{self.aet}@{self.host}:{self.dicom_port}"

    def start(self, timeout: float = 30) -> "OrthancServer":
        if self.proc is not None and self.proc.poll() is None:
            return self
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.exe, str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}; log:\n{self.log_path.read_text()[-3000:]}")
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout}s; log:\n{self.log_path.read_text()[-3000:]}")

    def stop(self, timeout: float = 15) -> None:
        if self.proc is not None:
            stop(self.proc, timeout)
        self.proc = None

    def get(self, path: str, raw: bool = False) -> Any:
        import urllib.request

        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            data = r.read()
        return data if raw else json.loads(data)

    def post(self, path: str, body: Any, timeout: float = 30) -> Any:
        import urllib.request

        req = urllib.request.Request(self.url + path, method="POST", headers={"Content-Type": "application/json"},
                                     data=json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def instances(self) -> list[str]:
        return self.get("/instances")

    def file(self, instance_id: str) -> bytes:
        return self.get(f"/instances/{instance_id}/file", raw=True)

    def wait_for_instances(self, n: int, timeout: float = 60) -> list[str]:
        """Poll until at least ``n`` instances are stored; returns their ids (raises on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            ids = self.instances()
            if len(ids) >= n or time.monotonic() > deadline:
                if len(ids) < n:
                    raise TimeoutError(f"Orthanc holds {len(ids)} instances, expected {n} within {timeout}s")
                return ids
            time.sleep(0.5)

    def study_sop_classes(self, study_uid: str) -> list[str]:
        """SOP class UIDs of every instance Orthanc holds for ``study_uid``."""
        ids = self.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}})
        return [self.get(f"/instances/{i}/metadata/SopClassUid", raw=True).decode() for i in ids]

    def study_modalities(self, study_uid: str) -> list[str]:
        """Modality of each series Orthanc holds for ``study_uid`` (one request: cheap enough to poll)."""
        series = self.post("/tools/find", {"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True})
        return [s.get("MainDicomTags", {}).get("Modality", "") for s in series]
