"""Orthanc accepts every object the pipeline writes (C-STORE with dcmtk storescu, read back over REST)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from pipeline.analyze import Analyzer
from tests.integration.conftest import OrthancServer  # the integration suite's throw-away Orthanc

pytestmark = pytest.mark.integration


@pytest.fixture
def orthanc(tmp_path_factory, free_port):
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"), free_port).start()
    yield server
    server.stop()


def test_orthanc_accepts_seg_sr_and_overlays(orthanc, dcmtk, phantom_dir: Path, tmp_path: Path):
    result = Analyzer().analyze(phantom_dir, tmp_path)
    files = [tmp_path / p for key in ("seg", "sr", "sr_tid1411", "sc") for p in result.outputs[key]]
    assert len(files) >= 4
    proc = dcmtk("storescu", "-R", "-aec", orthanc.aet,  # -R: propose exactly the files' SOP classes
                  orthanc.host, orthanc.dicom_port, *map(str, files))
    assert proc.returncode == 0, proc.stderr
    ids = orthanc.wait_for_instances(len(files), timeout=60)
    stored = {orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in ids}
    assert stored == {pydicom.dcmread(f).SOPInstanceUID for f in files}
    classes = {orthanc.get(f"/instances/{i}/simplified-tags")["SOPClassUID"] for i in ids}
    assert "1.2.840.10008.5.1.4.1.1.66.4" in classes        # Segmentation Storage
    assert "1.2.840.10008.5.1.4.1.1.88.33" in classes       # Comprehensive SR (the "ohif" profile)
    assert "1.2.840.10008.5.1.4.1.1.88.34" in classes       # Comprehensive 3D SR (the "tid1411" profile)
    assert "1.2.840.10008.5.1.4.1.1.7" in classes           # Secondary Capture
