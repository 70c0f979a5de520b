"""Backbone pretraining on synthetic slices (issue 16 part 4): targets, the network's input, a tiny run."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.features import backbones, cnn
from training import backbone_pretrain as P


def test_case_slices_targets_follow_the_mask_and_hold_no_expansion_label():
    from training.synth import case_seed, generate_case

    out = P.case_slices(3, seed=11, per_case=6, sizes=(64, 75))
    y = out["y"]
    assert out["s64"].shape == (len(y), 64, 64) and out["s75"].shape == (len(y), 75, 75)
    assert out["s64"].dtype == np.uint8 and 0 < len(y) <= 6 and y.shape[1] == len(P.TARGETS)
    assert not {"expansion", "label", "growth"} & set(P.TARGETS) and not any("marker" in t for t in P.TARGETS)
    has = y[:, 0] > 0.5
    assert has.any() and (~has).any()                  # blood and no blood
    assert np.all(y[~has, 3:] == 0) and np.all((y[has, 1] > 0) & (y[has, 1] < 1))
    # the same case the generator draws: the biggest section's area is the mask's
    s = generate_case(case_seed(11, 3), P.case_options(3)).baseline
    labels = s.mask_on_hu_grid()
    top = (labels == 1).reshape(len(labels), -1).sum(1).max() * s.acq.pixel_mm ** 2
    assert np.expm1(y[:, 1].max() * P.AREA_NORM) <= top + 1e-3


@pytest.mark.parametrize("name,size", [("resnet50", 32), ("inception_v3", 75)])
def test_training_input_is_what_the_feature_extractor_feeds(name, size):
    import keras

    model, base = P.build_model(name, size)
    pre = keras.Model(model.input, model.get_layer("preprocess").output)
    gray = np.random.default_rng(0).uniform(0, 255, (2, size, size, 1)).astype(np.float32)
    want = backbones.preprocess(backbones.get_backbone(name), np.repeat(gray, 3, axis=-1))
    assert np.allclose(np.asarray(pre(gray, training=False)), want, atol=1e-4)
    assert base.output_shape[-1] == 2048


def test_tiny_pretraining_saves_a_backbone_the_feature_extractor_loads(tmp_path):
    rng = np.random.default_rng(1)
    n = 12
    y = np.zeros((n, len(P.TARGETS)), np.float32)
    y[::2, 0], y[::2, 1] = 1.0, 0.5
    data = {"s32": rng.integers(0, 255, (n, 32, 32), dtype=np.uint8), "y": y, "case": np.repeat(np.arange(6), 2)}
    cfg = P.PretrainConfig(cases=6, epochs=1, batch=4, val_fraction=0.34, workers=1)
    meta = P.pretrain("resnet50", data, cfg, tmp_path / "resnet50")
    info = meta["pretrain"]
    assert info["train_slices"] == 8 and info["val_slices"] == 4 and info["epochs_run"] == 1
    assert "no expansion label" in info["task"] and np.isfinite(info["loss"][0])
    ext = cnn.CnnFeatureExtractor("resnet50", backbones.PretrainedWeights(tmp_path / "resnet50", meta["sha256_all_weights"]), 32)
    emb = ext.embed(np.repeat(data["s32"][:2, ..., None].astype(np.float32), 3, axis=-1))
    assert emb.shape == (2, 2048) and np.isfinite(emb).all()


def test_config_is_validated():
    with pytest.raises(ValueError, match="val_fraction"):
        P.PretrainConfig(val_fraction=0.6)
    with pytest.raises(ValueError, match="cases >= 4"):
        P.PretrainConfig(cases=2)


def test_marker_targets_are_the_case_signs_on_clot_slices_only():
    from keras import ops

    from training.synth import MARKERS, case_seed, generate_case

    out = P.case_slices(3, seed=11, per_case=6, sizes=(64,), markers=True)
    y = out["y"]
    assert y.shape[1] == len(P.PretrainConfig(markers=True).targets) == len(P.TARGETS) + len(MARKERS)
    signs = generate_case(case_seed(11, 3), P.case_options(3)).markers
    has = y[:, 0] > 0.5
    assert np.all(y[has, len(P.TARGETS):] == [float(signs[m]) for m in MARKERS])
    assert np.all(y[~has, len(P.TARGETS):] == 0)
    # the marker columns enter the loss (logistic, clot slices only)
    base = np.asarray(P.aux_loss(ops.convert_to_tensor(y[:, :len(P.TARGETS)]), ops.zeros((len(y), len(P.TARGETS)))))
    full = np.asarray(P.aux_loss(ops.convert_to_tensor(y), ops.zeros(y.shape)))
    assert np.allclose(full[~has], base[~has]) and np.allclose(full[has] - base[has], len(MARKERS) * np.log(2.0), atol=1e-5)
