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
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
from benchmarks.peers import OrthancServer as _OrthancServer, OrthancUnavailable
from tests.conftest import unavailable


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
