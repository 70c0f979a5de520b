"""One study on disk, as training reads it: its header facts, its files, and model 1's measurement.

Shared by the dataset store, follow-up labelling and site imports (none of which imports another's
internals for it).
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence


@dataclass(frozen=True)
class StudyInfo:
    """The header fields pairing needs, read from the analysed series."""

    patient_id: str
    study_uid: str
    study_time: _dt.datetime | None
    issuer: str | None = None  # IssuerOfPatientID: part of the pseudonym, as in the node's index


def _parse_dt(date: str | None, time: str | None) -> _dt.datetime | None:
    if not date:
        return None
    date = str(date).strip()
    time = (str(time).strip() if time else "") or "000000"
    hhmmss = time.split(".")[0].ljust(6, "0")[:6]
    try:
        return _dt.datetime.strptime(date[:8] + hhmmss, "%Y%m%d%H%M%S")
    except ValueError:
        return None


def read_study_info(series_files: Path | Sequence[Path]) -> StudyInfo:
    """PatientID (and its issuer), StudyInstanceUID and the study's date/time from the first readable file.

    StudyDate/Time first (one value for the whole study), then Series, Acquisition, Content.
    """
    import pydicom

    files = as_files(series_files)
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - any unreadable file: try the next one
            continue
        uid = str(ds.get("StudyInstanceUID", "") or "")
        if not uid:
            continue
        when = None
        for d, t in (("StudyDate", "StudyTime"), ("SeriesDate", "SeriesTime"),
                     ("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime")):
            when = _parse_dt(ds.get(d), ds.get(t))
            if when:
                break
        issuer = str(ds.get("IssuerOfPatientID", "") or "").strip() or None
        return StudyInfo(str(ds.get("PatientID", "") or ""), uid, when, issuer)
    raise ValueError(f"no readable DICOM file with a StudyInstanceUID among {len(files)} file(s)")


def as_files(series_files: Path | Sequence[Path]) -> list[Path]:
    if isinstance(series_files, (str, os.PathLike)):
        p = Path(series_files)
        return sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
    return [Path(x) for x in series_files]


def link_files(files: Iterable[Path], dest: Path) -> Path:
    """Hard-link (copy across file systems) into ``dest`` with neutral names; atomic via rename."""
    staging = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for i, src in enumerate(files):
        target = staging / f"{i:05d}.dcm"
        try:
            os.link(src, target)
        except OSError:
            shutil.copy2(src, target)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(staging, dest)
    return dest


@dataclass(frozen=True)
class Measurement:
    volume_ml: float
    mask_path: Path | None      # NIfTI on the analysis grid (physical geometry kept), when asked for


def measure(series: Path | Sequence[Path], segmenter_dir: Path | None, mask_out: Path | None = None,
            *, segmenter=None) -> Measurement:
    """Model 1's hematoma volume for one series (pipeline loading, brain extraction, segmenter).

    ``segmenter`` (an already loaded one) saves reloading the model for every case; ``mask_out``
    also writes the mask, in the cohort format the trainers read (any SimpleITK image on a physical grid).
    """
    import numpy as np
    import SimpleITK as sitk

    from pipeline.brain import extract_brain
    from pipeline.segment import load_segmenter
    from pipeline.volume import load_series

    seg = segmenter or load_segmenter(segmenter_dir)
    volume = load_series(series).volume
    mask = np.asarray(seg.predict_mask(volume, extract_brain(volume)), dtype=bool)
    volume_ml = float(mask.sum() * volume.voxel_volume_ml)
    if mask_out is not None:
        img = sitk.GetImageFromArray(mask.astype(np.uint8))
        ref = volume.to_sitk()
        img.CopyInformation(ref)
        Path(mask_out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(mask_out).with_name(".tmp-" + Path(mask_out).name)
        sitk.WriteImage(img, str(tmp), True)
        os.replace(tmp, mask_out)
    return Measurement(volume_ml, Path(mask_out) if mask_out is not None else None)
