"""Model 1's network and how it runs on a model-grid array: the 3D U-Net, tiled inference, threads.

Apart from ``cnn.py`` (which loads series through SimpleITK) so that training can run where only Keras,
NumPy and SciPy are: a lent GPU machine with PyTorch as the Keras backend (docs/model1.md). TensorFlow
stays the runtime's backend; nothing here imports SimpleITK or pydicom.
"""

from __future__ import annotations

import logging
import os
import weakref

import numpy as np

from pipeline.segment.config import PreprocessConfig

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.keras"     # Keras 3 format: architecture + weights, loads on any backend
THREADS_ENV = "ICH_TF_THREADS"


def configure_threads(threads: int | None = None) -> int:
    """Bound TensorFlow's CPU thread pools (must run before TF's first op; later calls are no-ops).

    ``threads`` defaults to ``$ICH_TF_THREADS`` or the CPUs this process may use. Returns the
    intra-op thread count TensorFlow ends up with (on another Keras backend: ``threads``, untouched).
    """
    if threads is None:
        env = os.environ.get(THREADS_ENV)
        threads = int(env) if env else len(os.sched_getaffinity(0))
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if _backend() != "tensorflow":
        return threads
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # runtime already initialised: keep what it has
        log.debug("TensorFlow already initialised; thread settings unchanged")
    return tf.config.threading.get_intra_op_parallelism_threads() or threads


def device() -> str:
    """'GPU' when the Keras backend sees one (it then places the model there), else 'CPU'."""
    if _backend() == "torch":
        import torch

        return "GPU" if torch.cuda.is_available() else "CPU"
    import tensorflow as tf

    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


def _backend() -> str:
    """The Keras backend this process will use, read without importing Keras, where Keras reads it:
    ``$KERAS_BACKEND``, else ``keras.json`` in ``$KERAS_HOME`` (default ``~/.keras``), else TensorFlow."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    import json

    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as fh:
            return str(json.load(fh).get("backend") or "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


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
    (traced once: the warm-up at start pays for it, not the first study); on another Keras backend
    (a lent GPU with PyTorch only) Keras' own ``predict_on_batch``."""
    per_model = _compiled.setdefault(model, {})
    fn = per_model.get(tile_shape)
    if fn is None and _backend() != "tensorflow":
        fn = per_model[tile_shape] = model.predict_on_batch
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
