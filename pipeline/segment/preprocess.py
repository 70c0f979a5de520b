"""Model-1 preprocessing: the ONE function that turns a head CT into the CNN's input.

Training (``training.segmenter``) and inference (``pipeline.segment.cnn``) both call
``to_model_grid``, so a model never sees data prepared differently from what it was trained on.
Steps: crop to the brain's bounding box (plus a margin), resample by physical coordinates to an
isotropic model grid that keeps the volume's orientation, window the HU values to [0, 1] and zero
everything outside the brain. ``from_model_grid`` maps a probability map back onto the volume grid.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

PREPROCESS_FILE = "preprocess.json"


@dataclass(frozen=True)
class PreprocessConfig:
    """How a model's input is made; stored beside the weights as ``preprocess.json``."""

    spacing_mm: float = 1.5                 # isotropic model-grid spacing
    window_hu: tuple[float, float] = (0.0, 120.0)  # HU mapped linearly to [0, 1], clipped
    margin_mm: float = 6.0                  # around the brain's bounding box
    multiple: int = 8                       # model-grid sizes are a multiple of this (U-Net poolings)
    patch: tuple[int, int, int] = (64, 64, 64)  # training patch / sliding-window tile, (z, y, x)
    max_whole_voxels: int = 0               # grids up to this size run in one pass; larger ones (all, at 0)
                                            # tile by tile, so instance-norm statistics see patch-sized
                                            # context as in training (whole-volume passes over-segment)
    threshold: float = 0.5                  # probability → mask
    min_component_ml: float = 0.0           # connected blobs smaller than this are dropped (specks)
    refine: bool = False                    # re-draw the mask's edge at the CT's resolution (segment.refine)
    tta_flips: tuple[tuple[int, ...], ...] = ()  # test-time augmentation: also predict on the grid mirrored
                                            # along these (z, y, x) axes and average; ((2,),) = left-right

    def __post_init__(self) -> None:
        if not self.spacing_mm > 0:
            raise ValueError(f"spacing_mm must be > 0, got {self.spacing_mm}")
        lo, hi = self.window_hu
        if not hi > lo:
            raise ValueError(f"window_hu must be (low, high) with high > low, got {self.window_hu}")
        if self.multiple < 1 or any(p < 1 or p % self.multiple for p in self.patch):
            raise ValueError(f"patch {self.patch} must be positive multiples of {self.multiple}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.min_component_ml < 0:
            raise ValueError(f"min_component_ml must be >= 0, got {self.min_component_ml}")
        for axes in self.tta_flips:
            if not axes or len(set(axes)) != len(axes) or any(a not in (0, 1, 2) for a in axes):
                raise ValueError(f"tta_flips entries must be distinct axes from (0, 1, 2), got {axes!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing keys {unknown}; known: {sorted(known)}")
        data = dict(data)
        for key in ("window_hu", "patch"):
            if key in data:
                data[key] = tuple(data[key])
        if "tta_flips" in data:
            data["tta_flips"] = tuple(tuple(axes) for axes in data["tta_flips"])
        return cls(**data)

    def write(self, model_dir: Path) -> Path:
        path = Path(model_dir) / PREPROCESS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def read(cls, model_dir: Path) -> "PreprocessConfig":
        path = Path(model_dir) / PREPROCESS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{model_dir} is not a CNN model directory: {PREPROCESS_FILE} missing")
        return cls.from_dict(json.loads(path.read_text()))


@dataclass
class ModelInput:
    """The CNN's view of one volume: windowed image, brain mask and the grid they live on."""

    image: np.ndarray          # (z, y, x) float32 in [0, 1], 0 outside the brain
    brain: np.ndarray          # (z, y, x) bool, brain on the model grid
    reference: sitk.Image = field(repr=False)  # geometry of the model grid (x, y, z order in SimpleITK)


def window(hu: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    lo, hi = config.window_hu
    return np.clip((np.asarray(hu, np.float32) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def array_image(array: np.ndarray, like: sitk.Image, pixel=sitk.sitkFloat32) -> sitk.Image:
    """A (z, y, x) array as a SimpleITK image on ``like``'s grid."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    if image.GetSize() != like.GetSize():
        raise ValueError(f"array of shape {array.shape} does not match grid size {like.GetSize()} (x, y, z)")
    image.CopyInformation(like)
    return sitk.Cast(image, pixel)


def model_grid(like: sitk.Image, brain: np.ndarray, config: PreprocessConfig) -> sitk.Image:
    """The isotropic grid, in ``like``'s orientation, that covers the brain plus a margin."""
    if brain.shape != sitk.GetArrayViewFromImage(like).shape:
        raise ValueError(f"brain mask shape {brain.shape} differs from the volume's {sitk.GetArrayViewFromImage(like).shape}")
    if not brain.any():
        raise ValueError("brain mask is empty: nothing to segment")
    zyx = np.argwhere(brain)
    lo_idx, hi_idx = zyx.min(0)[::-1], zyx.max(0)[::-1]   # (x, y, z) voxel indices
    spacing = np.asarray(like.GetSpacing(), float)
    lo_mm = lo_idx * spacing - config.margin_mm            # extent in the image's own axes (mm)
    hi_mm = hi_idx * spacing + config.margin_mm
    step = config.spacing_mm
    size = [int(math.ceil((h - l) / step)) + 1 for l, h in zip(lo_mm, hi_mm)]
    size = [int(math.ceil(s / config.multiple) * config.multiple) for s in size]
    # centre the rounded-up grid on the brain box
    centre = (lo_mm + hi_mm) / 2.0
    start = centre - (np.asarray(size) - 1) * step / 2.0
    direction = np.asarray(like.GetDirection(), float).reshape(3, 3)
    origin = np.asarray(like.GetOrigin(), float) + direction @ start
    ref = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    ref.SetSpacing([step] * 3)
    ref.SetDirection(like.GetDirection())
    ref.SetOrigin(tuple(origin))
    return ref


def resample(image: sitk.Image, reference: sitk.Image, linear: bool = True, default: float = 0.0,
             antialias: bool = False) -> sitk.Image:
    """Resample by physical coordinates; ``antialias`` low-passes before shrinking (labels)."""
    if antialias:
        src = np.asarray(image.GetSpacing(), float)
        target = float(reference.GetSpacing()[0])
        sigma_vox = [0.5 * math.sqrt(max(target ** 2 - s ** 2, 0.0)) / s for s in src]  # (x, y, z)
        if any(s > 0 for s in sigma_vox):
            from scipy import ndimage

            smooth = ndimage.gaussian_filter(sitk.GetArrayFromImage(image).astype(np.float32),
                                             sigma=sigma_vox[::-1], truncate=3.0)
            image = array_image(smooth, image)
    interp = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    return sitk.Resample(image, reference, sitk.Transform(), interp, default, sitk.sitkFloat32)


def to_model_grid(hu_image: sitk.Image, brain: np.ndarray, config: PreprocessConfig) -> ModelInput:
    """Brain-cropped, resampled, windowed input for the CNN (used by training AND inference)."""
    ref = model_grid(hu_image, brain, config)
    # Mask BEFORE resampling: interpolation across the brain edge must not drag skull (≈1000 HU, which
    # windows like blood) onto the brain's rim; outside the brain becomes the window's floor.
    hu = np.where(brain, sitk.GetArrayViewFromImage(hu_image), np.float32(config.window_hu[0]))
    hu = sitk.GetArrayFromImage(resample(array_image(hu.astype(np.float32), hu_image), ref, linear=True,
                                         default=float(config.window_hu[0])))
    brain_img = array_image(brain.astype(np.float32), hu_image)
    brain_m = sitk.GetArrayFromImage(resample(brain_img, ref, linear=True)) >= 0.5
    image = window(hu, config)
    image[~brain_m] = 0.0
    return ModelInput(image=image, brain=brain_m, reference=ref)


def select_labels(mask_image: sitk.Image, labels: tuple[int, ...] | None = (1,)) -> sitk.Image:
    """Float 0/1 image of the voxels whose label is in ``labels`` (``None``: any non-zero label).

    Synthetic masks code 1 = intracerebral hematoma, 2 = intraventricular blood; model 1 targets 1.
    """
    arr = sitk.GetArrayViewFromImage(mask_image)
    sel = arr > 0 if labels is None else np.isin(arr, list(labels))
    return array_image(sel.astype(np.float32), mask_image)


def label_to_model_grid(mask_image: sitk.Image, model_input: ModelInput,
                        labels: tuple[int, ...] | None = (1,)) -> np.ndarray:
    """A ground-truth mask as a soft (partial-volume) label on the model grid, float32 in [0, 1]."""
    frac = sitk.GetArrayFromImage(resample(select_labels(mask_image, labels),
                                           model_input.reference, linear=True, antialias=True))
    return np.clip(frac, 0.0, 1.0).astype(np.float32)


def from_model_grid(prob: np.ndarray, model_input: ModelInput, like: sitk.Image) -> np.ndarray:
    """A model-grid map (z, y, x) resampled linearly onto ``like``'s grid; 0 outside the model grid."""
    if prob.shape != model_input.image.shape:
        raise ValueError(f"map shape {prob.shape} differs from the model grid {model_input.image.shape}")
    return sitk.GetArrayFromImage(resample(array_image(prob.astype(np.float32), model_input.reference), like))
