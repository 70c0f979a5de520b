"""Parametric phantom heads: scalp, skull (tables + diploe), skull base, grey/white matter with
sulci, deep grey nuclei, ventricles, falx, posterior fossa (cerebellum, brainstem, 4th ventricle).

Head frame (mm, LPS-aligned): x to the patient's left, y posterior, z superior; origin near the
centre of the cranial cavity at the level of the basal ganglia.  Every structure is an implicit
function of the point, so any sampling grid (tilted, sub-slab, full or half resolution) can be
rendered without resampling.  Each head draws its own sizes, atrophy, HU values and incidental
findings (calcifications, leukoaraiosis) from the rng.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .fields import WaveField, ellipsoid, radial_depth, sigmoid

# tissue codes returned by render(); lesion and physics stages key on them
AIR, SOFT, BONE, CSF, GM, WM, VENT, CALC = 0, 1, 2, 3, 4, 5, 6, 7
PARENCHYMA = (GM, WM)


@dataclass
class Tissue:
    gm: float
    wm: float
    deep_gm: float
    csf: float
    cortical: float
    diploe: float
    soft: float
    fat: float
    falx: float
    sinus: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "Tissue":
        wm = rng.uniform(21.0, 29.0)
        gm = rng.uniform(max(37.0, wm + 10.0), 45.0)
        return cls(gm=gm, wm=wm, deep_gm=gm - rng.uniform(0, 4), csf=rng.uniform(2.0, 12.0),
                   cortical=rng.normal(1800, 120), diploe=rng.uniform(700, 1100), soft=rng.uniform(35, 55),
                   fat=rng.uniform(-100, -50), falx=rng.uniform(45, 95), sinus=rng.uniform(42, 55))


@dataclass
class PhantomHead:
    """One synthetic head; all random choices are made in ``draw`` so rendering is pure."""

    source = "phantom"
    size: tuple[float, float, float]   # cavity semi-axes (x, y, z)
    skull_mm: float
    scalp_mm: float
    atrophy: float                 # 0 (young) .. 1 (old): wider sulci, larger ventricles
    tissue: Tissue
    sulci: WaveField
    folia: WaveField
    fat_field: WaveField
    pineal_calc: bool
    plexus_calc: bool
    leuko: float                   # periventricular WM hypodensity (HU drop), 0 = none
    asym: np.ndarray = field(default_factory=lambda: np.zeros(3))

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "PhantomHead":
        s = rng.uniform(0.93, 1.05)
        size = tuple((np.array([66.0, 84.0, 70.0]) * s * rng.uniform(0.96, 1.04, 3)).tolist())
        atrophy = float(rng.beta(2.0, 2.5))
        return cls(size=size, skull_mm=rng.uniform(5.0, 8.0), scalp_mm=rng.uniform(4.0, 7.5), atrophy=atrophy,
                   tissue=Tissue.draw(rng), sulci=WaveField(rng, rng.uniform(18, 24), 10),
                   folia=WaveField(rng, 7.0, 6), fat_field=WaveField(rng, 22.0, 12),
                   pineal_calc=bool(rng.random() < 0.45), plexus_calc=bool(rng.random() < 0.5),
                   leuko=float(rng.uniform(3, 8)) if rng.random() < 0.35 * (0.5 + atrophy) else 0.0,
                   asym=rng.normal(0, 1.0, 3))

    # ---------------------------------------------------------------- geometry helpers
    def _floor(self, x, y):
        """Cranial floor height: anterior fossa (orbital roofs domed up laterally, cribriform
        plate dipping in the midline) stepping down at the sphenoid ridge (curving backwards
        laterally) to the middle fossa."""
        ridge = -28.0 + 0.006 * x * x
        anterior = -21.0 + 5.0 * np.exp(-((np.abs(x) - 26.0) / 13.0) ** 2) - 6.0 * np.exp(-(x / 7.0) ** 2)
        return anterior - (anterior + 42.0) * sigmoid((y - ridge) / 4.0)

    def _tent(self, x, y):
        return -18.0 - 0.24 * np.maximum(y - 5.0, 0) - 0.004 * x * x

    def cavity_depth(self, x, y, z):
        """Signed depth to the inner table (mm, < 0 inside the cranial cavity)."""
        d_main = np.maximum(radial_depth(x, y, z, (0, 0, 0), self.size), self._floor(x, y) - z)
        pf = (0.0, 36.0, -38.0)
        d_pf = radial_depth(x, y, z, pf, (self.size[0] * 0.76, self.size[1] * 0.48, 28.0))
        d_fm = np.maximum(np.sqrt(x * x + (y - 18.0) ** 2) - 15.0, np.abs(z + 75.0) - 20.0)
        return np.minimum(np.minimum(d_main, d_pf), d_fm)

    def infra(self, x, y, z):
        return (y > -5.0) & (z < self._tent(x, y))

    def ventricles(self, x, y, z):
        v = 0.75 + 0.9 * self.atrophy
        out = np.zeros(np.shape(x), bool)
        for sx in (-1, 1):
            out |= ellipsoid(x, y, z, (sx * (3.0 + 2.5 * v), -4.0, 17.0), (3.8 * v, 26.0, 5.0 * v)) < 1
            out |= ellipsoid(x, y, z, (sx * (4.0 + 2.0 * v), -22.0, 11.0), (3.5 * v, 9.0, 7.0)) < 1
            out |= ellipsoid(x, y, z, (sx * 15.0, 24.0, 7.0), (4.5 * v, 11.0, 6.0 * v)) < 1
            out |= ellipsoid(x, y, z, (sx * 27.0, 6.0, -17.0), (1.8 * v, 10.0, 2.5 * v)) < 1
        out |= ellipsoid(x, y, z, (0.0, 8.0, 2.0), (1.2 * v, 11.0, 7.0)) < 1
        out |= ellipsoid(x, y, z, (0.0, 31.0, -38.0), (5.5, 3.0 + v, 6.0)) < 1
        return out

    def _brainstem(self, x, y, z):
        return ((ellipsoid(x, y, z, (0, 12, -14), (11, 10, 9)) < 1) | (ellipsoid(x, y, z, (0, 16, -36), (14, 12, 13)) < 1)
                | (ellipsoid(x, y, z, (0, 20, -58), (9, 9, 15)) < 1))

    def compartment(self, name: str, x, y, z):
        """Where a hematoma of a compartment may extend: inside the dura, off the ventricles,
        on its own side of the falx (supratentorial) or below the tentorium."""
        cav = self.cavity_depth(x, y, z) < -0.5
        inf = self.infra(x, y, z)
        base = cav & ~self.ventricles(x, y, z)
        if name == "supra_left":
            return base & ~inf & (x > 1.0)
        if name == "supra_right":
            return base & ~inf & (x < -1.0)
        if name == "infra":
            return base & (inf | self._brainstem(x, y, z))
        raise ValueError(f"unknown compartment {name!r}")

    def site(self, location: str, rng: np.random.Generator, radius_mm: float = 10.0,
             near_ventricle: bool = False) -> tuple[np.ndarray, str]:
        """A hematoma centre (head frame) and its compartment for a location class; lobar clots
        are kept about one radius off the falx."""
        side = 1.0 if rng.random() < 0.5 else -1.0
        comp = "supra_left" if side > 0 else "supra_right"
        if location == "deep":
            u = rng.random()
            if near_ventricle:   # bleeds that rupture into the ventricles: mostly thalamic / caudate
                u = 0.6 + 0.4 * u if u > 0.15 else u
            if u < 0.6:     # putamen / external capsule
                c = np.array([side * rng.uniform(18, 26), rng.uniform(-8, 6), rng.uniform(-2, 10)])
            elif u < 0.95:  # thalamus
                c = np.array([side * rng.uniform(7, 13), rng.uniform(10, 22), rng.uniform(0, 10)])
            else:           # caudate
                c = np.array([side * rng.uniform(10, 14), rng.uniform(-16, -6), rng.uniform(8, 16)])
            c[0] = side * max(abs(c[0]), 0.8 * radius_mm + 3.0)     # large deep bleeds extend laterally
            return c, comp
        if location == "lobar":
            for _ in range(200):
                d = rng.standard_normal(3)
                d[2] = abs(d[2]) * 0.8 + 0.1
                d[0] = side * abs(d[0])
                d /= np.linalg.norm(d)
                r = d * np.array(self.size) * rng.uniform(0.55, 0.8)
                x, y, z = (np.array([v]) for v in r)
                if abs(r[0]) > max(12.0, 0.8 * radius_mm + 4) and self.compartment(comp, x, y, z)[0] and self.cavity_depth(x, y, z)[0] < -10:
                    return r, comp
            return np.array([side * 40.0, -20.0, 25.0]), comp
        if location == "cerebellar":
            return np.array([side * rng.uniform(12, 28), rng.uniform(38, 52), rng.uniform(-48, -36)]), "infra"
        if location == "brainstem":
            return np.array([rng.normal(0, 2.0), rng.uniform(12, 20), rng.uniform(-42, -28)]), "infra"
        raise ValueError(f"unknown location {location!r}")

    def z_range(self) -> tuple[float, float]:
        """Head-frame z extent worth scanning: foramen magnum to vertex."""
        return -78.0, float(self.size[2] + self.skull_mm + self.scalp_mm + 2.0)

    def extent(self) -> np.ndarray:
        """Half-widths of the head (x, y) including scalp."""
        return np.array(self.size[:2]) + self.skull_mm + self.scalp_mm + 6.0

    # ---------------------------------------------------------------- rendering
    def render(self, x, y, z) -> tuple[np.ndarray, np.ndarray]:
        """HU (float32) and tissue code (uint8) at head-frame points (flat float32 arrays)."""
        pad = self.skull_mm + self.scalp_mm + 8.0
        a = [v + pad for v in self.size]
        near = (ellipsoid(x, y, z, (0, 0, 0), a) < 1) | ((z < -15) & (np.abs(x) < a[0]) & (np.abs(y) < a[1]))
        idx = np.flatnonzero(near)
        hu = np.full(x.size, -1000.0, np.float32)
        code = np.zeros(x.size, np.uint8)
        if idx.size:
            hu[idx], code[idx] = self._render_near(x[idx], y[idx], z[idx])
        return hu, code

    def _render_near(self, x, y, z):
        t = self.tissue
        n = x.size
        hu = np.full(n, -1000.0, np.float32)
        code = np.zeros(n, np.uint8)
        d_cav = self.cavity_depth(x, y, z)
        d_main = radial_depth(x, y, z, (0, 0, 0), self.size)
        # scalp and temporalis over the vault
        temporal = 6.0 * np.exp(-((z + 5.0) / 22.0) ** 2) * (x / self.size[0]) ** 2
        outer = self.skull_mm + self.scalp_mm + temporal
        soft = d_main < outer
        # face and neck below the skull base
        low = np.flatnonzero(z < -15.0)
        xl, yl, zl = x[low], y[low], z[low]
        face = (ellipsoid(xl, yl, zl, (0, -15, -78), (self.size[0] * 0.95, self.size[1] * 1.05, 50)) < 1) & (zl < -18)
        face |= ellipsoid(xl, yl, zl, (0, 22, -95), (50, 48, 45)) < 1
        soft[low] |= face
        hu[soft] = t.soft
        code[soft] = SOFT
        # subcutaneous fat: a layer in the middle of the scalp, fat pads in face and neck
        ext = np.flatnonzero(soft & (d_cav > 0))
        layer = (d_main[ext] - self.skull_mm) / (outer[ext] - self.skull_mm)
        in_layer = (layer > 0.5) & (layer < 0.68)
        fat_thr = np.where(in_layer, -1.2, np.where(d_main[ext] > self.skull_mm, 9.0, 0.7))
        hu[ext[self.fat_field(x[ext], y[ext], z[ext]) > fat_thr]] = t.fat
        # skull: inner table, diploe, outer table; thicker skull base
        thick = self.skull_mm * (1.0 - 0.4 * np.exp(-((z + 10.0) / 20.0) ** 2) * (x / self.size[0]) ** 2)
        thick[low] += 1.5 * ((zl < self._floor(xl, yl) + 2) & (d_cav[low] > 0))
        skull = (d_cav >= 0) & (d_cav < thick)
        table = np.minimum(d_cav, thick - d_cav) < 1.7
        hu[skull] = t.diploe
        hu[skull & table] = t.cortical
        code[skull] = BONE
        # skull-base detail: petrous ridges (dense), sphenoid sinus and mastoids (air), C-spine
        hl, cl = hu[low], code[low]
        for sx in (-1, 1):
            p0, p1 = np.array([sx * 46.0, 28.0, -44.0]), np.array([sx * 13.0, 4.0, -37.0])
            dvec = p1 - p0
            tt = np.clip(((xl - p0[0]) * dvec[0] + (yl - p0[1]) * dvec[1] + (zl - p0[2]) * dvec[2]) / float(dvec @ dvec), 0, 1)
            dist2 = (xl - p0[0] - tt * dvec[0]) ** 2 + (yl - p0[1] - tt * dvec[1]) ** 2 + (zl - p0[2] - tt * dvec[2]) ** 2
            pet = dist2 < 6.5 ** 2
            hl[pet] = t.cortical * 1.15
            cl[pet] = BONE
            mast = np.flatnonzero(ellipsoid(xl, yl, zl, (sx * 49, 30, -54), (8, 10, 9)) < 1)
            mast = mast[self.folia(xl[mast], yl[mast], zl[mast]) > 0.2]
            hl[mast] = -900.0
            cl[mast] = AIR
        for sx in (-1, 1):      # orbits below the thin orbital roof: fat cone, globe, optic nerve
            orb = ellipsoid(xl, yl, zl, (sx * 30, -68, -36), (16, 20, 13)) < 1
            hl[orb] = t.fat
            cl[orb] = SOFT
            glob = ellipsoid(xl, yl, zl, (sx * 32, -76, -35), (12, 12, 12)) < 1
            hl[glob] = 8.0
            nerve = orb & (np.abs(xl - sx * (30 - 0.25 * (yl + 68))) < 2.5) & (np.abs(zl + 36) < 2.5)
            hl[nerve] = t.soft
        sph = ellipsoid(xl, yl, zl, (0, -22, -47), (13, 11, 9)) < 1
        hl[sph] = -950.0
        cl[sph] = AIR
        cspine = ellipsoid(xl, yl, zl, (0, 20, -96), (13, 11, 14)) < 1
        hl[cspine] = t.diploe * 0.8
        cl[cspine] = BONE
        hu[low], code[low] = hl, cl
        # cranial contents
        inside = np.flatnonzero(d_cav < 0)
        if inside.size:
            h, c = self._render_brain(x[inside], y[inside], z[inside], d_cav[inside])
            hu[inside] = h
            code[inside] = c
        return hu, code

    def _render_brain(self, x, y, z, d_cav):
        t = self.tissue
        hu = np.full(x.size, t.csf, np.float32)
        code = np.full(x.size, CSF, np.uint8)
        sas = 1.2 + 2.8 * self.atrophy
        depth = -d_cav - sas                       # depth below the brain surface
        inf = self.infra(x, y, z)
        # tentorial leaf and interhemispheric fissure / falx
        tent_gap = np.abs(z - self._tent(x, y)) < (0.8 + 1.2 * self.atrophy)
        falx_x = float(0.6 * self.asym[0])
        cc_top = np.where(np.abs(y + 2) < 36, 24.0 - 0.004 * (y + 2) ** 2, -60.0)
        fissure = ~inf & (np.abs(x - falx_x) < 1.2 + 2.0 * self.atrophy) & (z > cc_top)
        brain = (depth > 0) & ~fissure & ~(tent_gap & (y > 0))
        # cerebrum: cortex ribbon + sulci, white matter core
        cer = brain & ~inf
        hu[cer] = t.wm
        code[cer] = WM
        band = np.flatnonzero(cer & (depth < 22.0))
        if band.size:
            n = self.sulci(x[band], y[band], z[band])
            dep = depth[band]
            ws = 0.12 + 0.25 * self.atrophy
            d_sul = 13.0 + 5.0 * self.fat_field(y[band], z[band], x[band])     # sulcal depth varies
            sul = (np.abs(n) < ws) & (dep < d_sul)
            gm = ((np.abs(n) < ws + 0.8) & (dep < d_sul + 2.5)) | (dep < 2.8)
            hb = np.where(gm, t.gm, t.wm).astype(np.float32)
            cb = np.where(gm, GM, WM).astype(np.uint8)
            hb[sul] = t.csf
            cb[sul] = CSF
            hu[band] = hb
            code[band] = cb
        # deep grey nuclei
        deep = np.zeros(x.size, bool)
        for sx in (-1, 1):
            deep |= ellipsoid(x, y, z, (sx * 12, -12, 11), (5, 10, 8)) < 1
            deep |= ellipsoid(x, y, z, (sx * 22, -2, 1), (6.5, 15, 10)) < 1
            deep |= ellipsoid(x, y, z, (sx * 10, 16, 4), (8, 13, 8)) < 1
        deep &= cer
        # soft-edged nuclei: partial volume against the surrounding white matter
        box = np.flatnonzero((np.abs(x) < 34) & (y > -28) & (y < 34) & (z > -14) & (z < 24) & (code == WM))
        xb, yb, zb, hb = x[box], y[box], z[box], hu[box]
        for sx in (-1, 1):
            for c, a in (((sx * 12, -12, 11), (5, 10, 8)), ((sx * 22, -2, 1), (6.5, 15, 10)), ((sx * 10, 16, 4), (8, 13, 8))):
                wgt = np.clip((1.25 - ellipsoid(xb, yb, zb, c, a)) / 0.5, 0, 1)
                hb += (t.deep_gm - hb) * wgt
        hu[box] = hb
        code[deep] = GM
        # Sylvian fissures: an oblique CSF cleft from the lateral surface down to the insular cortex
        zs = -3.0 + 0.25 * (y + 10.0)
        band = cer & (y > -32) & (y < 12) & (np.abs(z - zs) < 4.5) & (np.abs(x) > 31)
        ins = band & (np.abs(x) < 35.5)
        cleft = band & ~ins & (np.abs(z - zs) < 1.0 + 1.5 * self.atrophy)
        hu[ins] = t.gm
        code[ins] = GM
        hu[cleft] = t.csf
        code[cleft] = CSF
        # posterior fossa: cerebellar cortex with folia, WM core, brainstem
        pf = brain & inf
        cb_core = np.zeros(x.size, bool)
        for sx in (-1, 1):
            cb_core |= ellipsoid(x, y, z, (sx * 18, 42, -40), (10, 10, 8)) < 1
        hu[pf] = t.gm - 2.0
        code[pf] = GM
        fol = pf & (np.abs(self.folia(x, y, z)) < 0.12 + 0.15 * self.atrophy) & (depth < 12)
        hu[fol] = t.csf
        code[fol] = CSF
        hu[pf & cb_core] = t.wm + 3.0
        code[pf & cb_core] = WM
        bs = self._brainstem(x, y, z) & (depth > -1.0)
        hu[bs] = t.wm + 6.0
        code[bs] = WM
        # ventricles, leukoaraiosis, calcifications
        vent = self.ventricles(x, y, z)
        if self.leuko:
            near = np.zeros(x.size, bool)
            v = 0.75 + 0.9 * self.atrophy
            for sx in (-1, 1):
                near |= ellipsoid(x, y, z, (sx * (3.0 + 2.5 * v), -4.0, 17.0), (3.8 * v + 7, 30.0, 5.0 * v + 7)) < 1
            near &= code == WM
            hu[near] -= self.leuko
        hu[vent] = t.csf
        code[vent] = VENT
        # falx: a thin dense sheet in the fissure
        falx_w = np.clip(1.0 - np.abs(x - falx_x) / 0.9, 0, 1) * fissure    # partial volume of a ~1 mm sheet
        hu += (t.falx - hu) * falx_w
        sss = (np.abs(x - falx_x) < 4.0) & (d_cav > -4.0) & (z > 0) & ~inf
        hu[sss] = t.sinus
        if self.pineal_calc:
            pc = ellipsoid(x, y, z, (0, 22, 2), (2.2, 2.2, 2.2)) < 1
            hu[pc] = 180.0
            code[pc] = CALC
        if self.plexus_calc:
            for sx in (-1, 1):
                pc = ellipsoid(x, y, z, (sx * 15, 26, 7), (2.5, 3.5, 2.5)) < 1
                hu[pc] = 120.0
                code[pc] = CALC
        return hu, code
