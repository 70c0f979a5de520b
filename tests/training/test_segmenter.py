"""Model-1 training and evaluation on a tiny DICOM cohort: real loading, brain extraction, Keras training."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.models import ModelMetadata
from pipeline.segment import load_segmenter
from pipeline.segment.cnn import CNNSegmenter
from pipeline.segment.preprocess import PreprocessConfig
from training.segmenter import (
    Prepared,
    TrainConfig,
    prepare_volume,
    read_cohort,
    hypodense_hematoma,
    sample_patch,
    split_cases,
    train_segmenter,
)

from tiny_cohort import write_cohort


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    cohort = write_cohort(root / "cohort", 4, seed=1)
    pre = PreprocessConfig(spacing_mm=4.0, patch=(16, 16, 16))
    cfg = TrainConfig(epochs=2, steps_per_epoch=3, batch_size=2, base_filters=4, depth=2, val_fraction=0.25,
                      threads=2, workers=2, preprocess=pre)
    lines: list[str] = []
    result = train_segmenter(cohort, root / "models" / "3", cfg, parent_version="2", progress=lines.append)
    return cohort, result, lines


def test_training_writes_a_loadable_versioned_model_dir(trained):
    cohort, result, lines = trained
    d = result.model_dir
    for name in ("model.keras", "preprocess.json", "metadata.json", "metrics.json", "MODEL_CARD.md"):
        assert (d / name).is_file(), name
    meta = ModelMetadata.read(d)
    assert (meta.kind, meta.version, meta.parent_version) == ("segmenter", "3", "2")
    assert meta.extra["framework"] == "keras"
    assert meta.training_data["source"] == "synthetic" and meta.training_data["cases"] == 4
    assert meta.training_data["fingerprint"] == read_cohort(cohort).fingerprint()
    assert len(meta.training_data["fingerprint"]) == 64 and meta.code_version
    metrics = json.loads((d / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and metrics["validation"]["cases"] == 1
    assert 0.0 <= metrics["validation"]["median_dice"] <= 1.0
    assert "synthetic" in (d / "MODEL_CARD.md").read_text().lower()
    assert "no clinical accuracy" in (d / "MODEL_CARD.md").read_text().lower()
    assert PreprocessConfig.read(d).spacing_mm == 4.0
    # the threshold is tuned on validation and shipped with the model
    assert metrics["validation"]["threshold"] == PreprocessConfig.read(d).threshold
    assert set(metrics["validation"]["dice_by_threshold"]) >= {"0.3", "0.5", "0.9"}
    assert any("epoch 2/2" in line for line in lines)  # progress output
    # the pipeline's runtime loads it and produces a mask on the original grid
    seg = load_segmenter(d)
    assert isinstance(seg, CNNSegmenter)
    from pipeline.brain import extract_brain
    from pipeline.volume import load_series

    vol = load_series(cohort / "cases" / "case1_00" / "baseline").volume
    mask = seg.predict_mask(vol, extract_brain(vol))
    assert mask.shape == vol.shape and mask.dtype == bool
    # prepared arrays are cached for the next run, and come back as float32 (scipy/TF need it)
    assert len(list((cohort / ".cache" / "segmenter").glob("*.npz"))) == 4
    item = read_cohort(cohort).volumes[0]
    again = prepare_volume(item, PreprocessConfig(spacing_mm=4.0, patch=(16, 16, 16)), cohort / ".cache" / "segmenter")
    assert again.image.dtype == again.label.dtype == np.float32 and again.brain.dtype == bool
    sample_patch(again, (16, 16, 16), np.random.default_rng(0))


def test_refuses_to_overwrite_a_model(trained):
    cohort, result, _ = trained
    with pytest.raises(FileExistsError):
        train_segmenter(cohort, result.model_dir, TrainConfig(epochs=1, steps_per_epoch=1), progress=None)


def test_augmented_patches_keep_label_aligned_with_image():
    rng = np.random.default_rng(0)
    image = np.zeros((40, 40, 40), np.float32)
    image[15:25, 12:28, 10:22] = 0.55
    label = (image > 0).astype(np.float32)
    item = Prepared("k", image, label, np.ones(image.shape, bool))
    for _ in range(10):
        x, y, w = sample_patch(item, (24, 24, 24), rng, lesion_prob=1.0)
        assert x.shape == y.shape == w.shape == (24, 24, 24) and (w == 1).all()
        assert y.sum() > 0
        # bright voxels and label coincide after rotation/scaling/flip (intensity jitter aside)
        assert np.corrcoef((x > 0.3).ravel(), (y > 0.5).ravel())[0, 1] > 0.9


def test_hard_negative_patches_are_centred_on_intraventricular_blood():
    """Patches drawn with negative_prob=1 show the non-target blood, with an all-zero label."""
    rng = np.random.default_rng(1)
    image = np.full((64, 64, 64), 0.3, np.float32)
    label = np.zeros(image.shape, np.float32)
    label[5:12, 5:12, 5:12] = 1.0                      # hematoma in one corner
    negative = np.zeros(image.shape, bool)
    negative[48:56, 48:56, 48:56] = True               # intraventricular blood in the opposite one
    image[label > 0] = image[negative] = 0.55
    item = Prepared("k", image, label, np.ones(image.shape, bool), negative)
    for _ in range(8):
        x, y, _ = sample_patch(item, (24, 24, 24), rng, lesion_prob=0.0, negative_prob=1.0, augment=False)
        assert (x > 0.5).sum() > 100 and y.sum() == 0
    # without the negative mask (old caches) the same call falls back to brain-centred patches
    plain = Prepared("k", image, label, np.ones(image.shape, bool))
    sample_patch(plain, (24, 24, 24), rng, lesion_prob=0.0, negative_prob=1.0)


def test_hypodense_share_centres_hematoma_patches_on_the_hypodense_part():
    """A clot filling the volume with a small hypodense pocket in one corner: with hypodense_share=1
    every lesion patch contains the pocket; with 0, most do not."""
    rng = np.random.default_rng(2)
    image = np.full((80, 80, 80), 0.55, np.float32)         # clot ≈ 66 HU everywhere
    label = np.ones(image.shape, np.float32)
    image[12:16, 12:16, 12:16] = 0.38                        # pocket ≈ 46 HU: hypodense, still hematoma
    item = Prepared("k", image, label, np.ones(image.shape, bool))
    assert hypodense_hematoma(item).sum() == 64
    def pocket_seen(share):
        x, _, _ = sample_patch(item, (16, 16, 16), rng, lesion_prob=1.0, hypodense_share=share, augment=False)
        return bool(((x > 0.35) & (x < 0.45)).any())
    assert all(pocket_seen(1.0) for _ in range(10))
    assert sum(pocket_seen(0.0) for _ in range(20)) < 5


def test_hypodense_weight_marks_the_hypodense_blood_and_nothing_else():
    """The loss weight is hypodense_weight on the hypodense pocket (moved with the augmentation), 1 on the
    rest of the clot and on brain; the default weight leaves the random stream of older models alone."""
    image = np.full((48, 48, 48), 0.25, np.float32)          # brain ≈ 30 HU
    label = np.zeros(image.shape, np.float32)
    label[10:38, 10:38, 10:38] = 1.0
    image[label > 0] = 0.55                                  # clot ≈ 66 HU
    image[10:20, 10:38, 10:38] = 0.33                        # its hypodense part (≈ 40 HU), reaching the margin
    item = Prepared("k", image, label, np.ones(image.shape, bool))
    rng = np.random.default_rng(4)
    for _ in range(6):
        x, y, w = sample_patch(item, (24, 24, 24), rng, lesion_prob=1.0, hypodense_weight=5.0)
        assert w.min() >= 1.0 and w.max() <= 5.0
        hypo = (y > 0.99) & (np.abs(x - 0.33) < 0.03)  # clearly inside the pocket (jitter ±5 %)
        dense = (y > 0.99) & (x > 0.5)
        if hypo.any():
            assert np.median(w[hypo]) > 4.5
        assert np.median(w[dense]) == 1.0 and np.median(w[y < 0.01]) == 1.0
    a = [sample_patch(item, (24, 24, 24), np.random.default_rng(7))[0] for _ in range(2)]
    b = [sample_patch(item, (24, 24, 24), np.random.default_rng(7), hypodense_weight=3.0)[0] for _ in range(2)]
    assert all(np.array_equal(p, q) for p, q in zip(a, b))


def test_negative_weight_marks_the_intraventricular_blood_and_nothing_else():
    """The loss weight is negative_weight on intraventricular blood (a false call there costs more), 1 on
    the clot and on brain; it changes no patch, only what a mistake costs."""
    image = np.full((48, 48, 48), 0.25, np.float32)
    label = np.zeros(image.shape, np.float32)
    label[8:30, 8:40, 8:40] = 1.0
    negative = np.zeros(image.shape, bool)
    negative[30:42, 8:40, 8:40] = True                        # ventricular blood right against the clot
    image[label > 0] = image[negative] = 0.55
    item = Prepared("k", image, label, np.ones(image.shape, bool), negative)
    rng = np.random.default_rng(5)
    for _ in range(6):
        x, y, w = sample_patch(item, (24, 24, 24), rng, lesion_prob=0.5, negative_prob=0.5, negative_weight=8.0)
        assert w.min() >= 1.0 and w.max() <= 8.0
        blood = (y < 0.01) & (x > 0.5)                         # dense, not hematoma: the ventricular blood
        if blood.sum() > 50:
            assert np.median(w[blood]) > 7.5
        assert np.median(w[y > 0.99]) == 1.0
    a = [sample_patch(item, (24, 24, 24), np.random.default_rng(7))[0] for _ in range(2)]
    b = [sample_patch(item, (24, 24, 24), np.random.default_rng(7), negative_weight=3.0)[0] for _ in range(2)]
    assert all(np.array_equal(p, q) for p, q in zip(a, b))


def test_weighted_loss_charges_misses_on_heavier_voxels_more():
    from training.segmenter import dice_bce_loss

    y = np.ones((1, 4, 4, 4, 1), np.float32)
    p = np.full(y.shape, 0.9, np.float32)
    p[0, 0] = 0.1                                             # a confident miss on one slab
    w = np.ones(y.shape, np.float32)
    plain = float(dice_bce_loss(y, p))
    assert float(dice_bce_loss(y, p, w)) == pytest.approx(plain, rel=1e-6)
    w[0, 0] = 5.0
    assert float(dice_bce_loss(y, p, w)) > plain + 0.5
    w[0, 0], w[0, 1] = 1.0, 5.0                               # the weight on voxels it got right costs little
    assert float(dice_bce_loss(y, p, w)) < plain + 0.2


def test_split_is_case_level_and_deterministic():
    ids = [f"c{i}" for i in range(20)]
    tr, va = split_cases(ids, 0.2, seed=3)
    assert (tr, va) == split_cases(ids, 0.2, seed=3)
    assert len(va) == 4 and not set(tr) & set(va) and sorted(tr + va) == sorted(ids)


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.csv"):
        read_cohort(tmp_path)


def test_evaluate_cli_writes_metrics_and_bland_altman(trained, tmp_path, ct_data):
    from dicomnode.cli import app

    cohort, result, _ = trained
    test_cohort = write_cohort(tmp_path / "test", 2, seed=9)
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["evaluate", "segmenter", "--cohort", str(test_cohort), "--model",
                                   str(result.model_dir), "--out", str(out), "--normal-head",
                                   str(ct_data / "ge-human-head-tilted")])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["cases"] == 2 and set(m["models"]) == {"cnn", "classical"}
    assert m["models"]["classical"]["dice"]["median"] > 0.5  # the baseline finds these obvious blobs
    lo, hi = m["models"]["classical"]["dice"]["median_ci95"]
    assert lo <= m["models"]["classical"]["dice"]["median"] <= hi
    assert m["normal_head"]["false_positive_ml"]["cnn"] >= 0.0
    assert set(m["bars"]) == {"median_dice_ge_0.90", "false_positive_le_0.5_ml"}
    png = (out / "bland_altman.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert len((out / "cases.csv").read_text().splitlines()) == 3
    assert "median Dice" in res.output


def test_median_ci_is_wide_for_few_spread_cases_and_narrow_for_many_alike():
    from training.stats import median_ci95

    rng = np.random.default_rng(0)
    few = median_ci95(rng.uniform(0.6, 1.0, 16))
    many = median_ci95(0.9 + rng.normal(0, 0.01, 400))
    assert few[1] - few[0] > 0.05 and many[1] - many[0] < 0.01 and many[0] < 0.9 < many[1]


def test_sampler_errors_reach_the_trainer():
    from training.segmenter import batches

    bad = Prepared("k", np.zeros((8, 8, 8), np.float16), np.zeros((8, 8, 8), np.float16), np.ones((8, 8, 8), bool))
    stream = batches([bad], (8, 8, 8), 1, seed=0)
    with pytest.raises(RuntimeError, match="patch sampler failed"):
        next(stream)


def test_fine_tuning_starts_from_a_parent_model(trained):
    cohort, result, lines = trained
    pre = PreprocessConfig(spacing_mm=4.0, patch=(16, 16, 16))
    cfg = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=1, val_fraction=0.25, threads=2, preprocess=pre,
                      init_from=result.model_dir)
    out: list[str] = []
    child = train_segmenter(cohort, result.model_dir.parent / "4", cfg, parent_version="3", progress=out.append)
    assert ModelMetadata.read(child.model_dir).parent_version == "3"
    assert any("starting from the weights" in line for line in out)


def test_extra_cohorts_only_train_and_are_recorded(trained, tmp_path):
    """`--extra-cohort` adds training cases (same case ids as the first cohort's: kept apart), validation
    stays the first cohort's split, and the metadata names both cohorts."""
    from dicomnode.cli import app

    cohort, result, _ = trained
    extra = write_cohort(tmp_path / "extra", 2, seed=1)  # case1_00, case1_01: the ids of the first cohort
    out = result.model_dir.parent / "5"
    res = CliRunner().invoke(app, ["train", "segmenter", "--cohort", str(cohort), "--extra-cohort", str(extra),
                                   "--out", str(out), "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "1",
                                   "--spacing", "4", "--patch", "16", "--base-filters", "4", "--val-fraction", "0.25",
                                   "--hypodense-weight", "4", "--negative-weight", "6", "--threads", "2", "--no-tta"])
    assert res.exit_code == 0, res.output
    meta = ModelMetadata.read(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation"]["cases"] == 1 and metrics["train_volumes"] == 3 + 2
    assert meta.training_data["cases"] == 6
    assert meta.training_data["extra_cohorts"] == [{"cohort": "extra", "fingerprint": read_cohort(extra).fingerprint(),
                                                    "cases": 2}]
    assert metrics["train_config"]["hypodense_weight"] == 4.0 and metrics["train_config"]["negative_weight"] == 6.0
    assert len(list((extra / ".cache" / "segmenter").glob("*.npz"))) == 2  # each cohort keeps its own cache
