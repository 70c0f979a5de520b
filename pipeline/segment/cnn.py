"""Model-1 runtime: a DeepBleed-style 3D U-Net (Keras 3 / TensorFlow) behind the Segmenter protocol.

A model directory holds ``model.keras`` (architecture + weights), ``preprocess.json``
(``PreprocessConfig``) and ``metadata.json`` (``pipeline.models.ModelMetadata``, framework "keras").
Inference: brain-cropped isotropic grid (``preprocess.to_model_grid``) → whole-volume or tiled
prediction → probability map resampled back onto the volume grid → threshold (edge re-drawn at the CT's
resolution when ``preprocess.json`` says ``refine``) → restricted to the brain.
Runs on CPU with a bounded thread pool by default; TensorFlow places it on a GPU when one is visible.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.models import ModelMetadata
from pipeline.segment.network import WEIGHTS_FILE, configure_threads, device, predict_grid
from pipeline.segment.preprocess import ModelInput, PreprocessConfig, from_model_grid, to_model_grid
from pipeline.segment.refine import refine_mask

log = logging.getLogger(__name__)



class CNNSegmenter:
    """Segmenter protocol implementation for a trained Keras 3D U-Net model directory."""

    def __init__(self, model, config: PreprocessConfig, metadata: ModelMetadata, model_dir: Path | None = None):
        self.model = model
        self.config = config
        self.metadata = metadata
        self.model_dir = Path(model_dir) if model_dir else None
        self.name = metadata.name
        self.version = metadata.version

    @classmethod
    def load(cls, model_dir: Path, threads: int | None = None) -> "CNNSegmenter":
        model_dir = Path(model_dir)
        metadata = ModelMetadata.read(model_dir)
        framework = (metadata.extra or {}).get("framework")
        if metadata.kind != "segmenter" or framework != "keras":
            raise ValueError(f"{model_dir}: expected a keras segmenter, metadata says kind={metadata.kind!r} "
                             f"framework={framework!r}")
        config = PreprocessConfig.read(model_dir)
        weights = model_dir / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{model_dir}: {WEIGHTS_FILE} missing")
        configure_threads(threads)
        import keras

        model = keras.models.load_model(weights, compile=False)
        log.info("loaded segmenter %s v%s on %s", metadata.name, metadata.version, device())
        return cls(model, config, metadata, model_dir)

    def prepare(self, volume, brain: np.ndarray) -> ModelInput:
        return to_model_grid(volume.to_sitk(), np.asarray(brain, bool), self.config)

    def predict_proba(self, volume, brain: np.ndarray) -> np.ndarray:
        """Hematoma probability on the volume grid (z, y, x), 0 outside the brain."""
        brain = np.asarray(brain, bool)
        if brain.shape != volume.hu.shape:
            raise ValueError(f"brain mask shape {brain.shape} differs from the volume's {volume.hu.shape}")
        if not brain.any():
            return np.zeros(volume.hu.shape, np.float32)
        image = volume.to_sitk()
        model_input = to_model_grid(image, brain, self.config)
        prob = predict_grid(self.model, model_input.image, self.config)
        prob[~model_input.brain] = 0.0
        back = from_model_grid(prob, model_input, image)
        back[~brain] = 0.0
        return back

    def predict_mask(self, volume, brain: np.ndarray) -> np.ndarray:
        return self.mask_from_proba(volume, brain, self.predict_proba(volume, brain))

    def mask_from_proba(self, volume, brain: np.ndarray, prob: np.ndarray) -> np.ndarray:
        """The runtime's mask from a ``predict_proba`` map: threshold or edge refinement, small blobs out
        (one place, so an evaluation that keeps the map measures exactly what the node reports)."""
        if self.config.refine:
            mask = refine_mask(volume.hu, np.asarray(brain, bool), prob, self.config.threshold, volume.spacing[::-1])
        else:
            mask = prob >= self.config.threshold
        return drop_small_components(mask, self.config.min_component_ml / volume.voxel_volume_ml)


def drop_small_components(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    """Remove 26-connected blobs with fewer than ``min_voxels`` voxels."""
    if min_voxels <= 1 or not mask.any():
        return mask
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]
