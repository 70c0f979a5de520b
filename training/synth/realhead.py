"""Real heads: lesions inserted into a real normal head CT (the shared GE head), varied by a
random affine (scale, small rotation, left-right flip), a smooth random deformation and
per-tissue intensity jitter, so one real head yields many distinct anatomies.

The head is segmented once per process (bone, cranial cavity, CSF, ventricles, grey/white
matter) into an *atlas* on the series' own (tilt-corrected) grid; a ``RealHead`` exposes the
same interface as ``PhantomHead`` (render, cavity_depth, ventricles, compartment, site), so the
lesion, marker and physics stages do not know which kind of head they are drawing into.

Head frame: origin at the centroid of the cranial cavity, axes along the source slices' row,
column and normal (the source was tilted along the orbito-meatal line, so the skull base lies
parallel to the frame's axial planes, as in a well-positioned head).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .anatomy import AIR, BONE, CALC, CSF, GM, SOFT, VENT, WM

DEFAULT_REAL_HEAD = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ct" / "ge-human-head-tilted"
ENV_VAR = "ICH_SYNTH_REAL_HEAD"


def real_head_dir() -> Path:
    """Where the real normal head series lives (``$ICH_SYNTH_REAL_HEAD`` overrides)."""
    import os

    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    cands = [DEFAULT_REAL_HEAD.resolve(), Path("/work/shared/data/ct/ge-human-head-tilted")]
    if os.environ.get("ICH_CT_DATA"):
        cands.insert(0, Path(os.environ["ICH_CT_DATA"]) / "ge-human-head-tilted")
    for cand in cands:
        if cand.is_dir():
            return cand
    raise FileNotFoundError(f"real head series not found; set {ENV_VAR} to the ge-human-head-tilted folder")


@dataclass
class Atlas:
    hu: np.ndarray            # (z, y, x) float32, smoothed, outside-FOV set to air
    code: np.ndarray          # (z, y, x) uint8 tissue codes (anatomy.AIR ... CALC)
    depth: np.ndarray         # (z, y, x) float32 signed distance to the inner table (mm, < 0 inside)
    infra: np.ndarray         # (z, y, x) bool: below the tentorium (posterior fossa)
    spacing: np.ndarray       # (x, y, z) mm
    centre_idx: np.ndarray    # (x, y, z) continuous index of the head-frame origin
    vent_centre: np.ndarray   # head frame (x, y, z) of the lateral ventricles' centroid
    head_ext: np.ndarray      # (x, y) half-widths of the head about the centre (mm)
    source: str
    _cand: dict | None = None

    def to_index(self, x, y, z):
        """Head-frame mm (axes = grid axes) -> (3, n) continuous (z, y, x) indices."""
        sx, sy, sz = self.spacing.tolist()
        cx, cy, cz = self.centre_idx.tolist()
        out = np.empty((3, np.size(x)), np.float32)
        out[0] = np.ravel(z / sz + cz)
        out[1] = np.ravel(y / sy + cy)
        out[2] = np.ravel(x / sx + cx)
        return out


@functools.lru_cache(maxsize=2)
def load_atlas(path: str | None = None) -> Atlas:
    """Load and segment the real head once per process (~2 s)."""
    from pipeline.volume import load_series

    src = Path(path) if path else real_head_dir()
    vol = load_series(src).volume
    hu = vol.hu.astype(np.float32)
    hu[hu < -1000] = -1000.0                               # outside the reconstruction circle
    # 2x in-plane block mean: ~1 mm, the resolution we render at; halves the source noise
    nz, ny, nx = hu.shape
    hu = hu[:, : ny // 2 * 2, : nx // 2 * 2].reshape(nz, ny // 2, 2, nx // 2, 2).mean(axis=(2, 4))
    spacing = np.array([vol.spacing[0] * 2, vol.spacing[1] * 2, vol.spacing[2]])
    hu = ndimage.gaussian_filter(hu, (0, 0.6, 0.6))
    code, depth, infra, centre = _segment(hu, spacing)
    vent = np.argwhere(code == VENT)
    vc = (vent[:, ::-1].mean(0) - centre) * spacing if len(vent) else np.array([0.0, 0.0, 12.0])
    head = np.argwhere(code != AIR)
    ext = (np.abs(head[:, ::-1] - centre) * spacing).max(0)[:2]
    return Atlas(hu.astype(np.float32), code, depth.astype(np.float32), infra, spacing, centre, vc, ext, str(src))


def _segment(hu: np.ndarray, spacing: np.ndarray):
    sx, sy, sz = spacing
    bone = hu > 250
    head = ndimage.binary_fill_holes(hu > -300)
    soft = (hu > -40) & (hu < 140) & head & ~bone
    # cranial cavity: the soft-tissue component inside the skull, cut from the face/neck by an
    # in-plane erosion (foramina), then grown back inside the soft tissue
    st = np.zeros((1, 3, 3), bool)
    st[0] = ndimage.generate_binary_structure(2, 1)
    st3 = ndimage.generate_binary_structure(3, 1)
    er = ndimage.binary_erosion(ndimage.binary_erosion(soft, st, iterations=7), st3, iterations=1)
    lab, n = ndimage.label(er)
    if n == 0:
        raise ValueError("real head: no cranial cavity found")
    sizes = ndimage.sum(er, lab, range(1, n + 1))
    cav = lab == (1 + int(np.argmax(sizes)))
    cav = ndimage.binary_dilation(ndimage.binary_dilation(cav, st3, iterations=1) & soft, st, iterations=7) & soft
    cav = ndimage.binary_fill_holes(cav) & ~bone
    # orbits connect through the superior orbital fissures: cut the anterior-inferior cavity
    zi, yi, _ = np.nonzero(cav)
    zz, yy = np.indices(hu.shape)[:2]
    orbit = ((yy - yi.mean()) * sy < -50) & ((zz - zi.min()) * sz < 0.3 * (zi.max() - zi.min()) * sz)
    cav &= ~orbit
    inside = ndimage.distance_transform_edt(cav, sampling=(sz, sy, sx))
    outside = ndimage.distance_transform_edt(~cav, sampling=(sz, sy, sx))
    depth = np.where(cav, -inside, outside)
    code = np.full(hu.shape, AIR, np.uint8)
    code[head & (hu > -300)] = SOFT
    code[bone] = BONE
    sm = ndimage.gaussian_filter(hu, (0, 1.0, 1.0))
    csf = cav & (sm < 17)
    code[cav] = WM
    code[cav & (sm >= 31)] = GM
    code[csf] = CSF
    code[cav & (hu > 90)] = CALC
    # ventricles: CSF deep inside the cavity, in sizeable connected pieces
    deep_csf = csf & (inside > 22)
    deep_csf = ndimage.binary_opening(deep_csf, st)
    lab, n = ndimage.label(deep_csf)
    if n:
        sizes = ndimage.sum(deep_csf, lab, range(1, n + 1))
        cidx = np.argwhere(cav)[:, ::-1].mean(0)
        coms = np.array(ndimage.center_of_mass(deep_csf, lab, range(1, n + 1)))[:, ::-1]
        near = np.linalg.norm((coms - cidx)[:, :2] * np.array([sx, sy]), axis=1) < 40
        keep = 1 + np.flatnonzero((sizes * sx * sy * sz > 150) & near)
        vent = np.isin(lab, keep)
        vent = ndimage.binary_dilation(vent, st, iterations=2) & csf
        code[vent] = VENT
    idx = np.argwhere(cav)
    centre = idx[:, ::-1].mean(0)                       # (x, y, z) index
    # posterior fossa: posterior and below a tentorial line through the cavity
    zz, yy, _ = np.indices(hu.shape)
    z_rel = (zz - centre[2]) * sz
    y_rel = (yy - centre[1]) * sy
    z_lo = (idx[:, 0].min() - centre[2]) * sz
    tent = z_lo + 0.40 * ((idx[:, 0].max() - idx[:, 0].min()) * sz) - 0.2 * np.maximum(y_rel - 10.0, 0)
    infra = cav & (y_rel > 0.0) & (z_rel < tent)
    return code, depth, infra, centre


@dataclass
class RealHead:
    """One variant of the real head (affine + smooth warp + intensity jitter)."""

    atlas: Atlas
    lin: np.ndarray             # head frame -> atlas frame (3x3): flip, rotation, inverse scale
    waves: np.ndarray           # (k, 3) wave vectors of the smooth warp (1/mm)
    phases: np.ndarray          # (k,)
    amps: np.ndarray            # (k, 3) displacement amplitudes (mm)
    jitter: np.ndarray          # HU offset per tissue code
    gain: float                 # grey/white contrast gain
    bone_gain: float
    flip: bool
    source = "real"

    @classmethod
    def draw(cls, rng: np.random.Generator, atlas: Atlas | None = None) -> "RealHead":
        from .geometry import rotation

        atlas = atlas or load_atlas()
        flip = bool(rng.random() < 0.5)
        f = np.diag([-1.0 if flip else 1.0, 1.0, 1.0])
        scale = rng.uniform(0.92, 1.08, 3)
        rot = rotation(rng.normal(0, 3.0), rng.normal(0, 3.0), rng.normal(0, 2.0))
        lin = rot @ f @ np.diag(1.0 / scale)
        k = 3
        d = rng.standard_normal((k, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        waves = d * (2 * np.pi / rng.uniform(70, 140, k))[:, None]
        jitter = np.zeros(8, np.float32)
        jitter[[GM, WM]] = rng.normal(0, 2.0)          # global parenchyma shift
        jitter[GM] += rng.normal(0, 1.0)
        jitter[[CSF, VENT]] = rng.normal(0, 2.0)
        jitter[SOFT] = rng.normal(0, 4.0)
        return cls(atlas=atlas, lin=lin, waves=waves, phases=rng.uniform(0, 2 * np.pi, k), amps=rng.normal(0, 1.8, (k, 3)),
                   jitter=jitter, gain=float(rng.uniform(0.9, 1.15)), bone_gain=float(rng.uniform(0.9, 1.1)), flip=flip)

    # ------------------------------------------------------------------ mapping
    def _index(self, x, y, z):
        m = self.lin.tolist()
        ax = m[0][0] * x + m[0][1] * y + m[0][2] * z
        ay = m[1][0] * x + m[1][1] * y + m[1][2] * z
        az = m[2][0] * x + m[2][1] * y + m[2][2] * z
        for (kx, ky, kz), ph, (dx, dy, dz) in zip(self.waves.tolist(), self.phases.tolist(), self.amps.tolist()):
            s = np.sin(kx * x + ky * y + kz * z + ph)
            ax = ax + dx * s
            ay = ay + dy * s
            az = az + dz * s
        return self.atlas.to_index(ax, ay, az)

    def _sample(self, arr, idx, order, cval):
        return ndimage.map_coordinates(arr, idx, order=order, mode="constant", cval=cval, prefilter=False)

    # ------------------------------------------------------------------ head interface
    def render(self, x, y, z):
        idx = self._index(x, y, z)
        hu = self._sample(self.atlas.hu, idx, 1, -1000.0)
        code = self._sample(self.atlas.code, idx, 0, AIR)
        par = (code == GM) | (code == WM)
        mean = 30.0
        hu = np.where(par, mean + (hu - mean) * self.gain, hu)
        hu = np.where(code == BONE, hu * self.bone_gain, hu)
        hu += self.jitter[code]
        return hu.astype(np.float32), code

    def cavity_depth(self, x, y, z):
        return self._sample(self.atlas.depth, self._index(x, y, z), 1, 100.0)

    def ventricles(self, x, y, z):
        return self._sample(self.atlas.code, self._index(x, y, z), 0, AIR) == VENT

    def infra(self, x, y, z):
        return self._sample(self.atlas.infra.view(np.uint8), self._index(x, y, z), 0, 0).astype(bool)

    def compartment(self, name: str, x, y, z):
        idx = self._index(x, y, z)
        depth = self._sample(self.atlas.depth, idx, 1, 100.0)
        code = self._sample(self.atlas.code, idx, 0, AIR)
        inf = self._sample(self.atlas.infra.view(np.uint8), idx, 0, 0).astype(bool)
        base = (depth < -0.5) & (code != VENT) & (code != BONE)
        # the midline in the head frame: the atlas centre, mirrored with the flip
        if name == "supra_left":
            return base & ~inf & (x > 1.0)
        if name == "supra_right":
            return base & ~inf & (x < -1.0)
        if name == "infra":
            return base & inf
        raise ValueError(f"unknown compartment {name!r}")

    def _to_head(self, p_atlas: np.ndarray) -> np.ndarray:
        """Approximate inverse map (ignores the small warp) for choosing sites."""
        return np.linalg.solve(self.lin, p_atlas)

    def site(self, location: str, rng: np.random.Generator, radius_mm: float = 10.0, near_ventricle: bool = False):
        side = 1.0 if rng.random() < 0.5 else -1.0
        comp = "supra_left" if side > 0 else "supra_right"
        vc = self._to_head(self.atlas.vent_centre)
        if location == "deep":
            u = rng.random()
            if near_ventricle:   # bleeds that rupture into the ventricles: mostly thalamic / caudate
                u = 0.6 + 0.4 * u if u > 0.15 else u
            if u < 0.6:
                off = np.array([side * rng.uniform(18, 26), rng.uniform(-8, 6), rng.uniform(-14, -4)])
            elif u < 0.95:
                off = np.array([side * rng.uniform(7, 13), rng.uniform(10, 22), rng.uniform(-12, -3)])
            else:
                off = np.array([side * rng.uniform(10, 14), rng.uniform(-16, -6), rng.uniform(-4, 4)])
            off[0] = side * max(abs(off[0]), 0.8 * radius_mm + 3.0)
            return self._nearest_ok(vc * np.array([0, 1, 1]) + off, comp, rng, min_depth=12.0), comp
        if location == "lobar":
            return self._random_ok(rng, comp, lambda p: (p[0] * side > max(12.0, 0.8 * radius_mm + 4)), (10.0, 28.0)), comp
        if location == "cerebellar":
            return self._random_ok(rng, "infra", lambda p: (abs(p[0]) > 10), (8.0, 30.0)), "infra"
        if location == "brainstem":
            return self._random_ok(rng, "infra", lambda p: (abs(p[0]) < 5), (15.0, 60.0), anterior=True), "infra"
        raise ValueError(f"unknown location {location!r}")

    def _ok(self, p: np.ndarray, comp: str, depth_range: tuple[float, float]) -> bool:
        x, y, z = (np.array([v], np.float32) for v in p)
        if not self.compartment(comp, x, y, z)[0]:
            return False
        d = -float(self.cavity_depth(x, y, z)[0])
        code = int(self._sample(self.atlas.code, self._index(x, y, z), 0, AIR)[0])
        return depth_range[0] <= d <= depth_range[1] and code in (GM, WM)

    def _nearest_ok(self, p0: np.ndarray, comp: str, rng: np.random.Generator, min_depth: float) -> np.ndarray:
        for r in np.linspace(0, 12, 25):
            p = p0 + rng.normal(0, 1, 3) * r
            if self._ok(p, comp, (min_depth, 200.0)):
                return p
        return p0

    def _random_ok(self, rng, comp, pred, depth_range, anterior: bool = False) -> np.ndarray:
        pts = _candidates(self.atlas, comp if comp == "infra" else "supra")
        y_mid = float(np.median(pts[:: max(1, len(pts) // 500), 1]))     # atlas frame ~ head frame in y
        for _ in range(400):
            q = pts[rng.integers(len(pts))]
            p = self._to_head(q)
            if not pred(p):
                continue
            if anterior and q[1] > y_mid:
                continue
            if self._ok(p, comp, depth_range):
                return p
        return self._to_head(pts[len(pts) // 2])

    def z_range(self) -> tuple[float, float]:
        a = self.atlas
        nz = a.hu.shape[0]
        z0 = (0 - a.centre_idx[2]) * a.spacing[2]
        z1 = (nz - 1 - a.centre_idx[2]) * a.spacing[2]
        s = np.abs(np.linalg.inv(self.lin)[2, 2])
        return float(min(z0, z1) * s + 6), float(max(z0, z1) * s - 4)

    def extent(self) -> np.ndarray:
        s = np.abs(np.diag(np.linalg.inv(self.lin)))
        return self.atlas.head_ext * s[:2] + 6.0


def _candidates(atlas: Atlas, key: str) -> np.ndarray:
    """Parenchyma voxel positions (atlas frame, mm) above or below the tentorium; cached."""
    if atlas._cand is None:
        atlas._cand = {}
    if key not in atlas._cand:
        sel = (atlas.code == GM) | (atlas.code == WM)
        sel &= atlas.infra if key == "infra" else ~atlas.infra
        idx = np.argwhere(sel)[:, ::-1].astype(float)     # (x, y, z)
        atlas._cand[key] = (idx - atlas.centre_idx) * atlas.spacing
    return atlas._cand[key]
