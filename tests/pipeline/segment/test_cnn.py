"""Model-1 runtime: a tiny Keras model the test builds, saved as a model directory, run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.brain import extract_brain
from pipeline.models import ModelMetadata
from pipeline.segment import load_segmenter
from pipeline.segment.cnn import WEIGHTS_FILE, CNNSegmenter
from pipeline.segment.network import build_unet, predict_grid
from pipeline.segment.preprocess import (
    PreprocessConfig,
    from_model_grid,
    label_to_model_grid,
    to_model_grid,
    window,
)
from pipeline.volume import Volume

BLOOD_CUT_HU = 50.0


def phantom(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), spacing=(2.5, 2.5, 4.0), seed=0):
    """Ellipsoidal head: 6 mm skull, 35 HU brain, a 65 HU sphere (r 15 mm) off centre; + its truth mask."""
    shape = tuple(int(np.ceil(fov / s)) for fov, s in zip((128, 200, 200), spacing[::-1]))  # z, y, x
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing[::-1])],
                             indexing="ij")
    r = np.sqrt((xx / 70) ** 2 + (yy / 85) ** 2 + (zz / 55) ** 2)
    hu = np.full(shape, -1000.0, np.float32)
    hu[r < 1.0] = 1200.0
    inner = r < 1.0 - 6.0 / 70
    hu[inner] = 35.0 + rng.normal(0, 3, inner.sum())
    blob = np.sqrt((xx - 20) ** 2 + (yy + 10) ** 2 + (zz - 4) ** 2) < 15.0
    hu[blob] = 65.0 + rng.normal(0, 3, blob.sum())
    return Volume(hu.astype(np.float32), spacing, (-100.0, -100.0, -64.0), tuple(float(v) for v in direction)), blob


def oracle_model(cut_hu: float = BLOOD_CUT_HU):
    """A 1×1×1 conv + sigmoid that thresholds windowed HU at ``cut_hu``: a 'trained' model with a known answer."""
    import keras

    cfg = PreprocessConfig()
    inputs = keras.Input((None, None, None, 1))
    layer = keras.layers.Conv3D(1, 1, activation="sigmoid")
    outputs = layer(inputs)
    model = keras.Model(inputs, outputs)
    cut = float(window(np.array([cut_hu]), cfg)[0])
    layer.set_weights([np.full((1, 1, 1, 1, 1), 200.0, np.float32), np.array([-200.0 * cut], np.float32)])
    return model


def save_model_dir(model, path: Path, config: PreprocessConfig | None = None, framework="keras") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save(path / WEIGHTS_FILE)
    (config or PreprocessConfig()).write(path)
    ModelMetadata(kind="segmenter", version="7", name="test-unet", created="2026-01-01T00:00:00+00:00",
                  training_data={"source": "synthetic", "fingerprint": "0" * 64, "cases": 0}, metrics={},
                  code_version="test", extra={"framework": framework}).write(path)
    return path


@pytest.fixture(scope="module")
def oracle_dir(tmp_path_factory):
    return save_model_dir(oracle_model(), tmp_path_factory.mktemp("oracle") / "1")


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1),          # axial LPS
                                       (1, 0, 0, 0, 0.956, -0.292, 0, 0.292, 0.956)])  # oblique
def test_oracle_model_segments_blob_on_original_grid(oracle_dir, direction):
    volume, truth = phantom(direction)
    brain = extract_brain(volume)
    assert brain[truth].mean() > 0.99  # the phantom is a fair test of the runtime
    seg = load_segmenter(oracle_dir)
    assert isinstance(seg, CNNSegmenter) and (seg.name, seg.version) == ("test-unet", "7")
    mask = seg.predict_mask(volume, brain)
    assert mask.dtype == bool and mask.shape == volume.shape
    assert not (mask & ~brain).any()
    assert dice(mask, truth) > 0.9
    vol_ml = mask.sum() * volume.voxel_volume_ml
    assert vol_ml == pytest.approx(4 / 3 * np.pi * 15 ** 3 / 1000, rel=0.15)


def test_refine_in_preprocess_json_redraws_an_undersegmented_edge(tmp_path):
    """A model that cuts too high (62 HU for a 65 HU clot in 35 HU brain) under-segments; with
    ``refine`` the runtime moves the edge to the half-way density and recovers the clot."""
    volume, truth = phantom(spacing=(1.0, 1.0, 2.0))
    brain = extract_brain(volume)
    model = oracle_model(cut_hu=62.0)
    plain = CNNSegmenter.load(save_model_dir(model, tmp_path / "plain"))
    refined = CNNSegmenter.load(save_model_dir(model, tmp_path / "refined", PreprocessConfig(refine=True)))
    d_plain = dice(plain.predict_mask(volume, brain), truth)
    d_refined = dice(refined.predict_mask(volume, brain), truth)
    assert d_refined > 0.9 and d_refined > d_plain + 0.05


def test_tiled_inference_matches_whole_volume(oracle_dir):
    volume, _ = phantom()
    brain = extract_brain(volume)
    seg = CNNSegmenter.load(oracle_dir)
    whole = seg.predict_proba(volume, brain)
    cfg = PreprocessConfig(patch=(32, 32, 32), max_whole_voxels=1000)
    model_input = to_model_grid(volume.to_sitk(), brain, cfg)
    tiled = predict_grid(seg.model, model_input.image, cfg)
    direct = predict_grid(seg.model, model_input.image, PreprocessConfig(max_whole_voxels=10**9))
    assert tiled.shape == direct.shape and np.abs(tiled - direct).max() < 1e-4
    assert whole.max() > 0.99


def test_preprocessing_round_trip_keeps_geometry():
    volume, truth = phantom((1, 0, 0, 0, 0.956, -0.292, 0, 0.292, 0.956), spacing=(1.2, 1.2, 5.0))
    brain = extract_brain(volume)
    cfg = PreprocessConfig(spacing_mm=2.0)
    mi = to_model_grid(volume.to_sitk(), brain, cfg)
    assert all(s % cfg.multiple == 0 for s in mi.image.shape)
    assert mi.image.dtype == np.float32 and 0.0 <= mi.image.min() and mi.image.max() <= 1.0
    assert np.all(mi.image[~mi.brain] == 0.0)
    assert mi.reference.GetSpacing() == pytest.approx((2.0, 2.0, 2.0))
    truth_img = sitk.GetImageFromArray(truth.astype(np.uint8))
    truth_img.CopyInformation(volume.to_sitk())
    label = label_to_model_grid(truth_img, mi)
    # soft label conserves volume (partial voxels) on the model grid
    assert label.sum() * 8e-3 == pytest.approx(truth.sum() * volume.voxel_volume_ml, rel=0.05)
    back = from_model_grid(label, mi, volume.to_sitk()) >= 0.5
    assert dice(back, truth) > 0.9


def test_empty_brain_and_bad_shapes(oracle_dir):
    volume, _ = phantom()
    seg = CNNSegmenter.load(oracle_dir)
    assert not seg.predict_mask(volume, np.zeros(volume.shape, bool)).any()
    with pytest.raises(ValueError, match="brain mask shape"):
        seg.predict_mask(volume, np.ones((2, 2, 2), bool))


def test_load_rejects_incomplete_or_foreign_model_dirs(tmp_path, oracle_dir):
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        CNNSegmenter.load(tmp_path)
    foreign = save_model_dir(oracle_model(), tmp_path / "foreign", framework="sklearn")
    with pytest.raises(ValueError, match="framework"):
        CNNSegmenter.load(foreign)
    (oracle_dir.parent / "nopre").mkdir()
    nopre = oracle_dir.parent / "nopre"
    (nopre / "metadata.json").write_text((oracle_dir / "metadata.json").read_text())
    with pytest.raises(FileNotFoundError, match="preprocess.json"):
        CNNSegmenter.load(nopre)


def test_preprocess_config_validates_and_round_trips(tmp_path):
    cfg = PreprocessConfig(spacing_mm=1.25, window_hu=(-10, 110), patch=(48, 48, 48))
    cfg.write(tmp_path)
    assert PreprocessConfig.read(tmp_path) == cfg
    with pytest.raises(ValueError, match="window_hu"):
        PreprocessConfig(window_hu=(100, 0))
    with pytest.raises(ValueError, match="multiples"):
        PreprocessConfig(patch=(30, 32, 32))
    (tmp_path / "preprocess.json").write_text(json.dumps({"spacing": 2}))
    with pytest.raises(ValueError, match="unknown preprocessing keys"):
        PreprocessConfig.read(tmp_path)


def test_unet_is_small_and_fully_convolutional(tmp_path):
    model = build_unet(base_filters=8, depth=3)
    out = model(np.zeros((1, 16, 24, 32, 1), np.float32))
    assert tuple(out.shape) == (1, 16, 24, 32, 1)
    model.save(tmp_path / WEIGHTS_FILE)
    assert (tmp_path / WEIGHTS_FILE).stat().st_size < 20e6


def test_threads_are_bounded_before_tensorflow_starts():
    code = ("from pipeline.segment.network import configure_threads; import tensorflow as tf; "
            "n = configure_threads(); tf.constant(1.0) + 1; "
            "print(n, tf.config.threading.get_intra_op_parallelism_threads(), "
            "tf.config.threading.get_inter_op_parallelism_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "ICH_TF_THREADS": "1"}, cwd=Path(__file__).parents[3])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["1", "1", "1"]


def test_small_components_are_dropped(tmp_path):
    volume, truth = phantom()
    brain = extract_brain(volume)
    hu = volume.hu.copy()
    speck = np.zeros(volume.shape, bool)
    speck[16, 55:57, 25:27] = True  # 4 voxels × 25 µL = 0.1 mL of "blood" in the brain
    hu[speck] = 70.0
    volume = volume.with_hu(hu)
    keep = CNNSegmenter.load(save_model_dir(oracle_model(), tmp_path / "a")).predict_mask(volume, brain)
    assert keep[speck].any()
    cfg = PreprocessConfig(min_component_ml=0.5)
    drop = CNNSegmenter.load(save_model_dir(oracle_model(), tmp_path / "b", cfg)).predict_mask(volume, brain)
    assert not drop[speck].any() and dice(drop, truth) > 0.9


def test_tta_flips_average_the_mirrored_prediction_mapped_back():
    """A model that looks one voxel to the right: with a left-right flip averaged in, each voxel's
    output must be the mean of the right-neighbour and the left-neighbour answers."""
    import keras

    inputs = keras.Input((None, None, None, 1))
    layer = keras.layers.Conv3D(1, 3, padding="same", use_bias=False)
    model = keras.Model(inputs, layer(inputs))
    kernel = np.zeros((3, 3, 3, 1, 1), np.float32)
    kernel[1, 1, 2, 0, 0] = 1.0  # output(x) = input(x + 1)
    layer.set_weights([kernel])
    image = np.random.default_rng(3).random((8, 8, 16)).astype(np.float32)
    whole = PreprocessConfig(max_whole_voxels=10**9)
    plain = predict_grid(model, image, whole)
    assert np.allclose(plain[..., :-1], image[..., 1:], atol=1e-6)
    both = predict_grid(model, image, PreprocessConfig(max_whole_voxels=10**9, tta_flips=((2,),)))
    assert np.allclose(both[..., 1:-1], (image[..., 2:] + image[..., :-2]) / 2, atol=1e-6)


def test_tta_flips_round_trip_and_reject_bad_axes(tmp_path):
    cfg = PreprocessConfig(tta_flips=((2,), (1, 2)))
    cfg.write(tmp_path)
    assert PreprocessConfig.read(tmp_path) == cfg
    with pytest.raises(ValueError, match="tta_flips"):
        PreprocessConfig(tta_flips=((3,),))
    with pytest.raises(ValueError, match="tta_flips"):
        PreprocessConfig(tta_flips=((2, 2),))


def test_batched_tiles_give_the_shipped_model_its_one_call_per_tile_answer(ct_data, monkeypatch):
    """Issue 15 (speed, same results): the shipped segmenter, tiles batched into compiled calls vs one
    eager ``model(tile)`` per tile as before, on a real head CT and on a head with a clot: same
    probabilities (float32 noise), same mask."""
    from pipeline.analyze import _warm_volume
    from pipeline.models import ModelPaths
    from pipeline.segment import network
    from pipeline.volume import load_series

    seg = CNNSegmenter.load(ModelPaths.bundled().segmenter)
    real = load_series(sorted(p for p in (ct_data / "philips-phantom-5mm").iterdir() if p.name != "DIRFILE")).volume
    volumes = [real, _warm_volume()[0]]
    brains = [extract_brain(v) for v in volumes]
    batched = [seg.predict_proba(v, b) for v, b in zip(volumes, brains)]

    def one_eager_call_per_tile(model, tiles):
        return [np.array(model(t[None, ..., None], training=False)[0, ..., 0], np.float32) for t in tiles]

    monkeypatch.setattr(network, "_run_batch", one_eager_call_per_tile)
    eager = [seg.predict_proba(v, b) for v, b in zip(volumes, brains)]
    assert all(b.sum() > 10000 for b in brains)
    assert (eager[1] >= seg.config.threshold).sum() > 250  # the 3 mL clot (≈ 310 voxels) is found
    for new, old in zip(batched, eager):
        assert np.abs(new - old).max() < 1e-4
        assert np.array_equal(new >= seg.config.threshold, old >= seg.config.threshold)


def test_the_backend_is_read_where_keras_reads_it(tmp_path, monkeypatch):
    """Threads and device are set up for the backend Keras will load: $KERAS_BACKEND, else keras.json."""
    from pipeline.segment import network

    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert network._backend() == "tensorflow"  # no keras.json: Keras' own default
    (tmp_path / "keras.json").write_text('{"backend": "torch", "floatx": "float32"}')
    assert network._backend() == "torch"
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert network._backend() == "jax"
    monkeypatch.delenv("KERAS_BACKEND")
    (tmp_path / "keras.json").write_text("not json")
    assert network._backend() == "tensorflow"
