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

from pipeline.volume import Volume

VERSION = "1"


@dataclass(frozen=True)
class ClassicalParams:
    lo_hu: float = 40.0
    hi_hu: float = 90.0
    smooth_mm: float = 1.0          # in-plane median filter radius before thresholding (noise, not edges)
    edge_margin_mm: float = 4.0     # ignore the brain's outer rim: bone partial volume / beam hardening
    min_component_ml: float = 0.3   # smaller connected blobs are noise, vessels or calcification specks
    core_fraction: float = 0.0      # reserved

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
        hu = volume.hu
        # work in the brain's bounding box only: a fraction of the volume, same answer
        box = ndimage.find_objects(brain.astype(np.uint8))[0]
        sub_hu, sub_brain = hu[box], brain[box]
        if p.smooth_mm > 0:
            ry, rx = max(1, round(p.smooth_mm / sy)), max(1, round(p.smooth_mm / sx))
            sub_hu = ndimage.median_filter(sub_hu, size=(1, 2 * ry + 1, 2 * rx + 1))
        search = sub_brain
        if p.edge_margin_mm > 0:
            # distance to the brain surface in mm (true anisotropic spacing)
            dist = ndimage.distance_transform_edt(np.pad(sub_brain, 1), sampling=(sz, sy, sx))[1:-1, 1:-1, 1:-1]
            search = dist > p.edge_margin_mm
        blood = (sub_hu >= p.lo_hu) & (sub_hu <= p.hi_hu) & search
        labels, n = ndimage.label(blood)
        out_sub = np.zeros(blood.shape, dtype=bool)
        if n:
            sizes_ml = np.bincount(labels.ravel())[1:] * volume.voxel_volume_ml
            keep = np.flatnonzero(sizes_ml >= p.min_component_ml) + 1
            out_sub = np.isin(labels, keep)
        out = np.zeros(volume.shape, dtype=bool)
        out[box] = out_sub
        return out
