"""Classical baseline segmenter: near zero on a normal head, right volume on an inserted hematoma."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lesions import insert_ellipsoid
from pipeline.brain import extract_brain
from pipeline.segment import Segmenter, load_segmenter
from pipeline.segment.classical import ClassicalParams, ClassicalSegmenter
from pipeline.volume import load_series


@pytest.fixture(scope="module")
def ge(ct_data: Path):
    s = load_series(ct_data / "ge-human-head-tilted")
    return s, extract_brain(s.volume)


def test_normal_head_has_near_zero_hematoma(ge):
    s, brain = ge
    mask = ClassicalSegmenter().predict_mask(s.volume, brain)
    assert mask.sum() * s.volume.voxel_volume_ml < 0.5


@pytest.mark.parametrize(
    "offset, radii",
    [((25, 0, 0), (15, 12, 12)), ((0, 20, -45), (12, 12, 10))],
    ids=["lobar-9ml", "deep-6ml"],
)
def test_inserted_hematoma_volume_within_10_percent(ge, offset, radii):
    s, brain = ge
    center = s.volume.index_to_physical(np.array(np.nonzero(brain)).mean(axis=1)[None])[0] + np.array(offset)
    datasets, true_ml = insert_ellipsoid(s.datasets, center, radii, hu=65.0)
    lesioned = load_series(datasets)
    mask = ClassicalSegmenter().predict_mask(lesioned.volume, extract_brain(lesioned.volume))
    ml = mask.sum() * lesioned.volume.voxel_volume_ml
    assert ml == pytest.approx(true_ml, rel=0.10)
    # and it is where we put it
    idx = np.rint(lesioned.volume.physical_to_index(center[None])[0]).astype(int)
    assert mask[tuple(idx)]


def test_mask_never_leaves_the_brain(ge):
    s, brain = ge
    hot = s.volume.with_hu(np.where(s.volume.hu > -500, 65.0, s.volume.hu).astype(np.float32))
    mask = ClassicalSegmenter().predict_mask(hot, brain)
    assert not (mask & ~brain).any()


def test_params_are_validated():
    with pytest.raises(ValueError, match="lo_hu"):
        ClassicalParams(lo_hu=90, hi_hu=40)


def test_load_segmenter_registry(tmp_path: Path):
    seg = load_segmenter(None)
    assert isinstance(seg, ClassicalSegmenter) and isinstance(seg, Segmenter)
    d = tmp_path / "segmenter" / "3"
    d.mkdir(parents=True)
    (d / "metadata.json").write_text(json.dumps({"kind": "segmenter", "version": "3", "framework": "classical", "params": {"lo_hu": 45}}))
    seg = load_segmenter(d)
    assert seg.version == "3" and seg.params.lo_hu == 45
    (d / "metadata.json").write_text(json.dumps({"kind": "segmenter", "version": "3", "framework": "onnx"}))
    with pytest.raises(ValueError, match="unknown segmenter framework"):
        load_segmenter(d)
    with pytest.raises(FileNotFoundError):
        load_segmenter(tmp_path / "nowhere")


def test_load_segmenter_routes_keras_dirs_to_the_cnn_runtime(tmp_path: Path, monkeypatch):
    """metadata.json written by ModelMetadata nests the framework under "extra"; routing must find it."""
    from pipeline.models import ModelMetadata
    from pipeline.segment import cnn

    d = tmp_path / "segmenter" / "2"
    ModelMetadata("segmenter", "2", "ich-unet3d", "2026-01-01", {}, {}, "x", extra={"framework": "keras"}).write(d)
    seen = []
    monkeypatch.setattr(cnn.CNNSegmenter, "load", classmethod(lambda cls, path: seen.append(path) or "cnn"))
    assert load_segmenter(d) == "cnn" and seen == [d]
