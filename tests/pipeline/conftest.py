"""Fixtures for pipeline tests: the real CT series as datasets, and dciodvfy comparison."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest

from pipeline.volume import read_images
from tests.conftest import unavailable


@pytest.fixture(scope="session")
def ge_dir(ct_data: Path) -> Path:
    return ct_data / "ge-human-head-tilted"


@pytest.fixture(scope="session")
def phantom_dir(ct_data: Path) -> Path:
    return ct_data / "philips-phantom-5mm"


@pytest.fixture()
def phantom_datasets(phantom_dir: Path) -> list[pydicom.Dataset]:
    """Fresh (modifiable) datasets of the 5 mm phantom, in file order."""
    return read_images(phantom_dir)


def dciodvfy_errors(path: Path) -> set[str]:
    """The 'Error' lines dciodvfy prints for one file (normalised; empty set = valid)."""
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return {line.strip() for line in lines if line.strip().startswith("Error")}


@pytest.fixture(scope="session")
def new_dciodvfy_errors():
    """``new_dciodvfy_errors(output, source)``: errors in ``output`` that ``source`` does not already have."""
    import shutil

    if shutil.which("dciodvfy") is None:
        unavailable("dciodvfy (dicom3tools) not installed")

    def check(output: Path, source: Path) -> set[str]:
        return dciodvfy_errors(output) - dciodvfy_errors(source)

    return check
