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
import os
import weakref
from pathlib import Path

import numpy as np

from pipeline.models import ModelMetadata
from pipeline.segment.preprocess import ModelInput, PreprocessConfig, from_model_grid, to_model_grid
from pipeline.segment.refine import refine_mask

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.keras"
THREADS_ENV = "ICH_TF_THREADS"


def configure_threads(threads: int | None = None) -> int:
    """Bound TensorFlow's CPU thread pools (must run before TF's first op; later calls are no-ops).

    ``threads`` defaults to ``$ICH_TF_THREADS`` or the CPUs this process may use. Returns the
    intra-op thread count TensorFlow ends up with.
    """
    import tensorflow as tf

    if threads is None:
        env = os.environ.get(THREADS_ENV)
        threads = int(env) if env else len(os.sched_getaffinity(0))
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # runtime already initialised: keep what it has
        log.debug("TensorFlow already initialised; thread settings unchanged")
    return tf.config.threading.get_intra_op_parallelism_threads() or threads


def device() -> str:
    """'GPU' when TensorFlow sees one (it then places the model there), else 'CPU'."""
    import tensorflow as tf

    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


def build_unet(base_filters: int = 8, depth: int = 3, dropout: float = 0.0, norm: str = "instance"):
    """A small fully-convolutional 3D U-Net (any input size divisible by 2**depth).

    Two 3×3×3 conv + normalisation + ReLU blocks per level, max-pool down, transposed conv up, skip
    concatenation, sigmoid output. ``norm="instance"`` (default) normalises each volume by its own
    statistics, the same at training (patches) and inference (whole volume); batch norm's running
    averages, collected on lesion-centred patches, segmented markedly worse in inference mode. Built from stock Keras layers only, so ``model.keras`` loads without
    custom objects.
    """
    import keras
    from keras import layers

    def block(x, filters, name):
        for i in range(2):
            x = layers.Conv3D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
            if norm == "instance":
                x = layers.GroupNormalization(groups=filters, name=f"{name}_in{i}")(x)
            elif norm == "batch":
                x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
            else:
                raise ValueError(f"norm must be 'instance' or 'batch', got {norm!r}")
            x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
        return x

    inputs = keras.Input((None, None, None, 1), name="ct")
    x, skips = inputs, []
    for d in range(depth):
        x = block(x, base_filters * 2 ** d, f"down{d}")
        skips.append(x)
        x = layers.MaxPooling3D(2, name=f"pool{d}")(x)
    x = block(x, base_filters * 2 ** depth, "bottom")
    if dropout:
        x = layers.SpatialDropout3D(dropout, name="bottom_dropout")(x)
    for d in reversed(range(depth)):
        x = layers.Conv3DTranspose(base_filters * 2 ** d, 2, strides=2, name=f"up{d}")(x)
        x = layers.Concatenate(name=f"skip{d}")([x, skips[d]])
        x = block(x, base_filters * 2 ** d, f"dec{d}")
    outputs = layers.Conv3D(1, 1, activation="sigmoid", dtype="float32", name="hematoma")(x)
    return keras.Model(inputs, outputs, name="ich_unet3d")


def _gaussian_weights(patch: tuple[int, int, int]) -> np.ndarray:
    axes = [np.exp(-0.5 * ((np.arange(p) - (p - 1) / 2) / (p / 4)) ** 2) for p in patch]
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (w / w.max()).astype(np.float32)


def _starts(size: int, patch: int) -> list[int]:
    if size <= patch:
        return [0]
    step = max(1, patch // 2)
    starts = list(range(0, size - patch, step)) + [size - patch]
    return sorted(set(starts))


#: tiles per model call: one call per tile spends most of its time in Keras' eager dispatch
#: (measured: 72 tiles of 48³, 14.4 s per call each vs 4.9 s of TensorFlow kernels)
TILE_BATCH = 8
_compiled: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _infer(model, tile_shape: tuple[int, ...]):
    """The model's forward pass as one compiled TensorFlow function per tile shape, any batch size
    (traced once: the warm-up at start pays for it, not the first study)."""
    per_model = _compiled.setdefault(model, {})
    fn = per_model.get(tile_shape)
    if fn is None:
        import tensorflow as tf

        spec = tf.TensorSpec((None, *tile_shape, 1), tf.float32)
        fn = per_model[tile_shape] = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    return fn


def _run(model, x: np.ndarray) -> np.ndarray:
    return _run_batch(model, [x])[0]


def _run_batch(model, tiles: list[np.ndarray]) -> list[np.ndarray]:
    """Probabilities for equally shaped tiles, ``TILE_BATCH`` per call. Each tile is computed on its
    own (the network normalises per sample), so batching changes speed, not results (float32 noise)."""
    out: list[np.ndarray] = []
    for i in range(0, len(tiles), TILE_BATCH):
        x = np.stack(tiles[i:i + TILE_BATCH])[..., None]
        y = _infer(model, tuple(x.shape[1:-1]))(x)
        y = y.numpy() if hasattr(y, "numpy") else np.asarray(y)
        out.extend(np.array(y[k, ..., 0], dtype=np.float32) for k in range(len(x)))  # writable copies
    return out


def predict_grid(model, image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Probability map for a model-grid image (z, y, x), averaged over the identity and the mirror
    images named in ``config.tta_flips`` (each mirrored back before averaging)."""
    image = np.asarray(image, np.float32)
    prob = _predict_once(model, image, config)
    for axes in config.tta_flips:
        prob += np.flip(_predict_once(model, np.ascontiguousarray(np.flip(image, axes)), config), axes)
    return prob / (1 + len(config.tta_flips))


def _predict_once(model, image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Whole volume if small enough, else tiles with 50 % overlap blended by Gaussian weights."""
    if image.size <= config.max_whole_voxels:
        return _run(model, image)
    patch = tuple(min(p, s) for p, s in zip(config.patch, image.shape))
    weights = _gaussian_weights(patch)
    acc = np.zeros(image.shape, np.float32)
    norm = np.zeros(image.shape, np.float32)
    todo: list[tuple[slice, ...]] = []
    for z in _starts(image.shape[0], patch[0]):
        for y in _starts(image.shape[1], patch[1]):
            for x in _starts(image.shape[2], patch[2]):
                sl = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                norm[sl] += weights
                if image[sl].any():  # tiles all outside the brain are 0 and need no inference
                    todo.append(sl)
    for sl, prob in zip(todo, _run_batch(model, [image[sl] for sl in todo])):
        acc[sl] += prob * weights
    return acc / np.maximum(norm, 1e-6)


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
