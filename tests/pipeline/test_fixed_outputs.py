"""Issue 15, part 3: the faster stages change no result.

The bundled models on a fixed input — the real 5 mm Philips phantom — must give the volume and the
expansion probability they gave before the speed work of issue 15 (pinned at commit 2bdeaff, before
model 2 computed only the features its classifier reads; batched segmentation and threaded radiomics
were each checked against their stock paths when they landed). Stated tolerance: ±0.05 mL (TensorFlow's
float noise on another CPU may flip a few edge voxels; a voxel here is ~0.001 mL) and ±1e-4 in the
probability.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.analyze import Analyzer
from pipeline.models import ModelPaths
from pipeline.result import Status

PINNED = {"volume_ml": 42.24, "expansion_probability": 0.8415817413093447}   # 2bdeaff, this machine


@pytest.mark.slow
def test_bundled_models_give_the_pinned_volume_and_probability(phantom_dir: Path, tmp_path: Path):
    result = Analyzer(ModelPaths.bundled()).analyze(phantom_dir, tmp_path / "out")
    assert result.status is Status.ANALYZED
    assert result.volume_ml == pytest.approx(PINNED["volume_ml"], abs=0.05)
    assert result.expansion_probability == pytest.approx(PINNED["expansion_probability"], abs=1e-4)
