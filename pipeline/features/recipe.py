"""Feature recipes: which radiomics parameters and which CNN key-slice geometry a model-2 version reads.

Why named recipes: a classifier is only valid on the features it was trained on, so training, the
node's runtime and retraining must cut them the same way; the model directory records its recipe's
parts (``radiomics_params`` file, ``cnn_slice_geometry``) and every path reads them from there.

- ``v1`` — the seed's: radiomics on the series' own grid, bin width 25 HU; CNN slices = the largest-area
  slice ±3 native slices, the whole matrix resized (tied to one pixel size and slice thickness).
- ``v2`` — resolution-independent (issue 16): radiomics resampled to 1 mm isotropic with fixed bin widths
  (``radiomics-v2.yaml``); CNN slices ±15 mm apart showing a fixed 240 mm field of view.
- ``v3`` — the coarsest common grid: radiomics on 1 × 1 × 5 mm, thin series smoothed down to it first
  (``antialias``; ``radiomics-v3.yaml``), not thick ones interpolated up; CNN slices as v2.
- ``v4`` — v1's discretisation (25 HU bins, no re-segmentation) on v3's common grid (``radiomics-v4.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.features.cnn import SliceGeometry
from pipeline.features.radiomics import PARAMS_DIR


@dataclass(frozen=True)
class Recipe:
    name: str
    radiomics_params: Path
    slice_geometry: SliceGeometry | None  # None: v1's native ±3 slices
    antialias: bool = False  # smooth the axes the radiomics resampling coarsens (RadiomicsExtractor)

    @property
    def radiomics_version(self) -> str:
        return self.radiomics_params.stem


RECIPES = {
    "v1": Recipe("v1", PARAMS_DIR / "radiomics-v1.yaml", None),
    "v2": Recipe("v2", PARAMS_DIR / "radiomics-v2.yaml", SliceGeometry(fov_mm=240.0, offset_mm=15.0)),
    "v3": Recipe("v3", PARAMS_DIR / "radiomics-v3.yaml", SliceGeometry(fov_mm=240.0, offset_mm=15.0), antialias=True),
    "v4": Recipe("v4", PARAMS_DIR / "radiomics-v4.yaml", SliceGeometry(fov_mm=240.0, offset_mm=15.0), antialias=True),
}


def recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown feature recipe {name!r}; known: {', '.join(RECIPES)}") from None
