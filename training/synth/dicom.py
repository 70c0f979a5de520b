"""Write a synthetic series as a CT Image Storage series (one file per slice).

UIDs are derived deterministically from the cohort seed and case (pydicom's hashed 2.25 UIDs),
so a cohort regenerated from the same seed is byte-identical; file names are slice numbers,
never UIDs.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless

from .physics import STORED_OFFSET

IMPLEMENTATION_UID = "2.25.184563386391540219634519052364402542193"   # this writer (fixed, name-based)


def uid(*parts: object) -> str:
    """A stable UID from its parts: 2.25 + a name-based (SHA-256, RFC 4122 v8-style) 128-bit UUID.

    (pydicom's ``generate_uid(prefix=None)`` ignores its entropy sources and is random.)
    """
    digest = hashlib.sha256("\x1f".join(str(p) for p in ("ich-node-synth", *parts)).encode()).digest()[:16]
    u = uuid.UUID(bytes=digest)
    u = uuid.UUID(int=(u.int & ~(0xF << 76) | (0x8 << 76)) & ~(0x3 << 62) | (0x2 << 62))
    return f"2.25.{u.int}"


def _da(t: datetime) -> str:
    return t.strftime("%Y%m%d")


def _tm(t: datetime) -> str:
    return t.strftime("%H%M%S.%f")[:13]


def write_series(out_dir: Path, series, *, patient_id: str, patient_name: str, sex: str, age: int,
                 study_uid: str, series_uid: str, frame_uid: str, study_id: str, accession: str,
                 series_number: int, uid_root: str, rle: bool = False) -> list[Path]:
    """Write ``series`` (a SynthSeries) into ``out_dir`` as IM0001.dcm, IM0002.dcm, ..."""
    out_dir.mkdir(parents=True, exist_ok=True)
    acq = series.acq
    t = series.acquired
    stored = (np.rint(series.hu) + STORED_OFFSET).astype(np.int16)
    iop = [float(v) for v in np.concatenate([acq.row_dir, acq.col_dir])]
    paths = []
    birth = t - timedelta(days=int(age * 365.25 + 100))
    for k in range(acq.n_slices):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = uid(uid_root, "instance", k)
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = _da(t)
        ds.StudyTime = ds.SeriesTime = _tm(t)
        ts = t + timedelta(seconds=0.5 * k)
        ds.AcquisitionTime = ds.ContentTime = _tm(ts)
        ds.AccessionNumber = accession
        ds.Modality = "CT"
        ds.Manufacturer = "ich-node synthetic"
        ds.InstitutionName = "Synthetic"
        ds.ReferringPhysicianName = ""
        ds.StationName = "SYNTH"
        ds.StudyDescription = "CT HEAD WITHOUT CONTRAST"
        ds.SeriesDescription = series.description
        ds.ManufacturerModelName = "ich-node synth"
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = _da(birth)
        ds.PatientSex = sex
        ds.PatientAge = f"{age:03d}Y"
        ds.BodyPartExamined = "HEAD"
        ds.ScanOptions = "AXIAL"
        ds.SliceThickness = f"{acq.thickness_mm:g}"
        ds.KVP = "120"
        ds.DataCollectionDiameter = "250"
        ds.SoftwareVersions = "ich-node-synth"
        ds.ReconstructionDiameter = f"{acq.pixel_mm * acq.matrix:.2f}"
        ds.GantryDetectorTilt = f"{acq.tilt_deg:.1f}"
        ds.TableHeight = "150"
        ds.RotationDirection = "CW"
        ds.ExposureTime = "1000"
        ds.XRayTubeCurrent = "250"
        ds.Exposure = "250"
        ds.ConvolutionKernel = "STANDARD"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = study_id
        ds.SeriesNumber = series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        pos = acq.position(k)
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.7f}" for v in iop]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{float(pos[2]):.3f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = acq.matrix
        ds.PixelSpacing = [f"{acq.pixel_mm:.6f}", f"{acq.pixel_mm:.6f}"]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.WindowCenter = "40"
        ds.WindowWidth = "80"
        ds.RescaleIntercept = f"{-STORED_OFFSET}"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = stored[k].tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = IMPLEMENTATION_UID
        meta.ImplementationVersionName = "ICHNODE_SYNTH"
        ds.file_meta = meta
        if rle:
            ds.compress(RLELossless, encoding_plugin="pylibjpeg")
        path = out_dir / f"IM{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
