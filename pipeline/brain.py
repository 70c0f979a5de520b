"""CT brain extraction: the region the hematoma search may never leave.

Classical and deterministic (threshold → skull-bounded soft tissue → opening → largest component →
hole filling), so it needs no model and behaves the same on real heads and on phantoms. Sizes are
given in millimetres and converted per axis, because slice spacing differs wildly between series.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline.volume import Volume

HEAD_HU = -300.0          # anything denser than this is patient (or phantom), not air
BONE_HU = 200.0           # calvarium; brain never reaches it
SOFT_LO_HU, SOFT_HI_HU = -15.0, 100.0   # CSF … clotted blood; includes every hematoma voxel
OPEN_RADIUS_MM = 3.0      # breaks thin bridges (foramina, orbits) between brain and scalp/muscle
MIN_BRAIN_ML = 20.0       # smaller than this is not a brain (e.g. a phantom without one)


def extract_brain(volume: Volume) -> np.ndarray:
    """Bool (z, y, x) brain mask on ``volume``'s grid; empty if no brain is found."""
    hu = volume.hu
    spacing_zyx = np.asarray(volume.spacing[::-1], dtype=float)
    head = _largest_component(hu > HEAD_HU)
    if not head.any():
        return np.zeros(hu.shape, dtype=bool)
    bone = hu > BONE_HU
    intracranial = _inside_skull(bone, head)
    soft = (hu >= SOFT_LO_HU) & (hu <= SOFT_HI_HU) & head & ~_dilate_mm(bone, 1.0, spacing_zyx)
    candidate = soft & intracranial
    candidate = _open_mm(candidate, OPEN_RADIUS_MM, spacing_zyx)
    brain = _largest_component(candidate)
    if brain.sum() * volume.voxel_volume_ml < MIN_BRAIN_ML:
        return np.zeros(hu.shape, dtype=bool)
    brain = _close_mm(brain, 2.0, spacing_zyx) & ~bone
    brain = _fill_slices(brain)
    return brain


def _inside_skull(bone: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Per axial slice: what the closed bone ring encloses. Slices with an open ring keep the head."""
    out = np.zeros_like(bone)
    for z in range(bone.shape[0]):
        ring = bone[z]
        if not ring.any():
            out[z] = head[z]
            continue
        closed = ndimage.binary_closing(ring, structure=np.ones((5, 5), bool), iterations=1)
        filled = ndimage.binary_fill_holes(closed)
        inside = filled & ~closed
        # an open ring (skull base, vertex) encloses little: fall back to the head mask there
        out[z] = inside if inside.sum() > 0.05 * head[z].sum() else head[z]
    return out


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _ball(radius_mm: float, spacing_zyx: np.ndarray) -> np.ndarray:
    r = np.maximum(np.floor(radius_mm / spacing_zyx), 0).astype(int)
    zz, yy, xx = np.ogrid[-r[0] : r[0] + 1, -r[1] : r[1] + 1, -r[2] : r[2] + 1]
    d2 = sum(((g * s) / max(radius_mm, 1e-6)) ** 2 for g, s in zip((zz, yy, xx), spacing_zyx))
    return d2 <= 1.0


def _dilate_mm(mask: np.ndarray, radius_mm: float, spacing_zyx: np.ndarray) -> np.ndarray:
    return ndimage.binary_dilation(mask, structure=_ball(radius_mm, spacing_zyx))


def _open_mm(mask: np.ndarray, radius_mm: float, spacing_zyx: np.ndarray) -> np.ndarray:
    return ndimage.binary_opening(mask, structure=_ball(radius_mm, spacing_zyx))


def _close_mm(mask: np.ndarray, radius_mm: float, spacing_zyx: np.ndarray) -> np.ndarray:
    return ndimage.binary_closing(mask, structure=_ball(radius_mm, spacing_zyx))


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice (ventricles, hematoma cores), then in 3-D."""
    out = np.stack([ndimage.binary_fill_holes(s) for s in mask])
    return ndimage.binary_fill_holes(out)
