"""Every knob of the synthetic cohort in one validated, serialisable object.

The defaults encode the request of issue 4 (HU ranges, volume law, location mix, marker
sensitivity/specificity from Morotti et al. 2019) so that a cohort is reproducible from
``(SynthOptions, seed)`` alone; ``cohort.json`` stores both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

MARKERS: tuple[str, ...] = (
    "blend", "black_hole", "hypodensity", "island", "satellite", "swirl", "irregular", "heterogeneity",
)

# (P(marker | expansion), P(marker | no expansion)) = (sensitivity, 1 - specificity).
# blend, black hole, island, satellite, hypodensity: Morotti et al., Ann Neurol 2019 (and the
# meta-analyses it cites). swirl, irregular, heterogeneity: pooled values from Barras 2009 /
# Selariu 2012 / Yu 2017 are less consistent; the numbers below are mid-range assumptions.
DEFAULT_MARKER_RATES: dict[str, tuple[float, float]] = {
    "blend": (0.38, 1 - 0.91),
    "black_hole": (0.32, 1 - 0.94),
    "hypodensity": (0.53, 1 - 0.78),
    "island": (0.45, 1 - 0.98),
    "satellite": (0.62, 1 - 0.63),
    "swirl": (0.42, 1 - 0.80),
    "irregular": (0.58, 1 - 0.63),
    "heterogeneity": (0.55, 1 - 0.70),
}

# Markers that are special cases of another (child -> parent): a blend sign *is* a hypodensity,
# an island sign *is* an irregular shape.  Sampling keeps the marginal rates above exact.
MARKER_PARENT: dict[str, str] = {
    "blend": "hypodensity",
    "black_hole": "hypodensity",
    "swirl": "hypodensity",
    "island": "irregular",
}

DEFAULT_LOCATIONS: dict[str, float] = {"deep": 0.62, "lobar": 0.26, "cerebellar": 0.08, "brainstem": 0.04}
# Intraventricular extension probability by location (deep bleeds reach the ventricles most often).
DEFAULT_IVH: dict[str, float] = {"deep": 0.35, "lobar": 0.12, "cerebellar": 0.2, "brainstem": 0.25}


NOISE_TEXTURES: tuple[str, ...] = ("ct", "white", "coarse", "fine")


class OptionsError(ValueError):
    """An option value outside what the generator can honour."""


@dataclass(frozen=True)
class SynthOptions:
    # --- acquisition geometry
    matrix: int = 512
    pixel_mm: tuple[float, float] = (0.40, 0.50)
    thickness_mm: tuple[float, ...] = (1.0, 2.5, 5.0)
    tilt_fraction: float = 0.3               # share of studies acquired with gantry tilt
    tilt_deg: tuple[float, float] = (10.0, 25.0)
    # --- heads
    head_source: str = "phantom"             # phantom | real | mixed
    real_fraction: float = 0.5               # share of real heads when head_source == "mixed"
    # --- hematoma
    volume_median_ml: float = 12.0
    volume_sigma: float = 0.9
    volume_range_ml: tuple[float, float] = (1.0, 120.0)
    locations: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LOCATIONS))
    ivh_probability: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_IVH))
    # --- expansion
    prevalence: float = 0.25
    growth_abs_ml: float = 6.0               # label rule: growth > 6 mL ...
    growth_rel: float = 0.33                 # ... or > 33 %
    interval_h: tuple[float, float] = (6.0, 72.0)
    marker_rates: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_MARKER_RATES))
    # --- physics
    noise_hu: tuple[float, float] = (3.0, 6.0)
    streak_probability: float = 0.5          # beam-hardening streaks near the skull base
    write_followup: bool = True
    # --- output
    dicom_rle: bool = False                  # RLE Lossless pixel data (~40 % smaller files)
    # --- appearance (issue 16): a wider image-formation model, to draw cohorts that look unlike the
    # training data. The defaults are generator 1.0's fixed values and draw nothing, so existing
    # seeds/configurations stay byte-identical; any non-default draws per series from its own stream.
    matrix_choices: tuple[int, ...] = ()     # non-empty: the matrix is drawn per case from these (else `matrix`)
    psf_mm: tuple[float, float] = (0.6, 0.6)  # in-plane PSF sigma (reconstruction kernel resolution), uniform
    sharpen: tuple[float, float] = (0.0, 0.0)  # edge-enhancing kernel: unsharp-mask gain (overshoot at edges)
    noise_textures: tuple[str, ...] = ("ct",)  # drawn per series: ct ([1 2 1] correlated) | white | coarse | fine
    ssp_tail_mm: tuple[float, float] = (0.0, 0.0)  # Gaussian tails (sigma) of the slice profile beyond the boxcar slab
    lesion_edge_mm: tuple[float, float] = (0.0, 0.0)  # 10-90 % width of a soft clot margin, centred on the surface
    # ground-truth partial-volume convention: a mask voxel is hematoma when at least this share of its
    # slab is (0.5 = the partial-volume midpoint; a tiny value = "any voxel the clot touches")
    mask_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 32 <= self.matrix <= 1024 or self.matrix % 2:
            raise OptionsError(f"matrix must be an even number in 32..1024, got {self.matrix}")
        lo, hi = self.pixel_mm
        if not 0.1 <= lo <= hi <= 5.0:
            raise OptionsError(f"pixel_mm must satisfy 0.1 <= lo <= hi <= 5, got {self.pixel_mm}")
        if not self.thickness_mm or any(not 0.5 <= t <= 10 for t in self.thickness_mm):
            raise OptionsError(f"thickness_mm values must lie in 0.5..10 mm, got {self.thickness_mm}")
        for name in ("tilt_fraction", "real_fraction", "prevalence", "streak_probability"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise OptionsError(f"{name} must lie in 0..1, got {v}")
        if not 0 <= self.tilt_deg[0] <= self.tilt_deg[1] <= 30:
            raise OptionsError(f"tilt_deg must satisfy 0 <= lo <= hi <= 30, got {self.tilt_deg}")
        if self.head_source not in ("phantom", "real", "mixed"):
            raise OptionsError(f"head_source must be phantom, real or mixed, got {self.head_source!r}")
        if not 0 < self.volume_range_ml[0] < self.volume_range_ml[1] <= 300:
            raise OptionsError(f"volume_range_ml must satisfy 0 < lo < hi <= 300, got {self.volume_range_ml}")
        if self.volume_sigma <= 0 or self.volume_median_ml <= 0:
            raise OptionsError("volume_median_ml and volume_sigma must be positive")
        unknown = set(self.locations) - set(DEFAULT_LOCATIONS)
        if unknown or not self.locations or any(p < 0 for p in self.locations.values()) or sum(self.locations.values()) <= 0:
            raise OptionsError(f"locations must map a subset of {sorted(DEFAULT_LOCATIONS)} to non-negative weights, got {self.locations}")
        missing = set(MARKERS) - set(self.marker_rates)
        if missing:
            raise OptionsError(f"marker_rates lacks {sorted(missing)}")
        for child, parent in MARKER_PARENT.items():
            for i, which in enumerate(("expansion", "no expansion")):
                if self.marker_rates[child][i] > self.marker_rates[parent][i] + 1e-9:
                    raise OptionsError(f"P({child}|{which}) cannot exceed P({parent}|{which}): a {child} sign is a {parent}")
        if not 0 < self.interval_h[0] <= self.interval_h[1]:
            raise OptionsError(f"interval_h must satisfy 0 < lo <= hi, got {self.interval_h}")
        if not 0 <= self.noise_hu[0] <= self.noise_hu[1] <= 50:
            raise OptionsError(f"noise_hu must satisfy 0 <= lo <= hi <= 50, got {self.noise_hu}")
        if any(not 32 <= m <= 1024 or m % 2 for m in self.matrix_choices):
            raise OptionsError(f"matrix_choices must be even numbers in 32..1024, got {self.matrix_choices}")
        for name, top in (("psf_mm", 3.0), ("sharpen", 2.0), ("ssp_tail_mm", 5.0), ("lesion_edge_mm", 3.0)):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi <= top:
                raise OptionsError(f"{name} must satisfy 0 <= lo <= hi <= {top:g}, got {getattr(self, name)}")
        if not 0 < self.mask_fraction <= 1:
            raise OptionsError(f"mask_fraction must lie in (0, 1], got {self.mask_fraction}")
        if not self.noise_textures or set(self.noise_textures) - set(NOISE_TEXTURES):
            raise OptionsError(f"noise_textures must be a non-empty subset of {NOISE_TEXTURES}, got {self.noise_textures}")

    @property
    def default_appearance(self) -> bool:
        """True when the appearance knobs are generator 1.0's fixed values (nothing extra is drawn)."""
        defaults = {f.name: f.default for f in fields(self)}
        return all(getattr(self, n) == defaults[n] for n in WIDER_MODEL_FIELDS if n != "mask_fraction")

    def to_dict(self) -> dict[str, Any]:
        """All fields; the appearance knobs only when they differ from their defaults, so a default
        configuration serialises (``cohort.json``) exactly as before they existed."""
        out = asdict(self)
        for f in fields(self):
            if f.name in WIDER_MODEL_FIELDS and getattr(self, f.name) == f.default:
                del out[f.name]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SynthOptions":
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise OptionsError(f"unknown options {sorted(unknown)}")
        conv = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
        if "marker_rates" in conv:
            conv["marker_rates"] = {k: tuple(v) for k, v in conv["marker_rates"].items()}
        return cls(**conv)

    def with_(self, **changes: Any) -> "SynthOptions":
        return replace(self, **changes)


# issue 16's knobs: serialised only when set, so a default configuration's cohort.json is unchanged
WIDER_MODEL_FIELDS = ("matrix_choices", "psf_mm", "sharpen", "noise_textures", "ssp_tail_mm", "lesion_edge_mm",
                      "mask_fraction")


def shifted_appearance(**changes: Any) -> SynthOptions:
    """A deliberately *different* configuration from the one model 1 was trained on (issue 16):
    matrix 256 or 512, 1 / 2.5 / 5 mm, other noise textures, softer or edge-enhancing kernels, slice
    profiles with tails, soft clot margins, a different real/phantom head mix and more noise."""
    base = dict(matrix=512, matrix_choices=(256, 512), thickness_mm=(1.0, 2.5, 5.0), head_source="mixed",
                real_fraction=0.35, psf_mm=(0.35, 1.0), sharpen=(0.0, 0.8), noise_textures=("white", "coarse", "fine"),
                ssp_tail_mm=(0.0, 1.5), lesion_edge_mm=(0.0, 2.0), noise_hu=(3.0, 8.0))
    base.update(changes)
    return SynthOptions(**base)
