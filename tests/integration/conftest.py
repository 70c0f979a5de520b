"""Fixtures that start real peers on loopback for integration tests.

``orthanc`` starts ``/usr/sbin/Orthanc`` with a generated JSON config in a tmp dir, on free DICOM and
HTTP ports, and stops it by PID at the end. The object it yields:

    orthanc.aet, orthanc.host, orthanc.dicom_port, orthanc.http_port, orthanc.url
    orthanc.address             "ORTHANC@127.0.0.1:<port>" (for Destination.from_address)
    orthanc.get("/instances")   GET on the REST API, JSON-decoded
    orthanc.instances()         list of instance ids
    orthanc.file(instance_id)   the stored DICOM bytes
    orthanc.stop() / orthanc.start()   take it down and bring it back on the SAME ports
                                (for "destination down → retries → up" tests)

``orthanc_factory(aet="ORTHANC", modalities={...})`` makes more (or differently configured) servers;
``modalities`` maps a name to [AET, host, port] so Orthanc may C-STORE/C-ECHO back to the node.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from tests.conftest import unavailable



class OrthancServer:
    """A throw-away Orthanc: own storage, own ports, no authentication, loopback only."""

    def __init__(self, workdir: Path, free_port: Callable[[], int], aet: str = "ORTHANC",
                 modalities: dict[str, list] | None = None) -> None:
        self.exe = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        if not Path(self.exe).exists():
            unavailable("Orthanc not installed (make test installs it)")
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
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def get(self, path: str, raw: bool = False) -> Any:
        import urllib.request

        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            data = r.read()
        return data if raw else json.loads(data)

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


@pytest.fixture
def orthanc_factory(tmp_path_factory, free_port) -> Iterator[Callable[..., OrthancServer]]:
    started: list[OrthancServer] = []

    def make(aet: str = "ORTHANC", modalities: dict[str, list] | None = None, start: bool = True) -> OrthancServer:
        srv = OrthancServer(tmp_path_factory.mktemp(f"orthanc-{aet.lower()}"), free_port, aet=aet, modalities=modalities)
        started.append(srv)
        return srv.start() if start else srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def orthanc(orthanc_factory) -> OrthancServer:
    """A running Orthanc (AE ORTHANC) on free loopback ports; stopped by PID after the test."""
    return orthanc_factory()
