"""A tiny DICOM cohort for model-1 tests: ellipsoidal heads with one hyperdense blob each, written as
real CT series with NIfTI masks and a manifest, as ``ich-node synth`` lays them out."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

SPACING = (3.0, 3.0, 5.0)  # x, y, z (mm): small matrices keep the test fast


def head_with_blob(rng: np.random.Generator):
    """Ellipsoidal skull + brain with a hyperdense blob of random size/position; returns hu (z,y,x), mask."""
    shape = (26, 72, 72)
    zz, yy, xx = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, SPACING[::-1])], indexing="ij")
    r = np.sqrt((xx / 75) ** 2 + (yy / 90) ** 2 + (zz / 58) ** 2)
    hu = np.full(shape, -1000.0)
    hu[r < 1] = 1300.0
    inner = r < 1 - 7 / 75
    hu[inner] = 33 + rng.normal(0, 3, inner.sum())
    c = rng.uniform([-25, -30, -15], [25, 30, 15])
    radius = rng.uniform(10, 20)
    blob = (np.sqrt((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2) < radius) & inner
    hu[blob] = 65 + rng.normal(0, 3, blob.sum())
    return hu.astype(np.float32), blob


def write_series(hu: np.ndarray, folder: Path, patient: str, *, when: str | None = None,
                 origin: tuple[float, float, float] = (-108.0, -108.0, -65.0)) -> None:
    """One axial CT series of ``hu`` (z, y, x) at ``SPACING``, first slice at ``origin`` (x, y, z mm)."""
    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k, sl in enumerate(hu):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = "CT", patient, ""
        if when is not None:
            ds.StudyDate, ds.StudyTime = when, "080000"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * SPACING[2]]
        ds.PixelSpacing = [SPACING[1], SPACING[0]]
        ds.SliceThickness = SPACING[2]
        ds.Rows, ds.Columns = sl.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.clip(np.rint(sl + 1024), -32768, 32767).astype(np.int16).tobytes()
        ds.InstanceNumber = k + 1
        pydicom.dcmwrite(folder / f"{k:03d}.dcm", ds, enforce_file_format=True)


def write_cohort(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        cid = f"case{seed}_{i:02d}"
        hu, blob = head_with_blob(rng)
        write_series(hu, root / "cases" / cid / "baseline", cid)
        img = sitk.GetImageFromArray(blob.astype(np.uint8))
        img.SetSpacing(SPACING)
        img.SetOrigin((-108.0, -108.0, -65.0))
        sitk.WriteImage(img, str(root / "cases" / cid / "baseline_mask.nii.gz"))
        vol = blob.sum() * np.prod(SPACING) / 1000
        rows.append({"case_id": cid, "baseline_dir": f"cases/{cid}/baseline",
                     "baseline_mask": f"cases/{cid}/baseline_mask.nii.gz", "baseline_volume_ml": f"{vol:.3f}",
                     "expansion": "0"})
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root
