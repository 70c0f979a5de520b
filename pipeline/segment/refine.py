"""Edge refinement of the CNN's hematoma mask at the CT's own resolution.

The CNN sees a 1.5 mm grid; its mask, resampled back onto 0.45 mm pixels, is blocky and its
threshold is one number for every clot. Here the edge is re-drawn where the CT says it is: inside
a few millimetres around the CNN's mask, voxels are hematoma when their (lightly smoothed) density is
at least halfway from the surrounding brain to the clot's own core density — the half-maximum edge
of a partial-volume blurred object. Only regions connected to the CNN's mask are kept, the CNN's
confident core always stays, and enclosed holes (a black hole is part of the clot) are filled; a hole
that is open to the next slice only where it is denser than the brain around (a ventricle's CSF is not).
It never adds a blob the CNN did not find, so it cannot create false positives elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.morphology import distance_mm


@dataclass(frozen=True)
class RefineParams:
    grow_mm: float = 3.0          # how far the edge may move outward from the CNN mask
    core_probability: float = 0.8  # CNN probability that marks the clot's core (its density reference)
    edge_fraction: float = 0.5     # 0.5 = half-way between surroundings and core: the half-maximum edge
    shell_mm: tuple[float, float] = (1.5, 4.0)  # ring around the mask that gives the surroundings' density
    max_hu: float = 100.0         # denser than any clot: bone, calcification
    slice_hole_fraction: float = 0.0  # a hole open to the next slice is filled where denser than this far
    #                                   from the surroundings to the core (CSF of a ventricle stays out)

    def __post_init__(self) -> None:
        if self.grow_mm < 0 or not 0 < self.edge_fraction < 1 or not 0 < self.core_probability < 1:
            raise ValueError("grow_mm must be >= 0, edge_fraction and core_probability in (0, 1)")
        if not 0 <= self.slice_hole_fraction < 1:
            raise ValueError(f"slice_hole_fraction must be in [0, 1), got {self.slice_hole_fraction}")
        if not 0 <= self.shell_mm[0] < self.shell_mm[1]:
            raise ValueError(f"shell_mm must be (inner, outer) with inner < outer, got {self.shell_mm}")


def refine_mask(hu: np.ndarray, brain: np.ndarray, prob: np.ndarray, threshold: float,
                spacing_zyx, params: RefineParams = RefineParams()) -> np.ndarray:
    """Refined bool mask (z, y, x) from the CT (HU), brain mask and CNN probability on the same grid."""
    mask = prob >= threshold
    if not mask.any():
        return mask
    spacing_zyx = np.asarray(spacing_zyx, float)
    # work in the mask's bounding box plus the reach of the shell: distance maps on a whole head are slow
    pad = np.ceil(max(params.grow_mm, params.shell_mm[1]) / spacing_zyx).astype(int) + 1
    where = np.argwhere(mask)
    lo = np.maximum(where.min(0) - pad, 0)
    hi = np.minimum(where.max(0) + pad + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    m, b, p = mask[box], brain[box], prob[box]
    hus = ndimage.uniform_filter(np.asarray(hu[box], np.float32), size=(1, 3, 3))  # noise, in-plane only
    core = p >= params.core_probability
    if core.sum() < 20:
        core = m
    dist = distance_mm(m, spacing_zyx)  # one distance map serves the shell and the growth limit
    shell = (dist > params.shell_mm[0]) & (dist <= params.shell_mm[1]) & b
    clot_hu = float(np.median(hus[core]))
    around_hu = float(np.median(hus[shell])) if shell.any() else clot_hu - 30.0
    edge_hu = around_hu + params.edge_fraction * (clot_hu - around_hu)
    candidate = (dist <= params.grow_mm) & b & (hus >= edge_hu) & (hus < params.max_hu)
    labels, _ = ndimage.label(candidate)
    keep = np.unique(labels[m & candidate])
    out = np.isin(labels, keep[keep > 0]) | core
    out = ndimage.binary_fill_holes(out)
    # holes open to the next slice are closed within the slice where they are denser than the brain
    # around the clot (hypodense blood); a ventricle a clot wraps around is CSF and stays out
    hole_hu = around_hu + params.slice_hole_fraction * (clot_hu - around_hu)
    for z in range(out.shape[0]):
        out[z] |= ndimage.binary_fill_holes(out[z]) & (hus[z] >= hole_hu)
    full = np.zeros(mask.shape, bool)
    full[box] = out & b
    return full
