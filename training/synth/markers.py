"""NCCT expansion markers (Morotti et al., Ann Neurol 2019 consensus definitions): which ones a
case shows, and the clot density model that renders them.

Sampling keeps each marker's marginal rate exact given the expansion label, P(m | expansion) =
sensitivity and P(m | no expansion) = 1 - specificity, while honouring that some markers are
special cases of others (a blend sign is a hypodensity, an island sign is an irregular shape).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .fields import LatticeNoise, sigmoid
from .options import MARKER_PARENT, MARKERS


def sample_markers(rng: np.random.Generator, expansion: bool, rates: dict[str, tuple[float, float]]) -> dict[str, bool]:
    col = 0 if expansion else 1
    out: dict[str, bool] = {}
    parents = [m for m in MARKERS if m not in MARKER_PARENT]
    for m in parents:
        out[m] = bool(rng.random() < rates[m][col])
    for child, parent in MARKER_PARENT.items():
        p_parent = rates[parent][col]
        p = rates[child][col] / p_parent if p_parent > 0 else 0.0
        out[child] = bool(out[parent] and rng.random() < p)
    return {m: out[m] for m in MARKERS}


@dataclass
class HypoRegion:
    """A hypodense part of the clot, in units of the hematoma's own radius about its centre."""

    kind: str                  # "halfspace" | "blob"
    drop_hu: float
    edge_mm: float             # width of the border: sharp (< 0.6 mm) or ill-defined
    normal: np.ndarray = field(default_factory=lambda: np.zeros(3))
    offset: float = 0.0        # halfspace: (p - c)/R . n > offset
    centre: np.ndarray = field(default_factory=lambda: np.zeros(3))
    radius: float = 0.3


@dataclass
class Density:
    """HU of the clot at any point: base value, texture, hypodense regions."""

    base_hu: float
    texture_hu: float
    texture: LatticeNoise
    regions: list[HypoRegion] = field(default_factory=list)

    def hu(self, x, y, z, centre: np.ndarray, radius_mm: float) -> np.ndarray:
        cx, cy, cz = [float(v) for v in centre]
        out = self.base_hu + self.texture_hu * self.texture(x - cx, y - cy, z - cz)
        drop = np.zeros_like(out)
        radius_mm = float(radius_mm)
        ux, uy, uz = (x - cx) / radius_mm, (y - cy) / radius_mm, (z - cz) / radius_mm
        for r in self.regions:
            if r.kind == "halfspace":
                nx, ny, nz = r.normal.tolist()
                sd = (ux * nx + uy * ny + uz * nz - r.offset) * radius_mm
            else:
                ox, oy, oz = r.centre.tolist()
                sd = (r.radius - np.sqrt((ux - ox) ** 2 + (uy - oy) ** 2 + (uz - oz) ** 2)) * radius_mm
            drop = np.maximum(drop, r.drop_hu * sigmoid(4.0 * sd / r.edge_mm))
        return (out - drop).astype(np.float32)


def _unit(rng: np.random.Generator) -> np.ndarray:
    d = rng.standard_normal(3)
    return d / np.linalg.norm(d)


def build_density(rng: np.random.Generator, markers: dict[str, bool], base_hu: float, min_axis_ratio: float) -> Density:
    """Clot density for the drawn markers.

    blend: hypodense part reaching the margin, sharp border, >= 18 HU darker (drawn 22-35).
    black hole: enclosed rounded hypodensity, sharp, >= 28 HU darker (drawn 30-42).
    swirl: rounded hypo/isodense areas inside, softer border, 14-24 HU darker.
    hypodensity without the above: an ill-defined darker area (15-22 HU) reaching the margin.
    heterogeneity: mottled texture (amplitude 7-11 HU, ~2 mm grain); otherwise 1.5-3 HU.
    """
    het = markers["heterogeneity"]
    d = Density(base_hu=base_hu, texture_hu=rng.uniform(7, 11) if het else rng.uniform(1.5, 3.0),
                texture=LatticeNoise(rng, rng.uniform(1.6, 2.4) if het else rng.uniform(2.5, 4.0)))
    inner = 0.85 * min_axis_ratio       # radius (in R units) safely inside the clot
    if markers["blend"]:
        d.regions.append(HypoRegion("halfspace", rng.uniform(22, 35), rng.uniform(0.3, 0.6), normal=_unit(rng),
                                    offset=rng.uniform(0.0, 0.45)))
    if markers["black_hole"]:
        rad = rng.uniform(0.45, 0.6) * inner
        d.regions.append(HypoRegion("blob", rng.uniform(30, 42), rng.uniform(0.3, 0.6),
                                    centre=_unit(rng) * rng.uniform(0, max(inner - rad - 0.15, 0.0)), radius=rad))
    if markers["swirl"]:
        for _ in range(int(rng.integers(1, 4))):
            rad = rng.uniform(0.25, 0.4) * inner
            d.regions.append(HypoRegion("blob", rng.uniform(14, 24), rng.uniform(1.0, 1.8),
                                        centre=_unit(rng) * rng.uniform(0, inner - rad), radius=rad))
    if markers["hypodensity"] and not (markers["blend"] or markers["black_hole"] or markers["swirl"]):
        d.regions.append(HypoRegion("blob", rng.uniform(15, 22), rng.uniform(1.5, 2.5),
                                    centre=_unit(rng) * rng.uniform(0.75, 0.95), radius=rng.uniform(0.35, 0.5)))
    return d
