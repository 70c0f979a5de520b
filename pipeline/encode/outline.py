"""Key slices of a hematoma and its outline on the key slice, in DICOM SCOORD pixel coordinates.

Why: viewers draw an SR measurement only when it carries an image region (OHIF 3.13 shows nothing
else), so the report's planar measurement is the hematoma's outline on the slice where it is
largest. The outline is the boundary of the largest connected region on that slice (holes ignored),
traced by marching squares at 0.5, so it runs along the pixel edges of the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import contourpy
import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class KeyOutline:
    """The outline of the hematoma on source slice ``slice_index``.

    ``points``: (n, 2) closed POLYLINE (first point repeated last) as (column, row) with the origin
    at the top-left corner of the top-left pixel (pixel centres at +0.5), as SCOORD wants.
    ``area_cm2``: area of the outlined region's pixels.
    """

    slice_index: int
    points: np.ndarray
    area_cm2: float


def key_slices(source_mask: np.ndarray, max_slices: int) -> list[int]:
    """Indices of the slices with the largest hematoma area, in spatial order; the middle slice if none."""
    if max_slices < 1:
        raise ValueError(f"max_slices must be ≥ 1, got {max_slices}")
    area = np.asarray(source_mask, dtype=bool).reshape(len(source_mask), -1).sum(axis=1)
    if not area.any():
        return [len(source_mask) // 2]
    ranked = [int(k) for k in np.argsort(-area, kind="stable") if area[k] > 0][:max_slices]
    return sorted(ranked)


def key_outline(source_mask: np.ndarray, pixel_spacing_mm: tuple[float, float]) -> KeyOutline | None:
    """The outline on the key slice, or None for an empty mask.

    ``pixel_spacing_mm``: (row spacing, column spacing), as DICOM PixelSpacing.
    """
    mask = np.asarray(source_mask, dtype=bool)
    if not mask.any():
        return None
    k = key_slices(mask, 1)[0]
    labels, n = ndimage.label(mask[k])
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    region = labels == int(np.argmax(sizes)) + 1
    filled = np.pad(ndimage.binary_fill_holes(region), 1).astype(np.float64)
    lines = contourpy.contour_generator(z=filled, name="serial", corner_mask=False).lines(0.5)
    line = max(lines, key=len)
    points = _drop_collinear(line - 0.5)        # padded index space → SCOORD (pixel centre = +0.5)
    row_mm, col_mm = (float(v) for v in pixel_spacing_mm)
    return KeyOutline(slice_index=k, points=points, area_cm2=float(region.sum()) * row_mm * col_mm / 100.0)


def _drop_collinear(line: np.ndarray) -> np.ndarray:
    """The same closed polygon without the points that lie on a straight run (marching squares
    emits one per pixel edge); the first point is repeated at the end."""
    ring = line[:-1] if np.allclose(line[0], line[-1]) else line
    before, after = np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0)
    cross = (ring[:, 0] - before[:, 0]) * (after[:, 1] - ring[:, 1]) - (ring[:, 1] - before[:, 1]) * (after[:, 0] - ring[:, 0])
    kept = ring[np.abs(cross) > 1e-9]
    return np.vstack([kept, kept[:1]])
