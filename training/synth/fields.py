"""Cheap implicit-shape and smooth-noise primitives evaluated on arbitrary point arrays."""

from __future__ import annotations

import numpy as np


def ellipsoid(x, y, z, c, a) -> np.ndarray:
    """Normalised quadratic form: < 1 inside the axis-aligned ellipsoid centre c, semi-axes a."""
    c, a = [float(v) for v in c], [float(v) for v in a]
    return ((x - c[0]) / a[0]) ** 2 + ((y - c[1]) / a[1]) ** 2 + ((z - c[2]) / a[2]) ** 2


def radial_depth(x, y, z, c, a) -> np.ndarray:
    """Signed distance to an ellipsoid's surface along the ray from its centre (mm; < 0 inside).

    Exact for spheres and close for the gently eccentric shapes of a head; much cheaper than a
    true distance transform.
    """
    e = ellipsoid(x, y, z, c, a)
    c = [float(v) for v in c]
    r = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
    return r * (1.0 - 1.0 / np.sqrt(np.maximum(e, 1e-12)))


def sigmoid(t):
    return 0.5 * (1.0 + np.tanh(0.5 * t))


class LatticeNoise:
    """Smooth Gaussian random field (unit sd) on a lattice about the origin, trilinear lookup.

    Mottled, non-periodic texture (plane-wave sums look striped at small scales).
    """

    def __init__(self, rng: np.random.Generator, cell_mm: float, half_extent_mm: float = 80.0) -> None:
        from scipy import ndimage

        n = int(2 * half_extent_mm / cell_mm) + 1
        g = ndimage.gaussian_filter(rng.standard_normal((n, n, n)).astype(np.float32), 1.0, mode="wrap")
        self.grid = g / max(float(g.std()), 1e-6)
        self.cell = float(cell_mm)
        self.start = -half_extent_mm

    def __call__(self, x, y, z) -> np.ndarray:
        from scipy import ndimage

        k = 1.0 / self.cell
        c = np.empty((3, np.size(x)), np.float32)
        c[0] = np.ravel((x - self.start) * k)
        c[1] = np.ravel((y - self.start) * k)
        c[2] = np.ravel((z - self.start) * k)
        return ndimage.map_coordinates(self.grid, c, order=1, mode="nearest", prefilter=False).reshape(np.shape(x))


class WaveField:
    """Isotropic band-limited random field: a normalised sum of plane waves.

    Its zero set is a labyrinth of folds with spacing ~ ``wavelength_mm``: a fair stand-in for
    gyri and sulci, and for mottled clot texture at smaller wavelengths.
    """

    def __init__(self, rng: np.random.Generator, wavelength_mm: float, n_waves: int = 8) -> None:
        v = rng.standard_normal((n_waves, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        k = 2 * np.pi / wavelength_mm * rng.uniform(0.8, 1.25, n_waves)
        self.k = (v * k[:, None]).astype(np.float32)
        self.phase = rng.uniform(0, 2 * np.pi, n_waves).astype(np.float32)
        self.norm = np.float32(np.sqrt(2.0 / n_waves))

    def __call__(self, x, y, z) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), np.float32)
        for (kx, ky, kz), ph in zip(self.k, self.phase):
            out += np.cos(kx * x + ky * y + kz * z + ph)
        return out * self.norm
