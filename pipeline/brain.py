"""CT brain extraction: the region the hematoma search may never leave.

Classical and deterministic (skull ring → intracranial space → soft tissue 0–100 HU → opening →
largest component → hole filling), so it needs no model and behaves the same on real heads and on
phantoms. It runs on a ~1.4 mm in-plane copy (the mask's edge sits against bone, where 0.5 mm buys
nothing; the hematoma threshold then runs at full resolution inside it) and morphology uses distance transforms in millimetres, so cost does not grow with radius
and anisotropic slice spacing is respected.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline import morphology
from pipeline.morphology import morph as _morph

from pipeline.volume import Volume

HEAD_HU = -300.0              # anything denser than this is patient (or phantom), not air
BONE_HU = 200.0               # calvarium; brain never reaches it
SOFT_LO_HU, SOFT_HI_HU = -15.0, 100.0   # CSF … clotted blood: every hematoma voxel is inside
OPEN_RADIUS_MM = 2.5          # breaks thin bridges (foramina, orbits) between brain and muscle
BONE_MARGIN_MM = 1.5          # inner-table partial volume reads 50–90 HU: neither brain nor blood
RING_CLOSING_MM = (1.5, 5.0, 10.0)  # gaps in the skull ring (sutures, foramina, tilt) closed in steps
MIN_INTRACRANIAL_MM2 = 400.0  # an enclosed area below 2×2 cm is a foramen or sinus, not the cranium
MIN_BRAIN_ML = 20.0           # smaller than this is not a brain
MIN_BRAIN_FRACTION = 0.3      # a real brain fills most of the cranium; less means an empty (phantom) skull
WORK_PIXEL_MM = 1.4           # in-plane working resolution (the CT's own pixels are 0.4–0.5 mm)
RING_PIXEL_MM = 2.0           # in-plane resolution for finding the skull outline


def extract_brain(volume: Volume) -> np.ndarray:
    """Bool (z, y, x) brain mask on ``volume``'s grid; empty if no cranium is found.

    A cranium holding no soft tissue (a phantom's air- or water-filled skull) yields the cranial
    cavity itself, so phantoms still exercise the whole pipeline.
    """
    hu = volume.hu
    fy = max(1, round(WORK_PIXEL_MM / volume.spacing[1]))
    fx = max(1, round(WORK_PIXEL_MM / volume.spacing[0]))
    out = np.zeros(hu.shape, dtype=bool)
    # only the head's bounding box matters; the table and air around it are most of the voxels
    dense = hu[:, ::fy, ::fx] > HEAD_HU
    if not dense.any():
        return out
    box = ndimage.find_objects(dense.astype(np.uint8))[0]
    box_full = (box[0], slice(box[1].start * fy, box[1].stop * fy), slice(box[2].start * fx, box[2].stop * fx))
    sub = hu[box_full]
    spacing = np.array([volume.spacing[2], volume.spacing[1] * fy, volume.spacing[0] * fx])
    voxel_ml = float(np.prod(spacing)) / 1000.0
    brain_small = _extract(sub[:, ::fy, ::fx], spacing, voxel_ml)
    if not brain_small.any():
        return out
    up = np.repeat(np.repeat(brain_small, fy, axis=1), fx, axis=2)[:, : sub.shape[1], : sub.shape[2]]
    out[box_full] = up & (sub <= BONE_HU)
    return out


def _extract(hu: np.ndarray, spacing: np.ndarray, voxel_ml: float) -> np.ndarray:
    bone = hu > BONE_HU
    # the cranial outline needs no fine detail: find it at half the working resolution
    f = max(1, round(RING_PIXEL_MM / spacing[1:].max()))
    coarse = _inside_skull(bone[:, ::f, ::f], spacing[1:] * f)
    intracranial = np.repeat(np.repeat(coarse, f, axis=1), f, axis=2)[:, : hu.shape[1], : hu.shape[2]] & ~bone
    if not intracranial.any():
        return intracranial
    near_bone = _dilate(bone, BONE_MARGIN_MM, spacing)
    soft = (hu >= SOFT_LO_HU) & (hu <= SOFT_HI_HU) & intracranial & ~near_bone
    brain = _largest_component(_open(soft, OPEN_RADIUS_MM, spacing))
    if brain.sum() < MIN_BRAIN_FRACTION * intracranial.sum() or brain.sum() * voxel_ml < MIN_BRAIN_ML:
        # an empty cranium (phantom): the cavity itself is the search region
        # phantom inserts (plates, blocks) can cut the cavity in two: keep every sizeable part
        cavity = _large_components(intracranial & ~near_bone, 0.05)
        return cavity if cavity.sum() * voxel_ml >= MIN_BRAIN_ML else np.zeros(hu.shape, dtype=bool)
    brain = _close(brain, 2.0, spacing) & intracranial & ~near_bone
    return _fill_slices(brain) & intracranial & ~bone


def _inside_skull(bone: np.ndarray, pixel_yx: np.ndarray) -> np.ndarray:
    """Per axial slice: what the bone ring encloses, closing gaps up to ~2 cm.

    Each slice takes the smallest gap-closing radius that encloses nearly as much as the largest
    one: small radii keep the outline tight, but an open ring (foramina, skull base, tilt) would
    otherwise leave only a sinus or an orbit enclosed. A slice whose ring cannot be closed (below
    the skull base, above the vertex) has no brain.
    """
    out = np.zeros_like(bone)
    todo = np.flatnonzero(bone.reshape(bone.shape[0], -1).sum(axis=1) >= 20)
    if not len(todo):
        return out
    spacing = np.array([1.0, *pixel_yx])
    pad = int(max(RING_CLOSING_MM) / pixel_yx.min()) + 2
    ring = np.pad(bone[todo], ((0, 0), (pad, pad), (pad, pad)))
    # thicken the ring until its gaps close, take what it encloses, then grow that back to the bone;
    # one distance map serves all radii, a second grows every slice back by its own radius
    to_bone = morphology.distance_mm(ring, spacing, planar=True)
    interiors, areas = [], []
    for radius in RING_CLOSING_MM:
        thick = to_bone <= radius
        interior = np.stack([ndimage.binary_fill_holes(s) for s in thick]) & ~thick
        interiors.append(interior)
        areas.append(interior.reshape(len(todo), -1).sum(axis=1) * pixel_yx[0] * pixel_yx[1])
    areas = np.array(areas)
    chosen = np.zeros(ring.shape, dtype=bool)
    grow = np.zeros(len(todo))
    for i in range(len(todo)):
        best = areas[:, i].max()
        if best <= 0:
            continue
        choice = int(np.flatnonzero(areas[:, i] >= 0.8 * best)[0])
        chosen[i] = interiors[choice][i]
        grow[i] = RING_CLOSING_MM[choice]
    if not chosen.any():
        return out
    to_interior = morphology.distance_mm(chosen, spacing, planar=True)
    enclosed = (to_interior <= grow[:, None, None]) & ~ring
    enclosed = enclosed[:, pad:-pad, pad:-pad]
    for i, z in enumerate(todo):
        if enclosed[i].sum() * pixel_yx[0] * pixel_yx[1] > MIN_INTRACRANIAL_MM2:
            out[z] = _largest_component(enclosed[i])
    return out


def _large_components(mask: np.ndarray, fraction: float) -> np.ndarray:
    """Components at least ``fraction`` of the largest one."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return np.isin(labels, np.flatnonzero(sizes >= fraction * sizes.max()))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _dilate(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    return _morph(mask, radius_mm, spacing, "dilate")


def _open(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    return _morph(mask, radius_mm, spacing, "open")


def _close(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    return _morph(mask, radius_mm, spacing, "close") | mask


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice (ventricles, hematoma cores touching nothing), then in 3-D."""
    out = np.stack([ndimage.binary_fill_holes(s) for s in mask])
    return ndimage.binary_fill_holes(out)
