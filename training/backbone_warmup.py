"""Warm-up training of a seeded CNN backbone when no ImageNet weights are available.

Only BatchNorm parameters move (a few hundred kB, see ``pipeline.features.backbones``); convolutions keep
their seeded initialisation. Three stages, all on *training* cases only:

1. BatchNorm statistics: exact running average of batch statistics over the key slices, so the
   random deep network's activations are normalised (inference mode would otherwise explode).
2. ``steps`` gradient steps on BatchNorm gamma/beta with a throw-away logistic head predicting the
   case's expansion label (class-balanced). ``steps=0`` skips it.
3. Statistics again, because stage 2 shifted every later layer's input distribution.

The backbone is then frozen and stored with ``save_warmup``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from pipeline.features import backbones

log = logging.getLogger(__name__)


def _bn_statistics(model, images: np.ndarray, batch: int, backbone: backbones.Backbone) -> None:
    layers = backbones.batchnorm_layers(model)
    saved = [layer.momentum for layer in layers]
    order = np.arange(len(images))
    try:
        for i, start in enumerate(range(0, len(images), batch)):
            for layer in layers:  # momentum i/(i+1): moving value = mean over the batches seen so far
                layer.momentum = i / (i + 1.0)
            x = backbones.preprocess(backbone, images[order[start:start + batch]])
            model(x, training=True)
    finally:
        for layer, m in zip(layers, saved):
            layer.momentum = m


def _bn_affine(model, images: np.ndarray, labels: np.ndarray, steps: int, batch: int, seed: int,
               backbone: backbones.Backbone, lr: float = 1e-3) -> list[float]:
    import keras
    import tensorflow as tf

    layers = backbones.batchnorm_layers(model)
    params = [w for layer in layers for w in (layer.gamma, layer.beta) if w is not None]
    head = keras.layers.Dense(1)
    head.build((None, int(model.output_shape[-1])))
    opt = keras.optimizers.Adam(lr)
    rng = np.random.default_rng(seed)
    pos = max(float(labels.mean()), 1e-3)
    weight_pos, weight_neg = 0.5 / pos, 0.5 / max(1.0 - pos, 1e-3)
    losses = []
    for _ in range(steps):
        idx = rng.choice(len(images), size=min(batch, len(images)), replace=False)
        x = tf.constant(backbones.preprocess(backbone, images[idx]))
        y = tf.constant(labels[idx, None].astype("float32"))
        w = tf.where(y > 0.5, weight_pos, weight_neg)
        with tf.GradientTape() as tape:
            feats = model(x, training=True)
            logits = head(feats)
            loss = tf.reduce_mean(w * tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits))
        variables = params + head.trainable_variables
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables))
        losses.append(float(loss))
    return losses


def warm_up(name: str, images: np.ndarray, labels: np.ndarray, out: Path, *, seed: int = 20240101,
            steps: int = 0, batch: int = 16, input_size: int | None = None, max_images: int | None = 192) -> Path:
    """Warm-up-train ``name`` on windowed key slices ``images`` (n, s, s, 3; 0..255) and save it to ``out``.

    ``max_images``: BatchNorm statistics use a seeded random subset of this size (CPU budget).
    """
    backbone = backbones.get_backbone(name)
    t0 = time.time()
    model = backbones.build_seeded(backbone, seed, input_size)
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if max_images and len(images) > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(images), max_images, replace=False))
        images, labels = images[keep], labels[keep]
    _bn_statistics(model, images, batch, backbone)
    losses = _bn_affine(model, images, labels, steps, batch, seed, backbone) if steps else []
    if steps:
        _bn_statistics(model, images, batch, backbone)
    info = {"warmup": {"images": int(len(images)), "positives": int(labels.sum()), "steps": int(steps),
                       "batch": int(batch), "loss_first": losses[0] if losses else None,
                       "loss_last": losses[-1] if losses else None, "seconds": round(time.time() - t0, 1),
                       "target": "expansion label of the training cases (class-balanced)"}}
    log.info("warm-up %s: %s", name, info["warmup"])
    return backbones.save_warmup(model, backbone, seed, out, info)
