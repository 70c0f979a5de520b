"""Hematoma geometry: a union of perturbed ellipsoids, clipped to its compartment, fitted to an
exact volume.

The main clot (and its lobes/buds) is defined in units scaled by one factor about the centre,
so volume fitting is a 1-D problem; satellites and scattered islands have absolute sizes
(the consensus definitions give them in mm).  The volume reported everywhere is the one measured
on a fine grid of the final shape, so labels derive from what is actually rendered.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .fields import WaveField
from .geometry import rotation


@dataclass
class Blob:
    centre: np.ndarray          # head frame, mm (for scaled blobs: offset from the hematoma centre at scale 1)
    axes: np.ndarray            # semi-axes, mm (at scale 1 for scaled blobs)
    rot: np.ndarray             # blob frame -> head frame
    amp: float = 0.0            # boundary perturbation amplitude (fraction of radius)
    waves: WaveField | None = None

    def level(self, x, y, z, centre: np.ndarray, scale: float) -> np.ndarray:
        """< 0 inside; ~ signed distance / mean radius."""
        c = (centre + scale * self.centre).tolist()
        a = (scale * self.axes).tolist()
        dx, dy, dz = x - c[0], y - c[1], z - c[2]
        r = self.rot.tolist()
        u = (r[0][0] * dx + r[1][0] * dy + r[2][0] * dz) / a[0]
        v = (r[0][1] * dx + r[1][1] * dy + r[2][1] * dz) / a[1]
        w = (r[0][2] * dx + r[1][2] * dy + r[2][2] * dz) / a[2]
        lev = np.sqrt(u * u + v * v + w * w) - 1.0
        if self.amp and self.waves is not None:
            lev = lev - self.amp * self.waves(u, v, w)
        return lev

    def reach(self, scale: float) -> float:
        return float(scale * (np.linalg.norm(self.centre) + self.axes.max() * (1 + 2 * self.amp)))


@dataclass
class Hematoma:
    centre: np.ndarray
    compartment: str
    blobs: list[Blob]                       # scaled about centre
    extras: list[Blob] = field(default_factory=list)   # absolute (centre is absolute)
    scale: float = 1.0
    radius0: float = 1.0                    # mean semi-axis of the main blob at scale 1
    lattice_n: int = 32                     # lattice half-width in cells (coarser = faster, for statistics)

    def _main_lattice(self):
        """Level (mm at scale 1) of the scaled blobs on a lattice about the centre; computed once
        per shape and interpolated thereafter (the analytic field is too costly per voxel)."""
        lat = getattr(self, "_lattice", None)
        if lat is None:
            reach = max(b.reach(1.0) for b in self.blobs) + 14.0
            h = max(reach / float(self.lattice_n), 0.3)
            ax = np.arange(-reach, reach + h, h).astype(np.float32)
            n = ax.size
            lev = np.full((n, n, n), 1e3, np.float32)
            for k, b in enumerate(self.blobs):
                if k == 0:
                    sl = (slice(0, n),) * 3
                else:   # secondary blobs only matter near themselves
                    e = float(b.axes.max() * (1 + 2 * b.amp)) + 10.0
                    sl = tuple(slice(int(np.clip((b.centre[i] - e - ax[0]) / h, 0, n)),
                                     int(np.clip((b.centre[i] + e - ax[0]) / h + 1, 0, n))) for i in range(3))
                g = np.meshgrid(ax[sl[0]], ax[sl[1]], ax[sl[2]], indexing="ij")
                if g[0].size == 0:
                    continue
                l = b.level(g[0], g[1], g[2], np.zeros(3), 1.0) * float(b.axes.mean())
                lev[sl] = np.minimum(lev[sl], l)
            lat = (lev, float(ax[0]), h)
            self._lattice = lat
        return lat

    def _levels(self, x, y, z):
        from scipy.ndimage import map_coordinates

        grid, start, h = self._main_lattice()
        s = float(self.scale)
        cx, cy, cz = self.centre.tolist()
        k = 1.0 / (s * h)
        coords = np.empty((3, np.size(x)), np.float32)
        coords[0] = np.ravel((x - cx) * k - start / h)
        coords[1] = np.ravel((y - cy) * k - start / h)
        coords[2] = np.ravel((z - cz) * k - start / h)
        lev = map_coordinates(grid, coords, order=1, mode="constant", cval=1e3,
                              prefilter=False).reshape(np.shape(x)) * s
        for b in self.extras:
            bx, by, bz = b.centre.tolist()
            near = np.flatnonzero((np.abs(x - bx) < 12) & (np.abs(y - by) < 12) & (np.abs(z - bz) < 12))
            if near.size:
                l = b.level(x[near], y[near], z[near], np.zeros(3), 1.0) * float(b.axes.mean())
                lev[near] = np.minimum(lev[near], l)
        return lev

    def signed_distance(self, x, y, z) -> np.ndarray:
        """Approximate signed distance to the clot surface (mm, < 0 inside), unclipped."""
        return self._levels(x, y, z)

    def occupancy(self, head, x, y, z) -> np.ndarray:
        inside = self._levels(x, y, z) < 0
        if inside.any():
            idx = np.flatnonzero(inside)
            inside[idx] = head.compartment(self.compartment, x[idx], y[idx], z[idx])
        return inside

    def bbox(self, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        r = max(b.reach(self.scale) for b in self.blobs)
        lo, hi = self.centre - r, self.centre + r
        for b in self.extras:
            e = b.axes.max() * (1 + 2 * b.amp)
            lo, hi = np.minimum(lo, b.centre - e), np.maximum(hi, b.centre + e)
        return lo - margin, hi + margin

    def copy(self) -> "Hematoma":
        out = replace(self, blobs=list(self.blobs), extras=list(self.extras))
        out.__dict__.pop("_lattice", None)
        return out


def fine_points(lo: np.ndarray, hi: np.ndarray, max_points: int = 400_000):
    ext = np.maximum(hi - lo, 1e-3)
    h = max(float(np.cbrt(np.prod(ext) / max_points)), 0.25)
    axes = [lo[i] + h * (np.arange(int(np.ceil(ext[i] / h))) + 0.5) for i in range(3)]
    g = np.meshgrid(*axes, indexing="ij")
    return g[0].ravel().astype(np.float32), g[1].ravel().astype(np.float32), g[2].ravel().astype(np.float32), h


def measure_ml(hem: Hematoma, head) -> float:
    """Volume of the clipped clot (mL).

    The scaled blobs are integrated on their own lattice with a partial-volume fraction from the
    level value (accurate to well under 1 % at lattice spacing); separate foci are counted on
    a fine grid around each, excluding what the main clot already covers.
    """
    grid, start, h = hem._main_lattice()
    s = float(hem.scale)
    cached = getattr(hem, "_frac", None)
    if cached is None or cached[0] is not grid:
        flat = grid.ravel()
        idx = np.flatnonzero(flat < h * 2)
        gx, gy, gz = np.gradient(grid, h)
        g = np.sqrt(gx * gx + gy * gy + gz * gz).ravel()[idx]
        frac = np.clip(0.5 - flat[idx] / (h * np.maximum(g, 0.2)), 0.0, 1.0)
        keep = frac > 0
        idx, frac = idx[keep], frac[keep]
        n = grid.shape[0]
        hem._frac = cached = (grid, frac, idx // (n * n), (idx // n) % n, idx % n)
    _, frac, ix, iy, iz = cached
    cx, cy, cz = hem.centre.tolist()
    px = (cx + s * (start + h * ix)).astype(np.float32)
    py = (cy + s * (start + h * iy)).astype(np.float32)
    pz = (cz + s * (start + h * iz)).astype(np.float32)
    comp = head.compartment(hem.compartment, px, py, pz)
    vol = float((frac * comp).sum()) * (h * s) ** 3
    for k, b in enumerate(hem.extras):
        e = float(b.axes.max() * (1 + 2 * b.amp))
        x, y, z, hf = fine_points(b.centre - e, b.centre + e, 60_000)
        inside = b.level(x, y, z, np.zeros(3), 1.0) < 0
        if not inside.any():
            continue
        j = np.flatnonzero(inside)
        prior = replace(hem, extras=hem.extras[:k])
        prior._lattice = hem._lattice
        j = j[prior._levels(x[j], y[j], z[j]) >= 0]
        j = j[head.compartment(hem.compartment, x[j], y[j], z[j])]
        vol += j.size * hf ** 3
    return vol / 1000.0


def fit_volume(hem: Hematoma, head, target_ml: float, iterations: int = 4) -> float:
    """Set ``hem.scale`` so the clipped volume matches ``target_ml``; returns the measured volume."""
    unit = 4.0 / 3.0 * np.pi * np.prod(hem.blobs[0].axes) / 1000.0
    hem.scale = float(np.cbrt(target_ml / unit))
    vol = measure_ml(hem, head)
    for _ in range(iterations):
        if vol <= 0:
            hem.scale *= 1.5
        elif abs(vol / target_ml - 1) < 0.01:
            break
        else:
            hem.scale *= float(np.clip(np.cbrt(target_ml / vol), 0.7, 1.5))
        vol = measure_ml(hem, head)
    return vol


def random_rot(rng: np.random.Generator, spread_deg: float = 180.0) -> np.ndarray:
    return rotation(*rng.uniform(-spread_deg, spread_deg, 3))


def draw_hematoma(rng: np.random.Generator, centre: np.ndarray, compartment: str, location: str,
                  irregular: bool, buds: int, lattice_n: int = 32) -> Hematoma:
    """Main clot (+ lobes when irregular, + ``buds`` bubble-like buds) at scale 1 (r ~ 10 mm)."""
    r = 10.0
    ratios = np.array([1.0, rng.uniform(0.65, 1.0), rng.uniform(0.55, 0.9)])
    if location == "deep":          # putaminal/thalamic clots are elongated antero-posteriorly
        axes = r * np.array([ratios[1], ratios[0] * rng.uniform(1.1, 1.5), ratios[2] * 1.1])
        rot = rotation(rng.normal(0, 12), rng.normal(0, 10), rng.normal(0, 8))
    else:
        axes = r * ratios
        rot = random_rot(rng)
    amp = rng.uniform(0.12, 0.22) if irregular else rng.uniform(0.015, 0.05)
    wl = rng.uniform(0.7, 1.1) if irregular else rng.uniform(1.3, 2.0)
    blobs = [Blob(np.zeros(3), axes, rot, amp, WaveField(rng, wl, 6))]
    if irregular:
        for _ in range(int(rng.integers(1, 4))):
            d = rng.standard_normal(3)
            d /= np.linalg.norm(d)
            sz = r * rng.uniform(0.35, 0.6)
            blobs.append(Blob(d * r * rng.uniform(0.6, 0.9), sz * rng.uniform(0.7, 1.0, 3), random_rot(rng),
                              rng.uniform(0.05, 0.15), WaveField(rng, 0.9, 4)))
    for _ in range(buds):
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        edge = _surface_radius(blobs[0], d)
        br = r * rng.uniform(0.2, 0.3)
        blobs.append(Blob(d * (edge + 0.6 * br), np.full(3, br), np.eye(3), 0.03, WaveField(rng, 1.5, 3)))
    return Hematoma(centre=np.asarray(centre, float), compartment=compartment, blobs=blobs,
                    radius0=float(axes.mean()), lattice_n=lattice_n)


def _surface_radius(blob: Blob, d: np.ndarray) -> float:
    """Distance from the blob centre to its surface along direction d (scale 1)."""
    t = np.linspace(0.0, 3.0, 301) * blob.axes.max()
    pts = d[None, :] * t[:, None]
    lev = blob.level(pts[:, 0], pts[:, 1], pts[:, 2], np.zeros(3), 1.0)
    out = np.flatnonzero(lev > 0)
    return float(t[out[0]]) if out.size else float(t[-1])


def margin_distance(hem: Hematoma, d: np.ndarray) -> float:
    """Distance from the hematoma centre to its (scaled, unclipped) margin along direction d."""
    t = np.linspace(0.0, 80.0, 801)
    pts = hem.centre[None, :] + d[None, :] * t[:, None]
    lev = hem._levels(pts[:, 0].astype(np.float32), pts[:, 1].astype(np.float32), pts[:, 2].astype(np.float32))
    out = np.flatnonzero(lev > 0)
    return float(t[out[0]]) if out.size else 80.0


def add_small_foci(rng: np.random.Generator, hem: Hematoma, head, n: int, radius_mm: tuple[float, float],
                   gap_mm: tuple[float, float]) -> int:
    """Separate small foci (satellites / scattered islands) at ``gap_mm`` from the margin, inside
    the compartment; returns how many could be placed."""
    placed = 0
    for _ in range(40 * n):
        if placed == n:
            break
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        rad = rng.uniform(*radius_mm)
        dist = margin_distance(hem, d) + rng.uniform(*gap_mm) + rad
        c = hem.centre + d * dist
        p = [np.array([v], np.float32) for v in c]
        if not head.compartment(hem.compartment, *p)[0]:
            continue
        if hem._levels(*p)[0] < rad + gap_mm[0]:
            continue
        hem.extras.append(Blob(c, rad * rng.uniform(0.8, 1.0, 3), random_rot(rng), 0.05, WaveField(rng, 1.5, 3)))
        placed += 1
    return placed
