"""What every object the node writes shares: who made it, series numbering, empty type-2 fields."""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass
from importlib import metadata

from pydicom.dataset import Dataset

from pipeline.encode.uids import device_observer_uid

# Patient / study attributes of type 2: they must be present, and may be empty. Anonymised or
# incomplete sources (the GE head lacks birth date and sex) must not make our objects invalid.
TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _version() -> str:
    try:
        return metadata.version("ich-node")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@dataclass(frozen=True)
class DeviceInfo:
    """Who made the objects. ``installation_id``: a value only this installation has (the node
    passes its own); it makes the SR's Device Observer UID stable per installation."""

    manufacturer: str = "ich-node"
    model_name: str = "ICH expansion node"
    software_version: str = _version()
    serial_number: str = "1"
    institution_name: str | None = None
    installation_id: str | None = None

    @property
    def observer_uid(self) -> str:
        """Device Observer UID: from ``installation_id``, else from manufacturer/model/serial."""
        fallback = f"{self.manufacturer}/{self.model_name}/{self.serial_number}"
        return device_observer_uid(self.installation_id or fallback)


SERIES_DESCRIPTION_HEAD = 20   # what OHIF's study browser shows of a series description
DISCLAIMER = "research use only, not for diagnostic use"


def version_tag(model_versions: dict[str, str]) -> str:
    """Short model versions for a series description: "v1" (segmenter), "v1/2" (+ classifier)."""
    order = [model_versions[k] for k in ("segmenter", "classifier") if model_versions.get(k)]
    return "v" + "/".join(order) if order else ""


def series_description(what: str, tag: str = "") -> str:
    """ "ICH <what> <tag> - <disclaimer>": the part a viewer shows first fits 20 characters; the tag
    is dropped when it would not fit."""
    head = f"ICH {what}"
    if tag and len(f"{head} {tag}") <= SERIES_DESCRIPTION_HEAD:
        head = f"{head} {tag}"
    return f"{head} - {DISCLAIMER}"[:64]


def new_series_number(source: list[Dataset], offset: int) -> int:
    """Series number for a derived series: the source's plus a fixed offset (viewers sort by it)."""
    try:
        base = int(source[0].get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        base = 0
    return (base % 1000) + 1000 + offset


def fill_type2(ds: Dataset) -> Dataset:
    """Add every missing type-2 patient/study attribute as empty (never invent values)."""
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in ds or ds[keyword].value is None:
            setattr(ds, keyword, "")
    return ds


def header_copy(ds: Dataset) -> Dataset:
    """A pixel-free copy of a source slice with empty type-2 fields added.

    highdicom reads patient/study attributes from the sources as mandatory; giving it completed
    copies (not the caller's datasets, which stay untouched) keeps incomplete headers from crashing.
    The elements themselves are shared, not deep-copied: the writers only read them, and deep
    copies of 140 headers cost seconds.
    """
    out = Dataset({tag: elem for tag, elem in ds.items() if tag not in _PIXEL_TAGS})
    if hasattr(ds, "file_meta"):
        out.file_meta = copy.copy(ds.file_meta)
    return fill_type2(out)


_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}


@contextlib.contextmanager
def quiet_names():
    """Silence highdicom's person-name warning for anonymised sources ("REMOVED"), only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        yield
