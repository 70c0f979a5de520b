"""Model 1 trained from a packed bundle (the lent-GPU path): pack → fit → finish gives a model the
runtime loads, the packed volumes equal the prepared ones to 1/255, and the training side imports
without SimpleITK, pydicom or TensorFlow (what that machine lacks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.models import ModelMetadata
from pipeline.segment import load_segmenter
from pipeline.segment.config import PreprocessConfig
from training import segmenter_bundle as B
from training.segmenter import TrainConfig, prepare_training_set

from tiny_cohort import write_cohort

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    cohort = write_cohort(root / "cohort", 4, seed=3)
    config = TrainConfig(val_fraction=0.25, preprocess=PreprocessConfig(spacing_mm=4.0, patch=(16, 16, 16)))
    data = prepare_training_set(cohort, config, say=lambda _m: None, show=False)
    return root, cohort, data, B.pack(data, config.preprocess, root / "b.npz.xz")


def test_a_bundle_holds_the_prepared_volumes_to_within_quantisation(packed):
    _, _, data, path = packed
    back, pre = B.load(path)
    assert pre.spacing_mm == 4.0 and back.training_data == data.training_data
    assert (len(back.train), len(back.val)) == (len(data.train), len(data.val)) == (3, 1)
    for a, b in zip(data.train + data.val, back.train + back.val):
        assert a.image.shape == b.image.shape and b.image.dtype == np.float32
        assert np.abs(a.image - b.image).max() <= 0.5 / 255 + 1e-3  # float16 cache + uint8 rounding
        assert np.abs(a.label - b.label).max() <= 0.5 / 255 + 1e-3
        assert np.array_equal(a.brain, b.brain) and np.array_equal(a.negative, b.negative)
    path.with_name("bad").write_bytes(b"\xfd7zXZ\x00" + b"0" * 20)
    with pytest.raises(Exception):
        B.load(path.with_name("bad"))


def test_fit_and_finish_write_a_model_the_runtime_loads(packed):
    root, cohort, _, path = packed
    fitted = root / "fitted"
    assert B.main(["fit", "--bundle", str(path), "--out", str(fitted), "--epochs", "2", "--steps-per-epoch", "2",
                   "--batch-size", "2", "--base-filters", "4", "--patch", "16", "--sampler-workers", "2",
                   "--hypodense-weight", "3"]) == 0
    record = json.loads((fitted / B.FITTED_FILE).read_text())
    assert len(record["fitted"]["history"]) == 2 and record["train_config"]["sampler_workers"] == 2
    out = root / "models" / "7"
    assert B.main(["finish", "--bundle", str(path), "--fitted", str(fitted), "--out", str(out),
                   "--parent-version", "1"]) == 0
    meta = ModelMetadata.read(out)
    assert (meta.version, meta.parent_version) == ("7", "1")
    assert meta.training_data["cases"] == 4
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_config"]["hypodense_weight"] == 3.0 and metrics["validation"]["cases"] == 1
    pre = PreprocessConfig.read(out)
    assert pre.spacing_mm == 4.0 and pre.patch == (16, 16, 16) and pre.refine and pre.tta_flips == ((2,),)
    assert pre.threshold == record["fitted"]["threshold"]
    from pipeline.brain import extract_brain
    from pipeline.volume import load_series

    vol = load_series(cohort / "cases" / "case3_00" / "baseline").volume
    assert load_segmenter(out).predict_mask(vol, extract_brain(vol)).shape == vol.shape
    with pytest.raises(FileExistsError):
        B.finish(path, fitted, out)
    # a threshold chosen elsewhere (volume agreement) replaces the Dice-tuned one; both are recorded
    chosen = B.finish(path, fitted, root / "models" / "8", threshold=0.3, say=lambda _m: None)
    assert PreprocessConfig.read(chosen.model_dir).threshold == 0.3
    val = json.loads((chosen.model_dir / "metrics.json").read_text())["validation"]
    assert val["threshold"] == 0.3 and val["dice_tuned_threshold"] == record["fitted"]["threshold"]
    assert val["median_dice"] == val["dice_by_threshold"]["0.3"]
    with pytest.raises(ValueError, match="threshold"):
        B.finish(path, fitted, root / "models" / "9", threshold=1.5)
    # a fine-tune of that model with intraventricular blood weighted: both recorded, the card names the parent
    tuned = root / "tuned"
    assert B.main(["fit", "--bundle", str(path), "--out", str(tuned), "--epochs", "1", "--steps-per-epoch", "1",
                   "--batch-size", "2", "--base-filters", "4", "--patch", "16", "--init-from", str(out),
                   "--negative-weight", "4"]) == 0
    child = B.finish(path, tuned, root / "models" / "10", say=lambda _m: None).model_dir
    assert json.loads((child / "metrics.json").read_text())["train_config"]["negative_weight"] == 4.0
    card = (child / "MODEL_CARD.md").read_text()
    assert "on intraventricular blood 4×" in card and "fine-tuned from the weights of version 7" in card


def test_process_sampler_errors_reach_the_trainer():
    from training.segmenter import Prepared, batches

    bad = Prepared("k", np.zeros((8, 8, 8), np.float16), np.zeros((8, 8, 8), np.float16), np.ones((8, 8, 8), bool))
    with pytest.raises(RuntimeError, match="patch sampler failed"):
        next(batches([bad], (8, 8, 8), 1, seed=0, workers=2))


def test_the_training_side_needs_no_simpleitk_pydicom_or_tensorflow():
    code = ("import sys; import training.segmenter_bundle, training.segmenter, pipeline.segment.network; "
            "bad = [m for m in ('SimpleITK', 'pydicom', 'tensorflow') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "KERAS_BACKEND": "numpy"})
    assert r.returncode == 0, r.stdout + r.stderr
