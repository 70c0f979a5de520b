"""Acquisition geometry: where each voxel of a (possibly gantry-tilted) CT series lies in LPS.

A tilted series is written the way scanners write it (GE, see the shared ge-human-head-tilted
data): rows along +x, columns along (0, cos t, -sin t), slice positions stepping along +z by
thickness / cos t, so the stack is sheared.  Ground-truth masks live on an untilted grid that
covers the same head; consumers resample by physical coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Acquisition:
    matrix: int
    pixel_mm: float
    thickness_mm: float
    tilt_deg: float
    origin: tuple[float, float, float]   # ImagePositionPatient of slice 0
    n_slices: int

    @property
    def row_dir(self) -> np.ndarray:
        return np.array([1.0, 0.0, 0.0])

    @property
    def col_dir(self) -> np.ndarray:
        t = np.deg2rad(self.tilt_deg)
        return np.array([0.0, np.cos(t), -np.sin(t)])

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def z_step(self) -> float:
        """Table increment between slices: slabs are ``thickness`` apart along their normal."""
        return self.thickness_mm / np.cos(np.deg2rad(self.tilt_deg))

    def position(self, k: int) -> np.ndarray:
        return np.asarray(self.origin) + np.array([0.0, 0.0, k * self.z_step])

    def render_points(self, step: int, n_sub: int, k0: int = 0, k1: int | None = None):
        """Physical x, y, z (broadcastable, float32) of a render grid for slices k0..k1-1.

        In-plane one render pixel per ``step`` acquisition pixels (centred on their block), and
        ``n_sub`` samples across each slab; shapes broadcast to ((k1-k0)*n_sub, M/step, M/step).
        """
        k1 = self.n_slices if k1 is None else k1
        m = self.matrix // step
        j = (np.arange(m) * step + (step - 1) / 2.0) * self.pixel_mm
        i = j.copy()
        d = ((np.arange(n_sub) + 0.5) / n_sub - 0.5) * self.thickness_mm
        k = np.arange(k0, k1) * self.z_step
        t = np.deg2rad(self.tilt_deg)
        c, s = np.cos(t), np.sin(t)
        kk = (k[:, None] + c * d[None, :]).reshape(-1)          # (K*Q,)
        dd = np.tile(d, k1 - k0)                           # (K*Q,)
        x0, y0, z0 = self.origin
        x = (x0 + j)[None, None, :]
        y = y0 + c * i[None, :, None] + s * dd[:, None, None]
        z = z0 + kk[:, None, None] - s * i[None, :, None]
        return x.astype(np.float32), y.astype(np.float32), z.astype(np.float32)


@dataclass(frozen=True)
class MaskGrid:
    """An untilted LPS grid (identity direction) for ground-truth masks."""

    shape: tuple[int, int, int]            # (z, y, x)
    spacing: tuple[float, float, float]    # (x, y, z) mm, SimpleITK order
    origin: tuple[float, float, float]     # (x, y, z) of voxel (0, 0, 0)

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        nz, ny, nx = self.shape
        sx, sy, sz = self.spacing
        ox, oy, oz = self.origin
        return ox + sx * np.arange(nx), oy + sy * np.arange(ny), oz + sz * np.arange(nz)


def mask_grid_for(acq: Acquisition, z_range: tuple[float, float]) -> MaskGrid:
    """The untilted grid of an acquisition: the series grid itself when untilted."""
    if acq.tilt_deg == 0:
        return MaskGrid((acq.n_slices, acq.matrix, acq.matrix),
                        (acq.pixel_mm, acq.pixel_mm, acq.thickness_mm), tuple(float(v) for v in acq.origin))
    z0, z1 = z_range
    nz = int(np.ceil((z1 - z0) / acq.thickness_mm)) + 1
    return MaskGrid((nz, acq.matrix, acq.matrix), (acq.pixel_mm, acq.pixel_mm, acq.thickness_mm),
                    (float(acq.origin[0]), float(acq.origin[1]), float(z0)))


def rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Head pose: yaw about z, pitch about x (chin down positive), roll about y."""
    a, b, g = np.deg2rad([yaw_deg, pitch_deg, roll_deg])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(g), 0, np.sin(g)], [0, 1, 0], [-np.sin(g), 0, np.cos(g)]])
    return rz @ rx @ ry


@dataclass(frozen=True)
class Pose:
    """Rigid map head frame -> patient (LPS): p = R @ h + t."""

    rot: np.ndarray
    shift: np.ndarray

    def to_head(self, x, y, z):
        """Head-frame coordinates of physical points (broadcast inputs -> full float32 arrays)."""
        r = self.rot.T.tolist()      # python floats: keep float32 arrays float32
        sx, sy, sz = self.shift.tolist()
        dx, dy, dz = x - sx, y - sy, z - sz
        hx = (r[0][0] * dx + r[0][1] * dy + r[0][2] * dz).astype(np.float32)
        hy = (r[1][0] * dx + r[1][1] * dy + r[1][2] * dz).astype(np.float32)
        hz = (r[2][0] * dx + r[2][1] * dy + r[2][2] * dz).astype(np.float32)
        return hx, hy, hz

    def to_patient(self, h: np.ndarray) -> np.ndarray:
        return h @ self.rot.T + self.shift
