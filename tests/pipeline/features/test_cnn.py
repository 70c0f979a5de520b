"""Model 2 CNN features: key slices, windowing, ImageNet-file loading, seeded warm-up weights."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pipeline.features import backbones, cnn

SIZE = 32  # ResNet50's smallest input: the real architecture, tiny images


def test_key_slices_largest_area_and_clamped():
    mask = np.zeros((10, 8, 8), np.uint8)
    mask[1, 2:4, 2:4] = 1
    mask[2, 1:7, 1:7] = 1          # largest
    mask[3, 3:5, 3:5] = 1
    assert cnn.key_slices(mask) == [0, 2, 5]  # 2-3 clamped to 0
    mask[:] = 0
    mask[8, :, :] = 1
    assert cnn.key_slices(mask) == [5, 8, 9]
    with pytest.raises(ValueError, match="empty"):
        cnn.key_slices(np.zeros((4, 4, 4)))


def test_brain_window_and_slice_images():
    w = cnn.window(np.array([-100.0, 0.0, 40.0, 80.0, 1000.0]))
    np.testing.assert_allclose(w, [0, 0, 127.5, 255, 255])
    hu = np.full((12, 40, 40), 30.0, np.float32)
    mask = np.zeros(hu.shape, np.uint8)
    mask[6, 10:20, 10:20] = 1
    imgs = cnn.slice_images(hu, mask, SIZE)
    assert imgs.shape == (3, SIZE, SIZE, 3)
    np.testing.assert_allclose(imgs, 255 * 30 / 80, rtol=1e-5)


def _keras_h5(model, path):
    """Write weights in the legacy keras HDF5 layout of keras' published ImageNet files."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


@pytest.fixture(scope="module")
def seeded():
    return backbones.build_seeded(backbones.get_backbone("resnet50"), seed=11, input_size=SIZE)


def test_imagenet_file_is_loaded_through_keras_after_sha256_check(seeded, tmp_path):
    bb = backbones.get_backbone("resnet50")
    path = _keras_h5(seeded, tmp_path / bb.imagenet_file)   # keras' standard file name
    ext = cnn.CnnFeatureExtractor("resnet50", backbones.ImagenetWeights(path, backbones.sha256_file(path)), SIZE)
    assert backbones.weights_checksum(ext.model) == backbones.weights_checksum(seeded)
    assert ext.dim == 2048 and len(ext.feature_names) == 3 * 2048
    hu = np.random.default_rng(0).normal(40, 20, (9, 48, 48)).astype(np.float32)
    mask = np.zeros(hu.shape, np.uint8)
    mask[4, 10:30, 10:30] = 1
    feats = ext.features(hu, mask)
    assert len(feats) == 6144 and np.isfinite(list(feats.values())).all()
    # loaded once per process: the same object comes back
    assert backbones.load_backbone("resnet50", backbones.ImagenetWeights(path, backbones.sha256_file(path)), SIZE) is ext.model

    with pytest.raises(backbones.WeightsError, match="sha256 mismatch"):
        cnn.CnnFeatureExtractor("resnet50", backbones.ImagenetWeights(path, "0" * 64), SIZE)
    wrong = tmp_path / "weights.h5"
    path.rename(wrong)
    with pytest.raises(backbones.WeightsError, match="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        cnn.CnnFeatureExtractor("resnet50", backbones.ImagenetWeights(wrong, backbones.sha256_file(wrong)), SIZE)
    with pytest.raises(backbones.WeightsError, match="not found"):
        cnn.CnnFeatureExtractor("resnet50", backbones.ImagenetWeights(tmp_path / bb.imagenet_file, "0" * 64), SIZE)


def test_warmup_round_trip_is_small_and_drift_is_detected(tmp_path):
    from training.backbone_warmup import warm_up

    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (12, SIZE, SIZE, 3)).astype(np.float32)
    labels = np.array([0, 1] * 6)
    path = warm_up("resnet50", images, labels, tmp_path / "resnet50-warmup.npz", seed=5, steps=1, batch=6,
                   input_size=SIZE)
    assert path.stat().st_size < 1_000_000          # vs ~94 MB for the full backbone
    meta = backbones.read_warmup_meta(path)
    assert meta["warmup"]["steps"] == 1 and meta["seed"] == 5
    ext = cnn.CnnFeatureExtractor("resnet50", backbones.WarmupWeights(path), SIZE)
    assert backbones.weights_checksum(ext.model) == meta["sha256_all_weights"]
    emb = ext.embed(images[:3])
    assert emb.shape == (3, 2048) and np.isfinite(emb).all() and emb.std() > 0

    # a different seeded initialisation (what a keras upgrade could cause) must not pass silently
    with np.load(path) as z:
        arrays = dict(z)
    drifted = dict(arrays, __meta__=np.array(str(arrays["__meta__"]).replace('"seed": 5', '"seed": 6')))
    bad = tmp_path / "drifted.npz"
    np.savez(bad, **drifted)
    with pytest.raises(backbones.WeightsError, match="drifted"):
        cnn.CnnFeatureExtractor("resnet50", backbones.WarmupWeights(bad), SIZE)


def test_inception_v3_seeded_features():
    ext = cnn.CnnFeatureExtractor.__new__(cnn.CnnFeatureExtractor)
    model = backbones.build_seeded(backbones.get_backbone("inception_v3"), seed=2, input_size=75)
    ext.backbone, ext.model, ext.input_size, ext.dim = backbones.get_backbone("inception_v3"), model, 75, 2048
    out = ext.embed(np.full((3, 75, 75, 3), 128.0, np.float32))
    assert out.shape == (3, 2048) and np.isfinite(out).all()


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone"):
        backbones.get_backbone("vgg16")


def _disc_series(n: int, pixel_mm: float, slices: int = 7):
    """A 40 mm-radius hyperdense disc in air on an n×n matrix of ``pixel_mm`` pixels; mask on the middle slice."""
    yy, xx = (np.indices((n, n)) - (n - 1) / 2) * pixel_mm
    one = np.where(xx ** 2 + yy ** 2 < 40.0 ** 2, 60.0, -1000.0).astype(np.float32)
    hu = np.repeat(one[None], slices, axis=0)
    mask = np.zeros(hu.shape, np.uint8)
    mask[slices // 2, n // 2, n // 2] = 1
    return hu, mask


def test_slice_geometry_cuts_the_same_anatomy_at_any_matrix_and_slice_thickness():
    geo = cnn.SliceGeometry(fov_mm=200.0, offset_mm=15.0)
    mask = np.zeros((30, 4, 4), np.uint8)
    mask[14] = 1
    assert cnn.key_slices(mask) == [11, 14, 17]                  # v1: ±3 slices, whatever their thickness
    assert cnn.key_slices(mask, 5.0, geo) == [11, 14, 17]        # ±15 mm = the seed's ±3 at 5 mm
    assert cnn.key_slices(mask, 2.5, geo) == [8, 14, 20]
    assert cnn.key_slices(mask, 1.0, geo) == [0, 14, 29]         # clamped
    # 230 mm field of view at 1.8 mm pixels vs 128 mm at 0.5 mm: v1 shows the disc at two sizes
    coarse = _disc_series(128, 1.8), (1.8, 1.8, 5.0)
    fine = _disc_series(256, 0.5), (0.5, 0.5, 5.0)
    v1 = [cnn.slice_images(*s, SIZE) for s, _ in (coarse, fine)]
    v2 = [cnn.slice_images(*s, SIZE, sp, geo) for s, sp in (coarse, fine)]
    assert np.abs(v1[0] - v1[1]).mean() > 40                     # window units 0..255
    assert np.abs(v2[0] - v2[1]).mean() < 6
    with pytest.raises(ValueError, match="spacing"):
        cnn.slice_images(*fine[0], SIZE, None, geo)
    with pytest.raises(ValueError, match="fov_mm"):
        cnn.SliceGeometry(fov_mm=10.0)
    assert cnn.SliceGeometry.from_spec(geo.spec()) == geo and cnn.SliceGeometry.from_spec(None) is None


def test_pretrained_round_trip_rounds_kernels_once_and_checks_the_sha256(seeded, tmp_path):
    """A whole pretrained backbone (issue 16 part 4): shards under the per-file cap, kernels as float16,
    the checksum taken after rounding, so what is loaded is exactly what was measured."""
    bb = backbones.get_backbone("resnet50")
    sha = backbones.save_pretrained(seeded, bb, tmp_path / "resnet50", {"pretrain": {"task": "test"}})
    files = sorted((tmp_path / "resnet50").glob("weights-*.npz"))
    assert len(files) >= 4 and all(f.stat().st_size <= backbones.SHARD_BYTES + 65536 for f in files)
    meta = backbones.read_pretrained_meta(tmp_path / "resnet50")
    assert meta["backbone"] == "resnet50" and meta["input_size"] == SIZE and meta["sha256_all_weights"] == sha
    ext = cnn.CnnFeatureExtractor("resnet50", backbones.PretrainedWeights(tmp_path / "resnet50", sha), SIZE)
    assert backbones.weights_checksum(ext.model) == sha != backbones.weights_checksum(seeded)   # float16 kernels
    x = np.random.default_rng(3).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    ref = np.asarray(seeded(backbones.preprocess(bb, x), training=False))
    assert np.allclose(ext.embed(x), ref, rtol=0.02, atol=0.02 * np.abs(ref).max())

    with pytest.raises(backbones.WeightsError, match="sha256 mismatch"):
        backbones.load_backbone("resnet50", backbones.PretrainedWeights(tmp_path / "resnet50", "0" * 64), SIZE)
    with pytest.raises(backbones.WeightsError, match="not 'inception_v3'"):
        backbones.load_backbone("inception_v3", backbones.PretrainedWeights(tmp_path / "resnet50", sha), 75)
    files[-1].unlink()
    with pytest.raises(backbones.WeightsError, match="shard weights-0.\\.npz is missing"):
        backbones.load_backbone("resnet50", backbones.PretrainedWeights(tmp_path / "resnet50", sha[::-1]), SIZE)
    with pytest.raises(backbones.WeightsError, match="no meta.json"):
        backbones.load_backbone("resnet50", backbones.PretrainedWeights(tmp_path, sha), SIZE)
