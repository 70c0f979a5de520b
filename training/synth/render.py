"""Render one CT series of a head with a hematoma: anatomy (with mass effect), perihematomal
edema, clot density, intraventricular blood, then image formation; and the ground-truth mask
on the untilted grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import physics
from .anatomy import PARENCHYMA, VENT
from .fields import sigmoid
from .geometry import Acquisition, MaskGrid, Pose
from .lesion import Hematoma
from .markers import Density

CHUNK_SAMPLES = 24         # sub-slab samples rendered at once (bounds memory to ~100 MB at 512)


@dataclass
class Scene:
    """Everything that is in the head at one time point."""

    head: object
    hem: Hematoma
    density: Density
    volume_ml: float
    edema_mm: float
    edema_hu: float
    edema_strength: float
    ivh: bool
    ivh_level: float            # head-frame y above which (posteriorly) ventricles hold blood
    ivh_hu: float
    edge_mm: float = 0.0        # 10-90 % width of a soft clot margin (0: sharp, as in generator 1.0)

    def anatomy_coords(self, hx, hy, hz):
        """Mass effect: tissue pushed radially away from the clot, fading with distance and
        towards the skull (inverse map: where the anatomy seen at a point came from)."""
        c = self.hem.centre.tolist()
        r_eq = float(0.85 * np.cbrt(3 * self.volume_ml * 1000 / (4 * np.pi)))
        dx, dy, dz = hx - c[0], hy - c[1], hz - c[2]
        r2 = dx * dx + dy * dy + dz * dz
        sel = np.flatnonzero(r2 < (r_eq + 45.0) ** 2)
        if sel.size == 0 or r_eq < 1:
            return hx, hy, hz
        ax, ay, az = hx.copy(), hy.copy(), hz.copy()
        r = np.sqrt(r2[sel]) + 1e-3
        w = np.exp(-np.maximum(r - r_eq, 0) / 25.0)
        r_src = np.cbrt(np.maximum(r ** 3 - w * r_eq ** 3, 0))
        f = np.clip(-self.head.cavity_depth(hx[sel], hy[sel], hz[sel]) / 8.0, 0, 1)
        k = 1.0 - f * (1.0 - r_src / r)
        ax[sel] = c[0] + dx[sel] * k
        ay[sel] = c[1] + dy[sel] * k
        az[sel] = c[2] + dz[sel] * k
        return ax, ay, az

    def shade(self, hx, hy, hz) -> tuple[np.ndarray, np.ndarray]:
        """HU and label (1 hematoma, 2 intraventricular blood) at head-frame points (flat arrays)."""
        ax, ay, az = self.anatomy_coords(hx, hy, hz)
        hu, code = self.head.render(ax, ay, az)
        label = np.zeros(hx.size, np.uint8)
        lo, hi = (v.tolist() for v in self.hem.bbox(self.edema_mm + 2.0))
        sel = np.flatnonzero((hx > lo[0]) & (hx < hi[0]) & (hy > lo[1]) & (hy < hi[1]) & (hz > lo[2]) & (hz < hi[2]))
        if sel.size:
            x, y, z = hx[sel], hy[sel], hz[sel]
            sd = self.hem.signed_distance(x, y, z)
            h, c = hu[sel], code[sel]
            par = np.isin(c, PARENCHYMA)
            wt = self.edema_strength * (1.0 - sigmoid((sd - self.edema_mm) / 0.6)) * par * (sd >= -1.0)
            h = h + (self.edema_hu - h) * wt
            inside = np.flatnonzero(sd < 0)
            if self.edge_mm > 0:   # soft margin: density blends across the surface, 50 % on it
                s = self.edge_mm / 4.394          # logistic scale: 10-90 % over edge_mm
                near = np.flatnonzero(sd < 3.0 * s)
                occ = self.head.compartment(self.hem.compartment, x[near], y[near], z[near])
                ii = near[occ]
                w = sigmoid(-sd[ii] / s)
                clot = self.density.hu(x[ii], y[ii], z[ii], self.hem.centre, self.hem.scale * self.hem.radius0)
                h[ii] = h[ii] + (clot - h[ii]) * w
                lab = label[sel]
                lab[ii[sd[ii] < 0]] = 1
                label[sel] = lab
            elif inside.size:
                occ = self.head.compartment(self.hem.compartment, x[inside], y[inside], z[inside])
                ii = inside[occ]
                h[ii] = self.density.hu(x[ii], y[ii], z[ii], self.hem.centre, self.hem.scale * self.hem.radius0)
                lab = label[sel]
                lab[ii] = 1
                label[sel] = lab
            hu[sel] = h
        if self.ivh:
            v = np.flatnonzero((code == VENT) & (ay > self.ivh_level) & (label == 0))
            hu[v] = self.ivh_hu
            label[v] = 2
        return hu, label


def render_series(scene: Scene, acq: Acquisition, pose: Pose, noise_hu: float, streak_hu: float,
                  rng: np.random.Generator, psf_mm: float = 0.6,
                  look: physics.Appearance | None = None) -> np.ndarray:
    """HU volume (K, M, M) float32 as the scanner would store it (rounded).

    ``look`` (the wider appearance model; None = generator 1.0's image formation) sets the PSF, an
    edge-enhancing kernel, the noise texture and Gaussian tails of the slice profile."""
    step = 2 if acq.matrix >= 256 else 1
    n_sub = max(1, int(round(acq.thickness_mm / 1.25)))
    m = acq.matrix // step
    tails = look is not None and look.ssp_tail_mm > 0     # tails mix neighbouring slabs: keep every sample
    out = np.empty((acq.n_slices, m, m), np.float32)
    sub = np.empty((acq.n_slices * n_sub, m, m), np.float32) if tails else None
    per = max(1, CHUNK_SAMPLES // n_sub)
    for k0 in range(0, acq.n_slices, per):
        k1 = min(acq.n_slices, k0 + per)
        x, y, z = acq.render_points(step, n_sub, k0, k1)
        hx, hy, hz = (a.ravel() for a in pose.to_head(x, y, z))
        hu, _ = scene.shade(hx, hy, hz)
        if streak_hu > 0:
            band = np.flatnonzero(np.abs(hz + 40.0) < 22.0)
            hu[band] += physics.streaks(hx[band], hy[band], hz[band], streak_hu, rng)
        if sub is not None:
            sub[k0 * n_sub:k1 * n_sub] = hu.reshape((k1 - k0) * n_sub, m, m)
        else:
            out[k0:k1] = physics.slab_average(hu.reshape((k1 - k0) * n_sub, m, m), n_sub)
    if sub is not None:
        out = physics.slice_profile(sub, n_sub, look.ssp_tail_mm / (acq.thickness_mm / n_sub))
    if look is None:
        out = physics.blur(out, psf_mm / (acq.pixel_mm * step))
        return physics.finish(out, step, noise_hu, rng)
    px = acq.pixel_mm * step
    out = physics.sharpen(physics.blur(out, look.psf_mm / px), look.sharpen, 1.0 / px)
    return physics.finish_textured(out, step, noise_hu, rng, look)


def render_mask(scene: Scene, grid: MaskGrid, pose: Pose, n_sub: int, fraction: float = 0.5) -> np.ndarray:
    """Label volume on an untilted grid: a voxel is labelled when >= ``fraction`` of its slab is
    (0.5, the default: the partial-volume midpoint)."""
    xs, ys, zs = grid.axes()
    lo, hi = scene.hem.bbox(2.0)
    lo_i, hi_i = [], []
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    pc = pose.to_patient(corners)
    if scene.ivh:   # ventricles live within ~45 mm of the head centre
        vc = np.array([[a, b, c] for a in (-45, 45) for b in (-45, 45) for c in (-50, 35)], float)
        pc = np.vstack([pc, pose.to_patient(vc)])
    plo, phi = pc.min(0), pc.max(0)
    for axis, (ax_vals, sp) in enumerate(zip((xs, ys, zs), grid.spacing)):
        i0 = int(np.clip(np.searchsorted(ax_vals, plo[axis] - sp), 0, len(ax_vals)))
        i1 = int(np.clip(np.searchsorted(ax_vals, phi[axis] + sp), 0, len(ax_vals)))
        lo_i.append(i0)
        hi_i.append(i1)
    mask = np.zeros(grid.shape, np.uint8)
    if any(h <= l for l, h in zip(lo_i, hi_i)):
        return mask
    sx, sy, sz = (xs[lo_i[0]:hi_i[0]], ys[lo_i[1]:hi_i[1]], zs[lo_i[2]:hi_i[2]])
    d = ((np.arange(n_sub) + 0.5) / n_sub - 0.5) * grid.spacing[2]
    zz = (sz[:, None] + d[None, :]).reshape(-1)
    X, Y, Z = np.meshgrid(sx, sy, zz, indexing="ij")  # (x, y, zq)
    hx, hy, hz = pose.to_head(X.ravel(), Y.ravel(), Z.ravel())
    lab = np.zeros(hx.size, np.uint8)
    sd = scene.hem.signed_distance(hx, hy, hz)
    inside = np.flatnonzero(sd < 0)
    if inside.size:
        occ = scene.head.compartment(scene.hem.compartment, hx[inside], hy[inside], hz[inside])
        lab[inside[occ]] = 1
    if scene.ivh:
        ax, ay, az = scene.anatomy_coords(hx, hy, hz)
        lab[scene.head.ventricles(ax, ay, az) & (ay > scene.ivh_level) & (lab == 0)
            & (scene.head.cavity_depth(ax, ay, az) < 0)] = 2
    lab = lab.reshape(len(sx), len(sy), len(sz), n_sub)
    hem = (lab == 1).mean(axis=3) >= fraction
    ivh = (lab == 2).mean(axis=3) >= fraction
    sub = np.where(hem, 1, np.where(ivh, 2, 0)).astype(np.uint8).transpose(2, 1, 0)
    mask[lo_i[2]:hi_i[2], lo_i[1]:hi_i[1], lo_i[0]:hi_i[0]] = sub
    return mask
