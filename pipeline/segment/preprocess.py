"""Model-1 preprocessing: the ONE function that turns a head CT into the CNN's input.

Training (``training.segmenter``) and inference (``pipeline.segment.cnn``) both call
``to_model_grid``, so a model never sees data prepared differently from what it was trained on.
Steps: crop to the brain's bounding box (plus a margin), resample by physical coordinates to an
isotropic model grid that keeps the volume's orientation, window the HU values to [0, 1] and zero
everything outside the brain. ``from_model_grid`` maps a probability map back onto the volume grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from pipeline.segment.config import PREPROCESS_FILE, PreprocessConfig  # noqa: F401 (PREPROCESS_FILE re-exported)


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
