"""Fixtures that start real peers on loopback for integration tests.

``orthanc`` starts ``/usr/sbin/Orthanc`` with a generated JSON config in a tmp dir, on free DICOM and
HTTP ports, and stops it by PID at the end (``OrthancServer`` of ``benchmarks/peers.py``, which the
benchmarks use too). The object it yields:

    orthanc.aet, orthanc.host, orthanc.dicom_port, orthanc.http_port, orthanc.url
    orthanc.address             "ORTHANC@127.0.0.1:<port>" (for Destination.from_address)
    orthanc.get("/instances")   GET on the REST API, JSON-decoded
    orthanc.instances()         list of instance ids
    orthanc.file(instance_id)   the stored DICOM bytes
    orthanc.post(path, body)    POST JSON on the REST API, JSON-decoded
    orthanc.study_sop_classes(uid), orthanc.study_modalities(uid)   what it holds of a study
    orthanc.stop() / orthanc.start()   take it down and bring it back on the SAME ports
                                (for "destination down → retries → up" tests)

``orthanc_factory(aet="ORTHANC", modalities={...})`` makes more (or differently configured) servers;
``modalities`` maps a name to [AET, host, port] so Orthanc may C-STORE/C-ECHO back to the node.

``NodeProcess(tmp, port, "AE@HOST:PORT").start(dcmtk)``: ``ich-node serve`` as a subprocess (``kill9()``,
``stop()``, ``queue()``), for tests that import it (``from tests.integration.conftest import NodeProcess``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from benchmarks.peers import OrthancServer as _OrthancServer, OrthancUnavailable
from tests.conftest import stop_process, unavailable, wait_for


class OrthancServer(_OrthancServer):
    """``benchmarks.peers.OrthancServer`` (the one implementation); a missing Orthanc is ``unavailable``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except OrthancUnavailable as exc:
            unavailable(str(exc))


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


class NodeProcess:
    """`ich-node serve` as a subprocess on free ports; kill -9 and restart on the same data dir (the node's
    own e2e test and the labels e2e test)."""

    def __init__(self, tmp: Path, port: int, destination: str, extra: list[str] | None = None) -> None:
        self.tmp, self.port, self.destination = tmp, port, destination
        self.data_dir = tmp / "var"
        self.log = tmp / "node.log"
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None

    def start(self, dcmtk) -> "NodeProcess":
        exe = Path(sys.executable).with_name("ich-node")
        env = {**os.environ, "ICH_NODE__STORAGE__MIN_FREE_BYTES": "0", "ICH_NODE__SCHEDULER__SWEEP_SECONDS": "0.5",
               "ICH_NODE__SCHEDULER__RETRY_SECONDS": "1", "ICH_NODE__QUEUE__BACKOFF_BASE_S": "1",
               "ICH_NODE__QUEUE__BACKOFF_MAX_S": "3", "ICH_NODE__QUEUE__MAX_ATTEMPTS": "30",
               "ICH_NODE__METRICS__ENABLED": "false"}
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--host", "127.0.0.1", "--port", str(self.port), "--ae-title", "ICHNODE",
             "--data-dir", str(self.data_dir), "--destination", self.destination, "--quiet-seconds", "1", *self.extra],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_for(lambda: self.proc.poll() is not None or
                 dcmtk("echoscu", "-aec", "ICHNODE", "127.0.0.1", self.port).returncode == 0, 120, step=0.5,
                 what="node echo")
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        return self

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc, grace_s=60)

    def queue(self):
        from dicomnode.config import NodeConfig
        from dicomnode.queue import open_queue

        cfg = NodeConfig()
        cfg.node.data_dir = self.data_dir
        return open_queue(cfg)
