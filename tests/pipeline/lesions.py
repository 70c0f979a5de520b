"""Insert a synthetic hematoma of known volume into real CT slices (copies), for volume-accuracy tests."""

from __future__ import annotations

import copy

import numpy as np
from pydicom.dataset import Dataset


def source_points(ds: Dataset) -> np.ndarray:
    """(rows, cols, 3) LPS centre of every pixel of one slice."""
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    sy, sx = (float(v) for v in ds.PixelSpacing)
    j, i = np.mgrid[0 : int(ds.Rows), 0 : int(ds.Columns)]
    return ipp + i[..., None] * sx * iop[:3] + j[..., None] * sy * iop[3:]


def insert_ellipsoid(
    datasets: list[Dataset], center: np.ndarray, radii_mm: tuple[float, float, float], hu: float = 65.0, seed: int = 0
) -> tuple[list[Dataset], float]:
    """Copies of ``datasets`` with an axis-aligned (LPS) ellipsoid of ``hu`` ± noise; returns (copies, volume mL)."""
    rng = np.random.default_rng(seed)
    out = []
    radii = np.asarray(radii_mm, dtype=float)
    for ds in datasets:
        ds = copy.deepcopy(ds)
        pts = source_points(ds)
        inside = (((pts - np.asarray(center)) / radii) ** 2).sum(axis=-1) <= 1.0
        if inside.any():
            slope = float(ds.get("RescaleSlope", 1) or 1)
            intercept = float(ds.get("RescaleIntercept", 0) or 0)
            arr = ds.pixel_array.copy()
            value = (hu + rng.normal(0, 4, size=int(inside.sum())) - intercept) / slope
            arr[inside] = np.round(value).astype(arr.dtype)
            ds.PixelData = arr.tobytes()
        out.append(ds)
    return out, float(4.0 / 3.0 * np.pi * np.prod(radii) / 1000.0)
