"""Fixtures of the delivery tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


@pytest.fixture
def results(tmp_path, ct_data) -> Path:
    """A result directory shaped like pipeline.analyze's (real DICOM files stand in for SEG/SR/SC)."""
    root = tmp_path / "job-1"
    (root / "sc").mkdir(parents=True)
    src = sorted(p for p in (ct_data / "philips-phantom-5mm").iterdir() if p.name != "DIRFILE")[:3]
    shutil.copy(src[0], root / "seg.dcm")
    shutil.copy(src[1], root / "sr.dcm")
    shutil.copy(src[2], root / "sc" / "001.dcm")
    (root / "result.json").write_text(json.dumps({"outputs": {"seg": ["seg.dcm"], "sr": ["sr.dcm"], "sc": ["sc/001.dcm"]}}))
    return root
