"""The frozen CNN backbones of model 2 (ResNet50, InceptionV3) and where their weights come from.

The node has no internet, so a backbone's weights come from one of three local sources:

- ``ImagenetWeights``: keras' own ImageNet "notop" file that a site copied in (keras' standard file
  name, sha256 checked before use). It is loaded by ``keras.applications.<Net>(weights=path)``,
  exactly what keras does after downloading it.
- ``WarmupWeights``: no ImageNet file. The backbone is built from a fixed seed (keras' initialisers
  are deterministic per seed and version) and only its BatchNorm parameters were warm-up-trained on
  the synthetic cohort (``training/backbone_warmup.py``). The file holds just those parameters
  (~0.4 MB instead of ~94 MB) plus a sha256 of the *complete* restored weights, so a keras/TF
  version whose seeded initialisation differs is detected instead of silently changing features.
- ``PretrainedWeights``: every weight of the backbone, trained on synthetic CT slices with an auxiliary
  task that has no expansion label (``training/backbone_pretrain.py``, issue 16 part 4). A directory of
  ``meta.json`` and ``.npz`` shards (kernels stored as float16, the rest float32); the sha256 of the
  complete restored weights is configured by whoever uses it and checked on load.

``load_backbone`` builds one once per process; ``preprocess`` is keras' own input scaling for it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Backbone:
    name: str              # our key and feature-name prefix
    keras_name: str        # keras.applications attribute
    module: str            # keras.applications submodule with preprocess_input
    input_size: int        # the network's standard input (pixels)
    imagenet_file: str     # keras' standard file name of the ImageNet "notop" weights


BACKBONES: dict[str, Backbone] = {
    b.name: b for b in (
        Backbone("resnet50", "ResNet50", "resnet50", 224, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        Backbone("inception_v3", "InceptionV3", "inception_v3", 299,
                 "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    )
}


class WeightsError(ValueError):
    """A backbone weights file that is missing, corrupt or does not match what was configured."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ImagenetWeights:
    """A site-provided keras ImageNet weights file and the sha256 the site configured for it."""

    path: Path
    sha256: str

    def check(self, backbone: Backbone) -> Path:
        path = Path(self.path)
        if not path.is_file():
            raise WeightsError(f"{backbone.name}: ImageNet weights file not found: {path}")
        if path.name != backbone.imagenet_file:
            raise WeightsError(f"{backbone.name}: expected keras' file name {backbone.imagenet_file!r}, "
                               f"got {path.name!r} (is this the right network's file?)")
        actual = sha256_file(path)
        if actual != self.sha256.lower():
            raise WeightsError(f"{backbone.name}: sha256 mismatch for {path}: configured {self.sha256}, "
                               f"file has {actual}; the file is corrupt or not the one configured")
        return path

    @property
    def key(self) -> str:
        return f"imagenet:{Path(self.path).resolve()}:{self.sha256}"


@dataclass(frozen=True)
class WarmupWeights:
    """Seeded initialisation + warm-up-trained BatchNorm parameters (an ``.npz`` written by ``save_warmup``)."""

    path: Path

    @property
    def key(self) -> str:
        return f"warmup:{Path(self.path).resolve()}"


@dataclass(frozen=True)
class PretrainedWeights:
    """A pretrained backbone directory (``save_pretrained``) and the sha256 of its restored weights."""

    path: Path
    sha256: str

    @property
    def key(self) -> str:
        return f"pretrained:{Path(self.path).resolve()}:{self.sha256}"


Weights = ImagenetWeights | WarmupWeights | PretrainedWeights


# --- weights: seeded backbone, BatchNorm parameter files --------------------------------------------

_TF_LOCK = threading.Lock()
_TF_READY = False


def configure_tf(intra: int = 2, inter: int = 1) -> None:
    """Cap TensorFlow's threads (2 shared cores); a no-op once TF has started executing."""
    global _TF_READY
    with _TF_LOCK:
        if _TF_READY:
            return
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
            tf.config.threading.set_inter_op_parallelism_threads(inter)
        except RuntimeError:
            pass  # already initialised by someone else: keep their settings
        _TF_READY = True


def keras_network(backbone: Backbone, input_size: int | None = None, weights: str | None = None):
    """keras' own network for ``backbone``, headless and average-pooled, as every weight source uses it
    (no TensorFlow call: it also builds on keras' other backends, for pretraining on a GPU machine)."""
    import keras

    size = input_size or backbone.input_size
    return getattr(keras.applications, backbone.keras_name)(
        weights=weights, include_top=False, pooling="avg", input_shape=(size, size, 3))


def build_seeded(backbone: Backbone, seed: int, input_size: int | None = None):
    """The backbone with keras' deterministic initialisation for ``seed`` (no file needed)."""
    import keras

    configure_tf()
    keras.utils.set_random_seed(seed)
    return keras_network(backbone, input_size)


def batchnorm_layers(model) -> list:
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def _checksum_arrays(arrays) -> str:
    h = hashlib.sha256()
    for w in arrays:
        h.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return h.hexdigest()


def weights_checksum(model) -> str:
    """sha256 over every weight array of ``model`` in layer order (float32 bytes)."""
    return _checksum_arrays(model.get_weights())


def save_warmup(model, backbone: Backbone, seed: int, path: Path, info: dict | None = None) -> Path:
    """Store only the BatchNorm parameters of a seeded backbone, with a checksum of all its weights."""
    import keras
    import tensorflow as tf

    arrays = {}
    for k, layer in enumerate(batchnorm_layers(model)):  # by position: keras' auto-names depend on history
        for i, w in enumerate(layer.get_weights()):
            arrays[f"bn{k:03d}/{i}"] = np.asarray(w, dtype=np.float32)
    meta = {"backbone": backbone.name, "seed": seed, "sha256_all_weights": weights_checksum(model),
            "keras": keras.__version__, "tensorflow": tf.__version__, **(info or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, __meta__=np.array(json.dumps(meta)), **arrays)
    return path


def read_warmup_meta(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["__meta__"]))


def _restore_warmup(backbone: Backbone, weights: WarmupWeights, input_size: int | None):
    path = Path(weights.path)
    if not path.is_file():
        raise WeightsError(f"{backbone.name}: warm-up weights file not found: {path}")
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["__meta__"]))
        if meta.get("backbone") != backbone.name:
            raise WeightsError(f"{path} holds weights for {meta.get('backbone')!r}, not {backbone.name!r}")
        model = build_seeded(backbone, int(meta["seed"]), input_size)
        layers = batchnorm_layers(model)
        for k, layer in enumerate(layers):
            n = len(layer.get_weights())
            try:
                layer.set_weights([z[f"bn{k:03d}/{i}"] for i in range(n)])
            except KeyError as exc:
                raise WeightsError(f"{path}: no parameters for BatchNorm layer {k} ({exc})") from exc
    actual = weights_checksum(model)
    if actual != meta["sha256_all_weights"]:
        import keras

        raise WeightsError(
            f"{backbone.name}: restored weights differ from the trained ones (sha256 {actual[:12]}... != "
            f"{meta['sha256_all_weights'][:12]}...). The seeded initialisation drifted: the file was made with "
            f"keras {meta.get('keras')} / TensorFlow {meta.get('tensorflow')}, this is keras {keras.__version__}; "
            "retrain the classifier or install those versions")
    return model


SHARD_BYTES = 15 << 20   # keeps each file movable by tools with a per-file cap (the GPU machine's: 16 MiB)


def save_pretrained(model, backbone: Backbone, out: Path, info: dict | None = None) -> str:
    """Write every weight of ``model`` to ``out/`` (meta.json + weights-NN.npz); returns the sha256 of
    the weights as they will be restored. Kernels (ndim >= 2) are stored as float16, which halves the
    files; the checksum is taken after that rounding, so what is measured is what is loaded."""
    import keras

    arrays = []
    for w in model.get_weights():
        w = np.asarray(w, dtype=np.float32)
        arrays.append(w.astype(np.float16) if w.ndim >= 2 else w)
    restored = [a.astype(np.float32) for a in arrays]
    sha = _checksum_arrays(restored)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("weights-*.npz"):
        old.unlink()
    shards, current, size = [], {}, 0
    for i, a in enumerate(arrays):
        if current and size + a.nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[f"w{i:04d}"] = a
        size += a.nbytes
    shards.append(current)
    files = []
    for k, shard in enumerate(shards):
        name = f"weights-{k:02d}.npz"
        np.savez(out / name, **shard)
        files.append(name)
    meta = {"backbone": backbone.name, "input_size": int(model.input_shape[1]), "n_arrays": len(arrays),
            "shapes": [list(a.shape) for a in arrays], "files": files, "sha256_all_weights": sha,
            "keras": keras.__version__, "keras_backend": keras.backend.backend(), **(info or {})}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return sha


def read_pretrained_meta(path: Path) -> dict:
    meta_file = Path(path) / "meta.json"
    if not meta_file.is_file():
        raise WeightsError(f"pretrained backbone: no meta.json in {path}")
    return json.loads(meta_file.read_text())


def _restore_pretrained(backbone: Backbone, weights: PretrainedWeights, input_size: int | None):
    path = Path(weights.path)
    meta = read_pretrained_meta(path)
    if meta.get("backbone") != backbone.name:
        raise WeightsError(f"{path} holds weights for {meta.get('backbone')!r}, not {backbone.name!r}")
    arrays: dict[str, np.ndarray] = {}
    for name in meta["files"]:
        if not (path / name).is_file():
            raise WeightsError(f"{path}: shard {name} is missing")
        with np.load(path / name, allow_pickle=False) as z:
            arrays.update({k: z[k].astype(np.float32) for k in z.files})
    values = [arrays.get(f"w{i:04d}") for i in range(int(meta["n_arrays"]))]
    if any(v is None for v in values):
        raise WeightsError(f"{path}: shards hold {len(arrays)} of {meta['n_arrays']} weight arrays")
    configure_tf()
    model = keras_network(backbone, input_size)
    expected = [tuple(w.shape) for w in model.weights]
    if expected != [tuple(v.shape) for v in values]:
        raise WeightsError(f"{path}: weight shapes do not match keras' {backbone.keras_name} "
                           f"({len(values)} arrays stored, {len(expected)} expected)")
    model.set_weights(values)
    actual = weights_checksum(model)
    if actual != weights.sha256.lower():
        raise WeightsError(f"{backbone.name}: sha256 mismatch for {path}: configured {weights.sha256}, "
                           f"restored weights have {actual}; the files are corrupt or not the ones configured")
    return model


def _build(backbone: Backbone, weights: Weights, input_size: int | None):
    if isinstance(weights, ImagenetWeights):
        path = weights.check(backbone)
        configure_tf()
        return keras_network(backbone, input_size, weights=str(path))
    if isinstance(weights, WarmupWeights):
        return _restore_warmup(backbone, weights, input_size)
    if isinstance(weights, PretrainedWeights):
        return _restore_pretrained(backbone, weights, input_size)
    raise TypeError(f"weights must be ImagenetWeights, WarmupWeights or PretrainedWeights, not {type(weights).__name__}")


_MODELS: dict[tuple, object] = {}
_MODELS_LOCK = threading.Lock()


def load_backbone(name: str, weights: Weights, input_size: int | None = None):
    """The frozen backbone, built once per process and cached."""
    backbone = get_backbone(name)
    key = (name, weights.key, input_size)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _build(backbone, weights, input_size)
            model.trainable = False
            _MODELS[key] = model
        return model


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}") from None


def preprocess(backbone: Backbone, images: np.ndarray) -> np.ndarray:
    import keras

    module = getattr(keras.applications, backbone.module)
    return module.preprocess_input(np.array(images, dtype=np.float32, copy=True))
