"""Frozen-CNN features of the hematoma's key axial slices (ResNet50, InceptionV3).

The seed feeds the axial slice with the largest hematoma area and the slices 3 above and 3 below
(clamped at the volume's edge), brain-windowed, to a frozen ImageNet backbone and keeps the pooled
last hidden layer; the three vectors are concatenated. The backbones and their weights:
``pipeline.features.backbones``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from pipeline.features.backbones import Weights, get_backbone, load_backbone, preprocess

BRAIN_WINDOW = (40.0, 80.0)  # level, width (HU)
SLICE_OFFSETS = (-3, 0, 3)


# --- images -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SliceGeometry:
    """Key slices cut on a physical grid (issue 16): the ±3 neighbours are ``offset_mm`` away, not 3
    slices, and each slice shows ``fov_mm`` of the patient (centred on the matrix), whatever the matrix,
    pixel size or slice thickness. At 5 mm slices the offsets are the seed's ±3 slices.

    ``None`` where a geometry is asked for means the seed's way (v1): native slices ±3, the whole
    matrix resized to the network's input.
    """

    fov_mm: float = 240.0
    offset_mm: float = 15.0

    def __post_init__(self) -> None:
        if not (50.0 <= self.fov_mm <= 500.0) or not (0.0 < self.offset_mm <= 50.0):
            raise ValueError(f"SliceGeometry: fov_mm in 50..500 and offset_mm in (0, 50] mm; got {self}")

    @classmethod
    def from_spec(cls, spec: dict | None) -> "SliceGeometry | None":
        """From a model's metadata (``cnn_slice_geometry``); absent: v1."""
        return None if not spec else cls(float(spec["fov_mm"]), float(spec["offset_mm"]))

    def spec(self) -> dict:
        return {"fov_mm": self.fov_mm, "offset_mm": self.offset_mm}

    @property
    def tag(self) -> str:
        """A short name for caches: features cut another way are other features."""
        return f"fov{self.fov_mm:g}-off{self.offset_mm:g}"


def key_slices(mask: np.ndarray, slice_mm: float | None = None, geometry: SliceGeometry | None = None) -> list[int]:
    """Axial indices: the largest-area slice and the slices ``SLICE_OFFSETS`` (v1) or ``±offset_mm``
    (``geometry``, nearest slice at ``slice_mm`` spacing) below and above, clamped to the volume."""
    area = (np.asarray(mask) > 0).reshape(mask.shape[0], -1).sum(axis=1)
    if area.max() == 0:
        raise ValueError("CNN features: the hematoma mask is empty")
    k = int(area.argmax())
    if geometry is None:
        steps = SLICE_OFFSETS
    else:
        if not slice_mm or slice_mm <= 0:
            raise ValueError("CNN features: a slice geometry needs the slice spacing (mm)")
        n = max(1, int(round(geometry.offset_mm / slice_mm)))
        steps = tuple(np.sign(d) * n for d in SLICE_OFFSETS)
    return [min(max(k + int(d), 0), mask.shape[0] - 1) for d in steps]


def physical_fov(images: np.ndarray, pixel_mm: tuple[float, float], fov_mm: float, fill: float) -> np.ndarray:
    """(n, y, x, 1) slices cropped or padded (``fill``) about the matrix centre to ``fov_mm`` square."""
    out = images
    for axis, mm in ((1, pixel_mm[0]), (2, pixel_mm[1])):
        want = max(1, int(round(fov_mm / mm)))
        have = out.shape[axis]
        if have > want:
            lo = (have - want) // 2
            out = np.take(out, np.arange(lo, lo + want), axis=axis)
        elif have < want:
            pad = [(0, 0)] * out.ndim
            pad[axis] = ((want - have) // 2, want - have - (want - have) // 2)
            out = np.pad(out, pad, constant_values=fill)
    return out


def window(hu: np.ndarray, level: float = BRAIN_WINDOW[0], width: float = BRAIN_WINDOW[1]) -> np.ndarray:
    """Brain window to 0..255 (float32), the pixel range keras' ``preprocess_input`` expects."""
    lo = level - width / 2.0
    return (np.clip((np.asarray(hu, dtype=np.float32) - lo) / width, 0.0, 1.0) * 255.0).astype(np.float32)


def slice_images(hu: np.ndarray, mask: np.ndarray, size: int, spacing: tuple[float, float, float] | None = None,
                 geometry: SliceGeometry | None = None) -> np.ndarray:
    """(3, size, size, 3) brain-windowed key slices, resized, gray replicated to 3 channels.

    ``geometry`` (with the volume's ``spacing``, x, y, z mm): slices ±offset_mm apart, each showing
    ``fov_mm`` at size/fov_mm pixels per mm; ``None``: v1 (±3 slices, whole matrix resized)."""
    import tensorflow as tf

    if geometry is not None and spacing is None:
        raise ValueError("CNN features: a slice geometry needs the volume's spacing")
    idx = key_slices(mask, spacing[2] if spacing else None, geometry)
    imgs = window(np.asarray(hu)[idx])[..., None]                              # (3, y, x, 1)
    if geometry is not None:
        imgs = physical_fov(imgs, (spacing[1], spacing[0]), geometry.fov_mm, fill=0.0)  # 0 = below the window
    imgs = tf.image.resize(imgs, (size, size), method="bilinear", antialias=True).numpy()
    return np.repeat(imgs, 3, axis=-1)


class CnnFeatureExtractor:
    """``features(volume_hu, mask)`` -> ``{"<backbone>_s<offset>_<i>": value}`` over the 3 key slices."""

    def __init__(self, name: str, weights: Weights, input_size: int | None = None,
                 geometry: SliceGeometry | None = None) -> None:
        self.geometry = geometry
        self.backbone = get_backbone(name)
        self.weights = weights
        self.input_size = input_size or self.backbone.input_size
        self.model = load_backbone(name, weights, input_size)
        self.dim = int(self.model.output_shape[-1])

    @property
    def feature_names(self) -> list[str]:
        return [f"{self.backbone.name}_s{d:+d}_{i}" for d in SLICE_OFFSETS for i in range(self.dim)]

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Pooled features of windowed images (n, size, size, 3) in 0..255."""
        x = preprocess(self.backbone, images)
        return np.asarray(self.model(x, training=False), dtype=np.float64)

    def features(self, hu: np.ndarray, mask: np.ndarray,
                 spacing: tuple[float, float, float] | None = None) -> "OrderedDict[str, float]":
        emb = self.embed(slice_images(hu, mask, self.input_size, spacing, self.geometry)).ravel()
        return OrderedDict(zip(self.feature_names, map(float, emb)))
