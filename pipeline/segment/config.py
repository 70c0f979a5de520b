"""How model 1's input is made (``preprocess.json``): a plain, validated dataclass.

Apart from ``preprocess.py`` (which resamples with SimpleITK) so that the network and its training loop
load on a machine without SimpleITK.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

PREPROCESS_FILE = "preprocess.json"


@dataclass(frozen=True)
class PreprocessConfig:
    """How a model's input is made; stored beside the weights as ``preprocess.json``."""

    spacing_mm: float = 1.5                 # isotropic model-grid spacing
    window_hu: tuple[float, float] = (0.0, 120.0)  # HU mapped linearly to [0, 1], clipped
    margin_mm: float = 6.0                  # around the brain's bounding box
    multiple: int = 8                       # model-grid sizes are a multiple of this (U-Net poolings)
    patch: tuple[int, int, int] = (64, 64, 64)  # training patch / sliding-window tile, (z, y, x)
    max_whole_voxels: int = 0               # grids up to this size run in one pass; larger ones (all, at 0)
                                            # tile by tile, so instance-norm statistics see patch-sized
                                            # context as in training (whole-volume passes over-segment)
    threshold: float = 0.5                  # probability → mask
    min_component_ml: float = 0.0           # connected blobs smaller than this are dropped (specks)
    refine: bool = False                    # re-draw the mask's edge at the CT's resolution (segment.refine)
    tta_flips: tuple[tuple[int, ...], ...] = ()  # test-time augmentation: also predict on the grid mirrored
                                            # along these (z, y, x) axes and average; ((2,),) = left-right

    def __post_init__(self) -> None:
        if not self.spacing_mm > 0:
            raise ValueError(f"spacing_mm must be > 0, got {self.spacing_mm}")
        lo, hi = self.window_hu
        if not hi > lo:
            raise ValueError(f"window_hu must be (low, high) with high > low, got {self.window_hu}")
        if self.multiple < 1 or any(p < 1 or p % self.multiple for p in self.patch):
            raise ValueError(f"patch {self.patch} must be positive multiples of {self.multiple}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.min_component_ml < 0:
            raise ValueError(f"min_component_ml must be >= 0, got {self.min_component_ml}")
        for axes in self.tta_flips:
            if not axes or len(set(axes)) != len(axes) or any(a not in (0, 1, 2) for a in axes):
                raise ValueError(f"tta_flips entries must be distinct axes from (0, 1, 2), got {axes!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing keys {unknown}; known: {sorted(known)}")
        data = dict(data)
        for key in ("window_hu", "patch"):
            if key in data:
                data[key] = tuple(data[key])
        if "tta_flips" in data:
            data["tta_flips"] = tuple(tuple(axes) for axes in data["tta_flips"])
        return cls(**data)

    def write(self, model_dir: Path) -> Path:
        path = Path(model_dir) / PREPROCESS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def read(cls, model_dir: Path) -> "PreprocessConfig":
        path = Path(model_dir) / PREPROCESS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{model_dir} is not a CNN model directory: {PREPROCESS_FILE} missing")
        return cls.from_dict(json.loads(path.read_text()))
