"""DICOM CT series → HU volume on a regular, untilted grid in LPS space, and masks back onto the slices.

Geometry comes only from ImagePositionPatient/ImageOrientationPatient (never file names or
InstanceNumber), because those are the only attributes a viewer uses to place a SEG frame. A series
that is sheared (gantry tilt) or unevenly spaced is resampled onto an orthogonal grid whose axes are
the slices' own row, column and normal directions; ``LoadedSeries.mask_to_source`` maps a mask from that
grid back onto every original slice so the SEG lies exactly where the source pixels are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array
from scipy import ndimage

from pipeline.geometry import SeriesGeometry, check_series_geometry, evenly_spaced, normal_positions, rescale
from pipeline.result import CannotAssess

log = logging.getLogger(__name__)

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
AIR_HU = -1024.0


@dataclass(frozen=True, eq=False)   # arrays inside: identity, not element-wise ==
class Volume:
    """HU volume on a regular, untilted grid in LPS physical space.

    ``hu`` is indexed (z, y, x) like ``SimpleITK.GetArrayFromImage``; ``spacing``, ``origin`` and
    ``direction`` are in SimpleITK order ((x, y, z), row-major 3×3 whose columns are the axes).
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError(f"Volume.hu must be 3-D (z, y, x), got shape {self.hu.shape}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"Volume.spacing must be 3 positive values (x, y, z), got {self.spacing}")
        if len(self.origin) != 3:
            raise ValueError(f"Volume.origin must be 3 values, got {self.origin}")
        if len(self.direction) != 9:
            raise ValueError(f"Volume.direction must be 9 values, got {len(self.direction)}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """True voxel volume in mL (mm³ / 1000): mask volume = voxel count × this."""
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def index_to_physical(self, zyx: np.ndarray) -> np.ndarray:
        """(n, 3) continuous (z, y, x) indices → (n, 3) LPS points in mm."""
        ijk = np.asarray(zyx, dtype=float)[:, ::-1] * np.asarray(self.spacing)
        return ijk @ self.direction_matrix.T + np.asarray(self.origin)

    def physical_to_index(self, points: np.ndarray) -> np.ndarray:
        """(n, 3) LPS points in mm → (n, 3) continuous (z, y, x) indices."""
        rel = np.asarray(points, dtype=float) - np.asarray(self.origin)
        ijk = rel @ np.linalg.inv(self.direction_matrix).T / np.asarray(self.spacing)
        return ijk[:, ::-1]

    def with_hu(self, hu: np.ndarray) -> "Volume":
        """Same grid, other voxel values (e.g. a volume with an inserted lesion)."""
        return Volume(np.asarray(hu, dtype=np.float32), self.spacing, self.origin, self.direction)

    def to_sitk(self) -> sitk.Image:
        img = sitk.GetImageFromArray(np.ascontiguousarray(self.hu, dtype=np.float32))
        img.SetSpacing(tuple(float(v) for v in self.spacing))
        img.SetOrigin(tuple(float(v) for v in self.origin))
        img.SetDirection(tuple(float(v) for v in self.direction))
        return img

    @classmethod
    def from_sitk(cls, img: sitk.Image) -> "Volume":
        hu = sitk.GetArrayFromImage(img).astype(np.float32, copy=False)
        return cls(hu, tuple(img.GetSpacing()), tuple(img.GetOrigin()), tuple(img.GetDirection()))


@dataclass(frozen=True, eq=False)
class _Resampling:
    """How the analysis grid relates to the (sheared / uneven) source slices."""

    offsets_px: np.ndarray   # (n_slices, 2) source slice k's first pixel on the grid, (row=y, col=x), float
    levels: np.ndarray       # (n_slices,) source slice k's continuous z index on the grid


@dataclass(frozen=True, eq=False)
class LoadedSeries:
    """One CT series: the analysis volume plus the source slices it came from."""

    volume: Volume
    datasets: list[Dataset]                  # source slices sorted spatially along the slice normal
    tilted: bool = False
    resampled: bool = False
    _resampling: _Resampling | None = field(default=None, repr=False, compare=False)

    @property
    def source_shape(self) -> tuple[int, int, int]:
        return (len(self.datasets), int(self.datasets[0].Rows), int(self.datasets[0].Columns))

    def mask_to_source(self, mask: np.ndarray) -> np.ndarray:
        """Bool mask on the analysis grid → bool (n_slices, rows, cols) on the original slices.

        Each source pixel takes the value of the analysis voxel nearest to its centre; with no
        resampling this is the identity.
        """
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.volume.shape:
            raise ValueError(f"mask shape {mask.shape} is not the volume shape {self.volume.shape}")
        if self._resampling is None:
            return mask.copy()
        n, rows, cols = self.source_shape
        out = np.zeros((n, rows, cols), dtype=bool)
        nz, ny, nx = mask.shape
        for k in range(n):
            z = int(np.rint(self._resampling.levels[k]))
            if not 0 <= z < nz:
                continue
            dy, dx = (int(v) for v in np.rint(self._resampling.offsets_px[k]))
            # source pixel (j, i) ↔ grid pixel (j + dy, i + dx)
            y0, y1 = max(0, -dy), min(rows, ny - dy)
            x0, x1 = max(0, -dx), min(cols, nx - dx)
            if y0 < y1 and x0 < x1:
                out[k, y0:y1, x0:x1] = mask[z, y0 + dy : y1 + dy, x0 + dx : x1 + dx]
        return out

    def source_voxel_volumes_ml(self) -> np.ndarray:
        """Per-slice voxel volume (mL) of the source slices, using the true local slice spacing."""
        pos = normal_positions(self.datasets)
        gaps = np.diff(pos)
        local = np.empty(len(pos))
        local[0], local[-1] = gaps[0], gaps[-1]
        if len(pos) > 2:
            local[1:-1] = (gaps[:-1] + gaps[1:]) / 2
        px = [float(v) for v in self.datasets[0].PixelSpacing]
        return local * px[0] * px[1] / 1000.0


# ---------------------------------------------------------------------------------------------- reading


def load_series(source: Path | str | Sequence[Path | str] | Sequence[Dataset]) -> LoadedSeries:
    """Read one CT series (a folder, files, or datasets) into an analysis volume.

    Raises ``CannotAssess`` with a stable code when the series cannot be analysed safely; the geometry
    checks (rescale included) are ``pipeline.geometry``'s, with its default tolerances (the node's selection
    defaults).
    """
    datasets = read_images(source)
    _check_series(datasets)
    geo = check_series_geometry(datasets)
    try:
        return _build([datasets[i] for i in geo.order], geo)
    except (ValueError, TypeError, OverflowError) as exc:  # a header value that is not a (finite) number
        raise CannotAssess("invalid_geometry", "a slice's position, orientation or spacing is not "
                                               f"a usable number ({type(exc).__name__})") from None


def _read(source: Path | str | Sequence[Path | str] | Sequence[Dataset]) -> list[Dataset]:
    if isinstance(source, (str, Path)):
        root = Path(source)
        if root.is_dir():
            paths = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif root.is_file():
            paths = [root]
        else:
            raise CannotAssess("no_images", f"{root} does not exist")
        return [ds for ds in (_read_file(p) for p in paths) if ds is not None]
    items = list(source)
    if all(isinstance(x, Dataset) for x in items):
        return list(items)  # type: ignore[arg-type]
    return [ds for ds in (_read_file(Path(p)) for p in items) if ds is not None]  # type: ignore[arg-type]


def _read_file(path: Path) -> Dataset | None:
    """Parse one file; anything that is not a DICOM image (DICOMDIR, junk) is skipped."""
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError) as exc:
        log.debug("skipping %s: not readable as DICOM (%s)", path.name, type(exc).__name__)
        return None
    return ds


def _is_image(ds: Dataset) -> bool:
    if str(ds.get("SOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        return False
    return "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds


def read_images(source: Path | str | Sequence[Path | str] | Sequence[Dataset]) -> list[Dataset]:
    """The image datasets of ``source``, skipping non-DICOM files, DICOMDIRs, non-images and scouts.

    No geometry checks: callers that must report on a series that cannot be analysed still get its
    slices (patient and study for the "cannot assess" SR come from them).
    """
    images = [ds for ds in _read(source) if _is_image(ds)]
    # scouts ride along in many series; they are not part of the axial stack
    images = [ds for ds in images if "LOCALIZER" not in [str(v).upper() for v in (ds.get("ImageType") or [])]]
    if not images:
        raise CannotAssess("no_images", "no CT image slices found in the series")
    return images


def _check_series(images: list[Dataset]) -> None:
    modalities = {str(ds.get("Modality", "")) for ds in images}
    if modalities - {"CT"}:
        raise CannotAssess("not_ct", f"modality {sorted(modalities)} is not CT")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in images}
    if len(series) > 1:
        raise CannotAssess("mixed_series", f"{len(series)} series mixed in one input")


# ---------------------------------------------------------------------------------------------- pixels


def _hu(ds: Dataset) -> np.ndarray:
    try:
        arr = pixel_array(ds)      # unlike ds.pixel_array, keeps no decoded copy on the dataset
    except Exception as exc:  # decoder missing or corrupt pixel data: same outcome for the user
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise CannotAssess("undecodable_pixels", f"pixel data cannot be decoded ({ts}): {type(exc).__name__}") from exc
    if arr.ndim != 2:
        raise CannotAssess("unsupported_pixels", f"expected a 2-D grayscale slice, got shape {arr.shape}")
    slope, intercept = rescale(ds)
    return arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _build(datasets: list[Dataset], geo: SeriesGeometry) -> LoadedSeries:
    """``datasets`` in ``geo``'s order (sorted along the normal)."""
    r, c, n = geo.row, geo.col, geo.normal
    positions, ipp = geo.positions, geo.ipp
    sy, sx = geo.pixel_spacing                              # PixelSpacing = (row spacing, column spacing)
    rel = ipp - ipp[0]
    shift_mm = np.stack([rel @ c, rel @ r], axis=1)          # in-plane shear (y, x) per slice
    tilted = bool(np.abs(shift_mm).max() > 0.01 * min(sx, sy))
    gaps = np.diff(positions)
    med = float(np.median(gaps))
    uniform = evenly_spaced(gaps)
    direction = tuple(np.column_stack([r, c, n]).ravel().tolist())
    slices = np.empty((len(datasets), geo.rows, geo.columns), dtype=np.float32)
    for k, ds in enumerate(datasets):
        hu = _hu(ds)
        if hu.shape != slices.shape[1:]:
            raise CannotAssess("unsupported_pixels", f"pixel data of {hu.shape} for Rows/Columns {slices.shape[1:]}")
        slices[k] = hu
    if not tilted and uniform:
        vol = Volume(slices, (sx, sy, med), tuple(ipp[0].tolist()), direction)
        return LoadedSeries(vol, datasets)
    return _resample(datasets, slices, positions, ipp[0], shift_mm, (sx, sy), direction, tilted)


def _resample(
    datasets: list[Dataset],
    slices: np.ndarray,
    positions: np.ndarray,
    ipp0: np.ndarray,
    shift_mm: np.ndarray,
    pixel: tuple[float, float],
    direction: tuple[float, ...],
    tilted: bool,
) -> LoadedSeries:
    """Resample sheared / unevenly spaced slices onto an orthogonal grid with axes (row, col, normal)."""
    sx, sy = pixel
    n_sl, rows, cols = slices.shape
    gaps = np.diff(positions)
    # z spacing: the finer of the typical spacings, so thin parts of the series keep their detail
    dz = float(np.percentile(gaps, 25))
    dz = max(dz, 0.5)
    depth = positions[-1] - positions[0]
    # enough planes that every source slice has one within dz/2 (the last may sit just past the stack)
    nz = int(np.floor(depth / dz + 0.5)) + 1
    # in-plane: the union of all shifted slices, on the source pixel lattice of slice 0 shifted by whole pixels
    shift_px = shift_mm / np.array([sy, sx])                  # (n, 2) in pixels (y, x)
    lo = np.floor(shift_px.min(axis=0) + 1e-6).astype(int)
    hi = np.ceil(shift_px.max(axis=0) - 1e-6).astype(int)
    ny, nx = rows + hi[0] - lo[0], cols + hi[1] - lo[1]
    offsets_px = shift_px - lo                                # source pixel (0,0) of slice k sits at grid (oy, ox)
    levels = (positions - positions[0]) / dz
    grid_z = np.arange(nz) * dz + positions[0]
    out = np.full((nz, ny, nx), AIR_HU, dtype=np.float32)
    for z, t in enumerate(grid_z):
        k1 = int(np.clip(np.searchsorted(positions, t, side="right"), 1, n_sl - 1))
        k0 = k1 - 1
        w = float(np.clip((t - positions[k0]) / (positions[k1] - positions[k0]), 0.0, 1.0))
        acc = np.zeros((ny, nx), dtype=np.float32)
        for k, weight in ((k0, 1.0 - w), (k1, w)):
            if weight <= 1e-6:
                continue
            acc += np.float32(weight) * _place(slices[k], offsets_px[k], (ny, nx))
        out[z] = acc
    d = np.asarray(direction).reshape(3, 3)
    origin = ipp0 + lo[1] * sx * d[:, 0] + lo[0] * sy * d[:, 1]
    vol = Volume(out, (sx, sy, dz), tuple(origin.tolist()), direction)
    return LoadedSeries(vol, datasets, tilted=tilted, resampled=True, _resampling=_Resampling(offsets_px, levels))


def _place(img: np.ndarray, offset: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Put a slice onto the grid canvas at a (possibly fractional) pixel offset, air outside."""
    iy, ix = (int(np.floor(v)) for v in offset)
    fy, fx = float(offset[0] - iy), float(offset[1] - ix)
    canvas = np.full(shape, AIR_HU, dtype=np.float32)
    rows, cols = img.shape
    canvas[iy : iy + rows, ix : ix + cols] = img
    if fy > 1e-6 or fx > 1e-6:
        canvas = ndimage.shift(canvas, (fy, fx), order=1, mode="nearest")
    return canvas
