"""Issue 16: the wider appearance model (other noise/kernel textures, slice profiles, soft clot margins,
matrix mix, ground-truth partial-volume convention) — drawn only when asked for, so every existing
seed/configuration renders as before."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from training.synth import SynthOptions, generate_case
from training.synth.options import WIDER_MODEL_FIELDS, OptionsError, shifted_appearance
from training.synth.physics import textured_noise

SMALL = SynthOptions(matrix=128, thickness_mm=(5.0,))
SHIFTED = shifted_appearance(matrix_choices=(128,), thickness_mm=(5.0,), tilt_fraction=0.0, write_followup=False)
# the same configuration with generator 1.0's appearance
PLAIN = SHIFTED.with_(matrix=128, matrix_choices=(), psf_mm=(0.6, 0.6), sharpen=(0.0, 0.0), noise_textures=("ct",),
                      ssp_tail_mm=(0.0, 0.0), lesion_edge_mm=(0.0, 0.0))

# sha256 of (hu, mask) of baseline and follow-up of seed 1 with SMALL, rendered by generator 1.0 before
# the appearance knobs existed (numpy's generators are platform-independent; so is this pipeline on x86-64)
PINNED_SEED1 = "9fc7e4921ff7a918bdea64620371da12193e75e9fccb0efa274ba191863c175d"


def _digest(case) -> str:
    h = hashlib.sha256()
    for s in (case.baseline, case.followup):
        h.update(s.hu.tobytes())
        h.update(s.mask.tobytes())
    return h.hexdigest()


def test_defaults_render_exactly_as_generator_1_0():
    case = generate_case(1, SMALL)
    assert SMALL.default_appearance and "appearance" not in case.extra
    assert _digest(case) == PINNED_SEED1
    assert not set(WIDER_MODEL_FIELDS) & set(SMALL.to_dict())       # cohort.json of a default cohort unchanged


def test_shifted_options_round_trip_and_validate():
    d = SHIFTED.to_dict()
    assert set(WIDER_MODEL_FIELDS) - {"mask_fraction"} <= set(d)
    assert SynthOptions.from_dict(d) == SHIFTED and not SHIFTED.default_appearance
    with pytest.raises(OptionsError, match="noise_textures"):
        SynthOptions(noise_textures=("plaid",))
    with pytest.raises(OptionsError, match="lesion_edge_mm"):
        SynthOptions(lesion_edge_mm=(2.0, 1.0))
    with pytest.raises(OptionsError, match="mask_fraction"):
        SynthOptions(mask_fraction=0.0)


def test_shifted_cases_keep_labels_and_the_midpoint_ground_truth():
    for seed in range(3):
        a, b = generate_case(seed, PLAIN), generate_case(seed, SHIFTED)
        # labels and volumes come from their own streams: the appearance does not move them
        assert (a.location, a.markers, a.baseline_volume_ml) == (b.location, b.markers, b.baseline_volume_ml)
        look = b.extra["appearance"][0]
        assert look["noise_texture"] in SHIFTED.noise_textures and 0.35 <= look["psf_mm"] <= 1.0
        s = b.baseline
        mask_ml = (s.mask == 1).sum() * np.prod(s.mask_grid.spacing) / 1000
        assert mask_ml == pytest.approx(b.baseline_volume_ml, rel=0.08)   # the mask stays the 50 % rule
        assert not np.array_equal(a.baseline.hu, s.hu)


def test_any_touch_convention_makes_a_larger_mask():
    mid = generate_case(2, SHIFTED).baseline
    anyt = generate_case(2, SHIFTED.with_(mask_fraction=0.01)).baseline
    assert np.array_equal(mid.hu, anyt.hu)
    assert (anyt.mask == 1).sum() > 1.1 * (mid.mask == 1).sum()


@pytest.mark.parametrize("texture", ["white", "coarse", "fine"])
def test_noise_textures_have_the_requested_sd_and_their_own_correlation(texture):
    n = textured_noise((256, 256), 5.0, texture, 1.5, np.random.default_rng(0))
    assert n.std() == pytest.approx(5.0, rel=1e-3)
    lag1 = float(np.corrcoef(n[:, :-1].ravel(), n[:, 1:].ravel())[0, 1])
    expected = {"white": (-0.05, 0.05), "coarse": (0.6, 1.0), "fine": (-0.6, -0.05)}[texture]
    assert expected[0] < lag1 < expected[1]
