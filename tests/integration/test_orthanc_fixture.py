"""The shared Orthanc fixture itself: starts, accepts C-STORE, survives stop/start on the same ports."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_orthanc_fixture_roundtrip(orthanc, dcmtk, ct_data):
    r = dcmtk("echoscu", "-aec", orthanc.aet, orthanc.host, orthanc.dicom_port)
    assert r.returncode == 0, r.stderr
    files = sorted((ct_data / "philips-phantom-5mm").glob("*.dcm"))[:2] or sorted(
        p for p in (ct_data / "philips-phantom-5mm").iterdir() if p.name != "DIRFILE")[:2]
    r = dcmtk("storescu", "-aec", orthanc.aet, orthanc.host, orthanc.dicom_port, *files)
    assert r.returncode == 0, r.stderr
    assert len(orthanc.wait_for_instances(2, timeout=20)) == 2
    port = orthanc.dicom_port
    orthanc.stop()
    assert dcmtk("echoscu", "-to", 3, "-aec", orthanc.aet, orthanc.host, port).returncode != 0
    orthanc.start()
    assert orthanc.dicom_port == port and len(orthanc.instances()) == 2
