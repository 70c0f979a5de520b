"""Classical hematoma segmenter: acute blood is 40–90 HU; keep the sizeable blobs inside the brain.

The fallback when no trained model is installed and the baseline in every evaluation. The smoothing,
the margin from the inner skull surface (where partial volume with bone and beam hardening lift grey
matter into the blood range) and the size filter are what keep a normal head near zero.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipeline.morphology import distance_mm
from pipeline.volume import Volume

VERSION = "1"
SEED_PIXEL_MM = 0.9   # in-plane resolution for finding seeds


@dataclass(frozen=True)
class ClassicalParams:
    lo_hu: float = 40.0
    hi_hu: float = 90.0
    smooth_mm: float = 1.0          # in-plane mean filter radius before thresholding (noise, not edges)
    edge_margin_mm: float = 4.0     # no seed in the brain's outer rim: bone partial volume / beam hardening
    min_component_ml: float = 0.3   # smaller connected blobs are noise, vessels or calcification specks
    dense_hu: float = 150.0         # bone / calcification
    dense_margin_mm: float = 3.0    # no clot core this close to dense voxels
    seed_hu: float = 50.0           # a clot's core (smoothed) is denser than any grey matter (30–45 HU)
    seed_contrast_hu: float = 18.0  # … and than its own slice's median brain density
    min_slice_brain_fraction: float = 0.25  # no seeds in slices with little brain (skull base, vertex)

    def __post_init__(self) -> None:
        if not self.lo_hu < self.hi_hu:
            raise ValueError(f"lo_hu ({self.lo_hu}) must be below hi_hu ({self.hi_hu})")
        if self.min_component_ml < 0 or self.edge_margin_mm < 0 or self.smooth_mm < 0:
            raise ValueError("min_component_ml, edge_margin_mm and smooth_mm must be ≥ 0")


class ClassicalSegmenter:
    """Threshold + connected components + size filter, all inside the brain mask."""

    name = "classical-threshold"

    def __init__(self, params: ClassicalParams | None = None, version: str = VERSION) -> None:
        self.params = params or ClassicalParams()
        self.version = version

    @classmethod
    def load(cls, model_dir: Path | str) -> "ClassicalSegmenter":
        """A model directory whose metadata.json has framework "classical" and optional "params"."""
        meta = json.loads((Path(model_dir) / "metadata.json").read_text())
        params = meta.get("params") or (meta.get("extra") or {}).get("params") or {}
        return cls(ClassicalParams(**params), version=str(meta.get("version", VERSION)))

    def _grow(
        self,
        hu: np.ndarray,
        brain: np.ndarray,
        labels: np.ndarray,
        kept: np.ndarray,
        slice_medians: np.ndarray,
        spacing_zyx: tuple[float, float, float],
        voxel_ml: float,
    ) -> np.ndarray:
        """Grow each seed to its half-contrast edge (lesion core vs. its slices' brain), within reach.

        Half contrast puts the edge where partial volume is 50 % blood, so the volume is neither
        inflated by a fixed 40 HU threshold that grey matter noise crosses nor shrunk by blur.
        """
        p = self.params
        out = np.zeros(hu.shape, dtype=bool)
        reach_mm = p.edge_margin_mm + max(spacing_zyx)
        pad = [int(np.ceil(reach_mm / s)) + 1 for s in spacing_zyx]
        # one distance map to all seeds (each growth is still confined to its own connected component)
        within_reach = _near(kept, spacing_zyx, reach_mm, region=kept, beyond=False)
        for i in np.unique(labels[kept]):
            seed_box = ndimage.find_objects((labels == i).astype(np.uint8))[0]
            box = tuple(
                slice(max(0, sl.start - q), min(n, sl.stop + q)) for sl, q, n in zip(seed_box, pad, hu.shape)
            )
            seed = labels[box] == i
            lesion_hu = float(np.median(hu[box][seed]))
            zs = np.nonzero(seed)[0] + box[0].start
            background = float(np.median(slice_medians[zs]))
            threshold = max(p.lo_hu, (lesion_hu + background) / 2.0)
            candidate = (hu[box] >= threshold) & (hu[box] <= p.hi_hu) & brain[box]
            grown, n = ndimage.label((candidate & within_reach[box]) | seed)
            comp = grown == grown[seed][0] if n else seed
            # hypodense parts a clot encloses (blend, swirl, black-hole signs) are clot too: fill in 3-D
            # and slice by slice (a hole open above or below is still enclosed in its own slice)
            comp = ndimage.binary_fill_holes(comp)
            comp = np.stack([ndimage.binary_fill_holes(sl) for sl in comp]) & brain[box]
            if comp.sum() * voxel_ml >= p.min_component_ml:
                out[box] |= comp
        return out

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "params": asdict(self.params)}

    def predict_mask(self, volume: Volume, brain: np.ndarray) -> np.ndarray:
        brain = np.asarray(brain, dtype=bool)
        if brain.shape != volume.shape:
            raise ValueError(f"brain mask shape {brain.shape} is not the volume shape {volume.shape}")
        if not brain.any():
            return np.zeros(volume.shape, dtype=bool)
        p = self.params
        sx, sy, sz = volume.spacing
        # work in the brain's bounding box only: a fraction of the volume, same answer
        box = ndimage.find_objects(brain.astype(np.uint8))[0]
        raw, sub_brain = volume.hu[box], brain[box]
        # Seeds are found on a ~0.9 mm in-plane block mean (a quarter of the voxels, less noise);
        # the extent is then grown on the raw full-resolution HU.
        f = max(1, int(SEED_PIXEL_MM / max(sx, sy)))
        c_hu, c_brain = _block_mean(raw, f), _block_any(sub_brain, f)
        cs = (sz, sy * f, sx * f)
        if p.smooth_mm > 0:
            ry, rx = max(1, round(p.smooth_mm / cs[1])), max(1, round(p.smooth_mm / cs[2]))
            c_hu = ndimage.uniform_filter(c_hu, size=(1, 2 * ry + 1, 2 * rx + 1), mode="nearest")
        # seeds: clearly clotted blood, away from the skull and from dense bits; grey matter is 30–45 HU
        c_seeds = (c_hu >= p.seed_hu) & (c_hu <= p.hi_hu) & c_brain
        # beam hardening and thick-slice partial volume lift whole slices near the skull base and the
        # vertex into the blood range: a seed must stand out from its own slice's brain
        area = c_brain.reshape(len(c_brain), -1).sum(axis=1)
        medians = np.array([np.median(h[b]) if a else np.inf for h, b, a in zip(c_hu, c_brain, area)])
        c_seeds &= (c_hu - medians[:, None, None].astype(np.float32)) >= p.seed_contrast_hu
        c_seeds &= (area >= p.min_slice_brain_fraction * area.max())[:, None, None]
        # the distance tests run last, only around the few candidates left
        c_seeds &= ~_near(~c_brain, cs, p.edge_margin_mm, region=c_seeds, beyond=True)
        if p.dense_margin_mm > 0:
            # skull-base bone bits and calcifications smear into the blood range (partial volume,
            # interpolation across thick slices): no clot may be seeded next to them
            dense = _block_any(raw > p.dense_hu, f)
            c_seeds &= ~_near(dense, cs, p.dense_margin_mm, region=c_seeds, beyond=False)
        seeds = _upsample(c_seeds, f, raw.shape) & sub_brain
        labels, n = ndimage.label(seeds)
        kept = np.zeros(seeds.shape, dtype=bool)
        if n:
            sizes_ml = np.bincount(labels.ravel(), minlength=n + 1)[1:] * volume.voxel_volume_ml
            kept = np.isin(labels, np.flatnonzero(sizes_ml >= p.min_component_ml / 2) + 1)
        if kept.any():
            kept = self._grow(raw, sub_brain, labels, kept, medians, (sz, sy, sx), volume.voxel_volume_ml)
        out = np.zeros(volume.shape, dtype=bool)
        out[box] = kept
        return out


def _fill_holes_in_box(mask: np.ndarray) -> np.ndarray:
    """3-D hole filling restricted to the mask's bounding box (the mask is tiny next to the volume)."""
    if not mask.any():
        return mask
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    out = mask.copy()
    out[box] = ndimage.binary_fill_holes(mask[box])
    return out


def _near(
    mask: np.ndarray, spacing_zyx, radius_mm: float, region: np.ndarray, beyond: bool
) -> np.ndarray:
    """True where a voxel is within ``radius_mm`` of ``mask``, computed only around ``region``.

    Valid for every voxel within ``radius_mm`` of ``region``'s bounding box (False elsewhere); space
    beyond the array counts as ``beyond``. Cropping first makes the distance map cost follow the
    handful of candidates instead of the whole brain.
    """
    out = np.zeros(mask.shape, dtype=bool)
    if not region.any():
        return out
    pad = [int(np.ceil(radius_mm / s)) + 1 for s in spacing_zyx]
    bbox = ndimage.find_objects(region.astype(np.uint8))[0]
    box = tuple(slice(max(0, b.start - q), min(n, b.stop + q)) for b, q, n in zip(bbox, pad, mask.shape))
    sub = np.pad(mask[box], 1, constant_values=beyond)
    if not sub.any():
        return out
    out[box] = (distance_mm(sub, spacing_zyx) <= radius_mm)[1:-1, 1:-1, 1:-1]
    return out


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Mean over f×f in-plane blocks (edges padded by repetition)."""
    if f == 1:
        return a
    z, h, w = a.shape
    ph, pw = -h % f, -w % f
    a = np.pad(a, ((0, 0), (0, ph), (0, pw)), mode="edge")
    return a.reshape(z, (h + ph) // f, f, (w + pw) // f, f).mean(axis=(2, 4), dtype=np.float32)


def _block_any(a: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return a
    z, h, w = a.shape
    a = np.pad(a, ((0, 0), (0, -h % f), (0, -w % f)))
    return a.reshape(z, a.shape[1] // f, f, a.shape[2] // f, f).any(axis=(2, 4))


def _upsample(a: np.ndarray, f: int, shape: tuple[int, ...]) -> np.ndarray:
    if f == 1:
        return a
    return np.repeat(np.repeat(a, f, axis=1), f, axis=2)[:, : shape[1], : shape[2]]
