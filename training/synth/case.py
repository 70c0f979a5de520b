"""One synthetic patient: a head, a hematoma with its markers, growth, two acquisitions.

``generate_case(seed, options)`` is the in-memory entry point used by tests and trainers; it
draws every random choice from one Generator in a fixed order, so a case depends only on its
seed and options (not on the cohort size or worker count).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import numpy as np

from . import growth
from .physics import Appearance
from .anatomy import PhantomHead
from .geometry import Acquisition, MaskGrid, Pose, mask_grid_for, rotation
from .fields import WaveField
from .lesion import Blob, Hematoma, add_small_foci, draw_hematoma, fit_volume, measure_ml
from .markers import build_density, sample_markers
from .options import MARKERS, SynthOptions
from .render import Scene, render_mask, render_series

LOCATION_CAP_ML = {"brainstem": 15.0, "cerebellar": 50.0}


@dataclass
class SynthSeries:
    """One CT series in memory: stored HU on the acquisition grid + ground truth on the untilted grid."""

    hu: np.ndarray                 # float32 (z, y, x), what the DICOM pixel data holds after rescale
    acq: Acquisition
    mask: np.ndarray               # uint8 (z, y, x) on mask_grid: 1 hematoma, 2 intraventricular blood
    mask_grid: MaskGrid
    volume_ml: float               # ground-truth hematoma volume (fine-grid measure of the shape)
    acquired: datetime
    description: str

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(x, y, z) mm; z is the distance between slab centres along the slice normal."""
        return (self.acq.pixel_mm, self.acq.pixel_mm, self.acq.thickness_mm)

    @property
    def origin(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.acq.origin)

    @property
    def affine(self) -> np.ndarray:
        """4x4 map from voxel index (x, y, z) to LPS mm; sheared when the gantry was tilted."""
        a = np.eye(4)
        a[:3, 0] = self.acq.row_dir * self.acq.pixel_mm
        a[:3, 1] = self.acq.col_dir * self.acq.pixel_mm
        a[:3, 2] = np.array([0.0, 0.0, self.acq.z_step])
        a[:3, 3] = self.acq.origin
        return a

    @property
    def direction(self) -> np.ndarray:
        """Row, column and slab-normal direction cosines (columns)."""
        return np.stack([self.acq.row_dir, self.acq.col_dir, self.acq.normal], axis=1)

    def mask_image(self):
        """The ground-truth mask as a SimpleITK image with full physical geometry (LPS)."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(self.mask)
        img.SetSpacing(self.mask_grid.spacing)
        img.SetOrigin(self.mask_grid.origin)
        return img

    def mask_on_hu_grid(self) -> np.ndarray:
        """The label volume resampled (nearest) onto ``hu``'s own grid, tilted or not, so in-memory
        trainers get image and labels voxel for voxel."""
        if self.acq.tilt_deg == 0 and self.mask.shape == self.hu.shape:
            return self.mask
        from scipy import ndimage

        nz, ny, nx = self.hu.shape
        k, i, j = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
        a = self.affine
        pts = [a[r, 0] * j + a[r, 1] * i + a[r, 2] * k + a[r, 3] for r in range(3)]
        sx, sy, sz = self.mask_grid.spacing
        ox, oy, oz = self.mask_grid.origin
        coords = np.stack([(pts[2] - oz) / sz, (pts[1] - oy) / sy, (pts[0] - ox) / sx]).astype(np.float32)
        return ndimage.map_coordinates(self.mask, coords, order=0, mode="constant", cval=0).astype(np.uint8)

    def hu_image(self):
        """The HU volume as a SimpleITK image (untilted series only: ITK has no shear)."""
        import SimpleITK as sitk

        if self.acq.tilt_deg:
            raise ValueError("tilted series are sheared; use .affine or resample the DICOM with pipeline.volume")
        img = sitk.GetImageFromArray(self.hu)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        return img


@dataclass
class SynthCase:
    case_id: str
    patient_id: str
    seed: int
    head_source: str
    location: str
    ivh: bool
    expansion: bool                # by the label rule on the measured volumes
    markers: dict[str, bool]
    interval_h: float
    baseline: SynthSeries
    followup: SynthSeries | None
    baseline_volume_ml: float
    followup_volume_ml: float
    patient_sex: str = "O"
    patient_age: int = 70
    extra: dict = field(default_factory=dict)

    @property
    def growth_ml(self) -> float:
        return self.followup_volume_ml - self.baseline_volume_ml

    @property
    def growth_pct(self) -> float:
        return 100.0 * self.growth_ml / self.baseline_volume_ml

    @property
    def marker_names(self) -> list[str]:
        return [m for m in MARKERS if self.markers[m]]


def _rng(seed_or_rng) -> tuple[np.random.Generator, int]:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng, -1
    return np.random.default_rng(int(seed_or_rng)), int(seed_or_rng)


def case_seed(cohort_seed: int, index: int) -> int:
    """Independent per-case seed: case i is the same whatever the cohort size or worker count."""
    return int(np.random.SeedSequence([int(cohort_seed), int(index)]).generate_state(1, np.uint64)[0] >> 1)


def _acquisition(rng: np.random.Generator, opts: SynthOptions, head, pose: Pose, thickness: float,
                 tilt: float, fov: float) -> Acquisition:
    m = opts.matrix
    px = fov / m
    x0 = y0 = -fov / 2 + px / 2
    z_lo, z_hi = head.z_range()
    ex, ey = head.extent()
    corners = np.array([[a, b, c] for a in (-ex, ex) for b in (-ey, ey) for c in (z_lo, z_hi)])
    p = pose.to_patient(corners)
    tan_t = np.tan(np.deg2rad(tilt))
    zk = p[:, 2] + (p[:, 1] - y0) * tan_t
    step = thickness / np.cos(np.deg2rad(tilt))
    n = int(np.ceil((zk.max() - zk.min()) / step)) + 1
    start = zk.min() + rng.uniform(-0.5, 0.5) * step
    return Acquisition(matrix=m, pixel_mm=px, thickness_mm=thickness, tilt_deg=tilt,
                       origin=(float(x0), float(y0), float(start)), n_slices=n)


def _pose(rng: np.random.Generator, tilt_deg: float, real: bool) -> Pose:
    """Head position on the table.  A gantry tilt is used to scan parallel to the orbito-meatal
    line, so the head's axial planes follow the tilted slices (pitch = -tilt) up to a few
    degrees; real heads carry their own (already OM-aligned) frame and vary less, so slices stay
    inside the source's coverage."""
    pitch = -tilt_deg + rng.normal(0, 3.0 if real else 6.0)
    rot = rotation(rng.normal(0, 3.0), pitch, rng.normal(0, 2.5))
    return Pose(rot=rot, shift=np.array([rng.normal(0, 3.0), rng.normal(8.0, 4.0), rng.normal(0, 3.0)]))


def _mask_z_range(head, pose: Pose) -> tuple[float, float]:
    z_lo, z_hi = head.z_range()
    ex, ey = head.extent()
    corners = np.array([[a, b, c] for a in (-ex, ex) for b in (-ey, ey) for c in (z_lo, z_hi)])
    p = pose.to_patient(corners)
    return float(p[:, 2].min()), float(p[:, 2].max())


def generate_case(seed_or_rng, options: SynthOptions | None = None, case_id: str = "case", *,
                  render: bool = True, head=None) -> SynthCase:
    """Draw and render one case.

    ``render=False`` skips imaging and measures shapes on a coarser lattice: labels, markers and
    volumes for statistics in ~20 ms a case (volumes agree with the rendered case to ~2 %).
    """
    opts = options or SynthOptions()
    rng, seed = _rng(seed_or_rng)
    # independent streams: labels do not depend on geometry (rejection loops) or on rendering
    rl, rh, rs, rd, ra, ri0, ri1 = rng.spawn(7)
    # --- who and what (labels stream)
    locs = list(opts.locations)
    w = np.array([opts.locations[k] for k in locs], float)
    location = str(rl.choice(locs, p=w / w.sum()))
    ivh = bool(rl.random() < opts.ivh_probability.get(location, 0.0))
    intended = bool(rl.random() < opts.prevalence)
    markers = sample_markers(rl, intended, opts.marker_rates)
    v0_target = growth.baseline_volume(rl, opts, LOCATION_CAP_ML.get(location))
    interval = float(rl.triangular(opts.interval_h[0], min(max(24.0, opts.interval_h[0]), opts.interval_h[1]), opts.interval_h[1]))
    growth_u = rl.random()
    if head is None:
        head = _draw_head(rh, opts)
    centre, comp = head.site(location, rs, float(np.cbrt(3 * v0_target * 1000 / (4 * np.pi))), near_ventricle=ivh)
    # --- baseline clot (shape stream)
    island_separate = markers["island"] and markers["satellite"]
    buds = int(rs.integers(4, 7)) if markers["island"] and not island_separate else 0
    # statistics-only runs use a coarser shape lattice (same draws, volumes within ~1-2 %)
    hem = draw_hematoma(rs, centre, comp, location, markers["irregular"], buds, 32 if render else 16)
    fit_volume(hem, head, v0_target)
    if markers["satellite"]:
        add_small_foci(rs, hem, head, int(rs.integers(1, 3)), (2.0, 4.5), (3.0, 9.0))
    if island_separate:
        add_small_foci(rs, hem, head, int(rs.integers(3, 5)), (1.5, 3.5), (1.0, 6.0))
    v0 = fit_volume(hem, head, v0_target)
    # --- follow-up clot
    v1_target = growth.followup_target(growth_u, v0, intended, opts)
    hem1 = _grow(rs, hem, intended)
    v1 = fit_volume(hem1, head, v1_target)
    if not intended:   # a grown shape must not cross the threshold by fitting error
        thr = min(opts.growth_abs_ml, opts.growth_rel * v0)
        while v1 - v0 > 0.95 * thr and hem1.scale > 0.5 * hem.scale:
            hem1.scale *= 0.99
            v1 = measure_ml(hem1, head)
    expansion = growth.is_expansion(v0, v1, opts.growth_abs_ml, opts.growth_rel)
    # --- densities, edema, intraventricular blood (density stream)
    base_hu = float(np.clip(rd.normal(65.0, 7.0), 40.0, 90.0))
    min_ratio = float(hem.blobs[0].axes.min() / hem.radius0)
    density0 = build_density(rd, markers, base_hu, min_ratio)
    density1 = build_density(rd, {m: False for m in MARKERS}, min(base_hu + rd.uniform(0, 8), 90.0), min_ratio)
    edema0 = rd.uniform(0.5, 2.5)
    edema1 = edema0 + rd.uniform(1.5, 4.0) * np.sqrt(interval / 24.0)
    edema_hu = rd.uniform(24.0, 30.0)
    ivh_level = rd.uniform(-10.0, 20.0)
    ivh_hu = rd.uniform(50.0, 72.0)
    scene0 = Scene(head, hem, density0, v0, edema0, edema_hu, rd.uniform(0.5, 0.8), ivh, ivh_level, ivh_hu)
    scene1 = Scene(head, hem1, density1, v1, edema1, edema_hu, 1.0, ivh,
                   ivh_level - (rd.uniform(0, 15) if intended else 0.0), ivh_hu)
    # --- wider appearance model (its own stream, drawn only when asked for: defaults stay 1.0's bytes)
    looks: list[Appearance | None] = [None, None]
    acq_opts = opts
    if not opts.default_appearance:
        rapp = rng.spawn(1)[0]
        if opts.matrix_choices:
            acq_opts = opts.with_(matrix=int(rapp.choice(list(opts.matrix_choices))))
        looks = [Appearance.draw(rapp, opts) for _ in range(2)]
        scene0 = replace(scene0, edge_mm=looks[0].lesion_edge_mm)
        scene1 = replace(scene1, edge_mm=looks[1].lesion_edge_mm)
    # --- acquisitions
    thickness = float(ra.choice(opts.thickness_mm))
    tilt0 = float(ra.uniform(*opts.tilt_deg)) if ra.random() < opts.tilt_fraction else 0.0
    tilt1 = tilt0 if ra.random() < 0.7 else (float(ra.uniform(*opts.tilt_deg)) if ra.random() < opts.tilt_fraction else 0.0)
    fov = float(ra.uniform(*opts.pixel_mm)) * 512
    fov = max(fov, 2 * float(head.extent()[1]) + 8.0)
    pose0, pose1 = _pose(ra, tilt0, head.source == "real"), _pose(ra, tilt1, head.source == "real")
    acq0 = _acquisition(ra, acq_opts, head, pose0, thickness, tilt0, fov)
    acq1 = _acquisition(ra, acq_opts, head, pose1, thickness, tilt1, fov)
    noise = [float(ra.uniform(*opts.noise_hu)) for _ in range(2)]
    streak = [float(ra.uniform(8, 25)) if ra.random() < opts.streak_probability else 0.0 for _ in range(2)]
    if head.source == "real":      # the real head carries its own skull-base artefacts
        streak = [0.0, 0.0]
    t0 = datetime(2016, 1, 1) + timedelta(days=int(ra.integers(0, 3000)), minutes=int(ra.integers(0, 1440)))
    t1 = t0 + timedelta(hours=interval)
    sex = str(ra.choice(["M", "F"]))
    age = int(np.clip(ra.normal(68, 12), 30, 95))

    def series(scene, acq, pose, nz, st, t, desc, r, look=None):
        grid = mask_grid_for(acq, _mask_z_range(head, pose))
        n_sub = 2 * int(round(acq.thickness_mm / 2.0)) + 1      # odd: the 50 % rule is unbiased
        hu = render_series(scene, acq, pose, nz, st, r, look=look) if render else np.zeros((0, 0, 0), np.float32)
        mask = render_mask(scene, grid, pose, n_sub, opts.mask_fraction) if render else np.zeros((0, 0, 0), np.uint8)
        return SynthSeries(hu, acq, mask, grid, scene.volume_ml, t, desc)

    desc = f"HEAD NCCT {thickness:g}mm"
    base = series(scene0, acq0, pose0, noise[0], streak[0], t0, desc, ri0, looks[0])
    fu = series(scene1, acq1, pose1, noise[1], streak[1], t1, desc, ri1, looks[1]) if opts.write_followup else None
    extra_look = {} if looks[0] is None else {"appearance": [lk.to_dict() for lk in looks]}
    return SynthCase(case_id=case_id, patient_id=f"SYN{seed & 0xFFFFFFFF:010d}" if seed >= 0 else f"SYN-{case_id}",
                     seed=seed, head_source=head.source, location=location, ivh=ivh, expansion=expansion,
                     markers=markers, interval_h=interval, baseline=base, followup=fu,
                     baseline_volume_ml=v0, followup_volume_ml=v1, patient_sex=sex, patient_age=age,
                     extra={"intended_expansion": intended, "base_hu": base_hu, "edema_hu": edema_hu,
                            "noise_hu": noise, "streak_hu": streak, "centre_head_mm": [float(v) for v in centre],
                            **extra_look})


def _draw_head(rng: np.random.Generator, opts: SynthOptions):
    use_real = opts.head_source == "real" or (opts.head_source == "mixed" and rng.random() < opts.real_fraction)
    if use_real:
        from .realhead import RealHead

        return RealHead.draw(rng)
    return PhantomHead.draw(rng)


def _grow(rng: np.random.Generator, hem: Hematoma, expands: bool) -> Hematoma:
    """The follow-up shape: expanders add lobes where the clot is active (islands coalesce,
    satellites enlarge); others keep their shape."""
    out = hem.copy()
    if expands:
        for _ in range(int(rng.integers(1, 3))):
            d = rng.standard_normal(3)
            d /= np.linalg.norm(d)
            r = hem.radius0 * rng.uniform(0.45, 0.7)
            out.blobs.append(Blob(d * hem.radius0 * rng.uniform(0.7, 1.0), r * rng.uniform(0.7, 1.0, 3),
                                  np.eye(3), 0.1, WaveField(rng, 1.0, 4)))
        out.extras = [Blob(b.centre, b.axes * 1.4, b.rot, b.amp, b.waves) for b in hem.extras]
    return out
