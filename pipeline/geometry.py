"""Series geometry, checked once: the node's series selection and ``pipeline.volume`` both judge a CT
stack here, with the same tolerances and the same cannot-assess codes (``pipeline.result.REASONS``).
The rescale to HU is judged here too, because it is read from the same headers and the selection must
refuse what the pipeline would.

Works on any pydicom datasets, header-only reads included (no pixels are touched):

* ``check_stack`` — one single-frame slice per instance, more than one slice.
* ``check_consistency`` — every slice has position, orientation, pixel spacing and matrix size, as
  usable (finite) numbers, in one frame of reference, one orientation (orthonormal), one pixel spacing,
  one matrix size; returns the stack's ``SeriesGeometry`` (slices ordered along the normal).
* ``check_rescale`` — RescaleSlope/RescaleIntercept, where a slice has them, are one finite number each
  (float32, as the pipeline computes HU) and the slope is not zero; absent means identity (1, 0).
  Slices may differ: each slice is converted with its own values.
* ``check_spacing`` — no two slices at one position, no slice missing (a gap larger than ``gap_factor``
  × both its neighbourhood's and the global median spacing).
* ``evenly_spaced`` — every gap within ``EVEN_SPACING_REL_TOL`` of the median: the pipeline stacks such
  a series as it is (else resamples it), the selection may start it on release (else waits).

The normal is ``highdicom.spatial.get_normal_vector`` in the DICOM pixel convention (row direction ×
column direction), so slices ascend along the normal and (row, column, normal) is right-handed. The
rest of ``highdicom.spatial`` (``get_volume_positions``) and SimpleITK's series reader assume a regular,
perpendicular stack and answer "not a volume" for the gantry-tilted, 4 mm → 7 mm series we accept and
resample, without saying why; hence the checks below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from highdicom.spatial import get_normal_vector
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pipeline.result import CannotAssess

ORIENTATION_TOL = 1e-3       # direction cosines that differ by more are "mixed orientations"
ORTHONORMAL_TOL = 0.01       # row/column cosines this far from unit length or perpendicular are invalid
PIXEL_SPACING_TOL_MM = 1e-3  # pixel spacings that differ by more are "mixed pixel spacings"
DUPLICATE_TOL_MM = 0.01      # slices closer than this along the normal share one position
MISSING_GAP_FACTOR = 1.5     # default gap factor (the node's [selection] gap_factor default is the same)
EVEN_SPACING_REL_TOL = 0.01  # slice gaps within 1 % of the median are "evenly spaced"
NEIGHBOURHOOD = 3            # gaps on either side that make a gap's "local" spacing
GEOMETRY_KEYWORDS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
RESCALE_KEYWORDS = ("RescaleSlope", "RescaleIntercept")


def floats(value, n: int | None = None) -> list[float] | None:
    """A DS/IS/US value as floats (``n`` of them when given), or None when it is absent or not numbers.

    Finite or not is the caller's concern (``check_consistency`` refuses NaN/inf)."""
    if value is None or value == "":
        return None
    seq = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    try:
        out = [float(v) for v in seq]
    except (TypeError, ValueError, OverflowError):
        return None
    if n is not None and len(out) != n:
        return None
    return out


def slice_normal(orientation) -> np.ndarray | None:
    """Unit normal (row × column) of an ImageOrientationPatient value; None when it is not two usable
    direction vectors."""
    iop = floats(orientation, 6)
    if iop is None or not np.isfinite(iop).all():
        return None
    n = get_normal_vector(iop, index_convention="RD")
    norm = float(np.linalg.norm(n))
    return n / norm if norm > 0.5 else None


def normal_positions(images: Sequence[Dataset]) -> np.ndarray | None:
    """Each slice's position along the first slice's normal (mm, input order); None when a position or the
    orientation is not usable. Tolerant: for a first look (anatomy, coverage) before the checks."""
    if not images:
        return None
    n = slice_normal(images[0].get("ImageOrientationPatient"))
    if n is None:
        return None
    pos = [floats(ds.get("ImagePositionPatient"), 3) for ds in images]
    if any(p is None for p in pos):
        return None
    with np.errstate(all="ignore"):
        return np.asarray(pos, dtype=float) @ n


@dataclass(frozen=True, eq=False)   # arrays inside
class SeriesGeometry:
    """A consistent stack. ``order`` sorts the input along the normal; everything else is in that order."""

    order: list[int]
    positions: np.ndarray                  # (n,) mm along ``normal``, ascending
    ipp: np.ndarray                        # (n, 3) ImagePositionPatient
    row: np.ndarray                        # unit direction of a row (increasing column index)
    col: np.ndarray                        # unit direction of a column (increasing row index)
    normal: np.ndarray                     # row × col
    pixel_spacing: tuple[float, float]     # (between rows, between columns), as in PixelSpacing
    rows: int
    columns: int

    @property
    def gaps(self) -> np.ndarray:
        return np.diff(self.positions)


def check_stack(images: Sequence[Dataset]) -> None:
    """Single-frame slices, more than one."""
    if any(int(ds.get("NumberOfFrames") or 1) > 1 for ds in images):
        raise CannotAssess("unsupported_multiframe", "multi-frame (enhanced) CT is not supported")
    if len(images) == 1:
        raise CannotAssess("single_slice", "a single slice is not a volume")


def check_consistency(images: Sequence[Dataset]) -> SeriesGeometry:
    """Refuse (``CannotAssess``) a stack whose slices are not one consistent geometry; else its geometry."""
    for kw in GEOMETRY_KEYWORDS:
        if any(ds.get(kw) in (None, "", []) for ds in images):
            raise CannotAssess("missing_geometry", f"a slice has no {kw}")
    frames = {str(ds.get("FrameOfReferenceUID") or "") for ds in images}
    if "" in frames:
        raise CannotAssess("no_frame_of_reference", "slices lack FrameOfReferenceUID")
    if len(frames) > 1:
        raise CannotAssess("mixed_frame_of_reference", f"{len(frames)} frames of reference in one series")
    parsed = [(floats(ds.get("ImageOrientationPatient"), 6), floats(ds.get("ImagePositionPatient"), 3),
               floats(ds.get("PixelSpacing"), 2), floats(ds.get("Rows"), 1), floats(ds.get("Columns"), 1))
              for ds in images]
    if any(v is None or not np.isfinite(v).all() for p in parsed for v in p):
        raise CannotAssess("invalid_geometry", "a slice's position, orientation, pixel spacing or matrix size is "
                                               "not a usable number")
    iop, ipp, px, rows, cols = (np.array([p[i] for p in parsed], dtype=float) for i in range(5))
    if np.abs(iop - iop[0]).max() > ORIENTATION_TOL:
        raise CannotAssess("mixed_orientation", "slices have different ImageOrientationPatient")
    r, c = iop[0, :3], iop[0, 3:]
    if abs(np.linalg.norm(r) - 1) > ORTHONORMAL_TOL or abs(np.linalg.norm(c) - 1) > ORTHONORMAL_TOL or \
            abs(r @ c) > ORTHONORMAL_TOL:
        raise CannotAssess("invalid_orientation", "ImageOrientationPatient is not two orthonormal vectors")
    if px.min() <= 0:
        raise CannotAssess("invalid_pixel_spacing", "PixelSpacing must be positive")
    if np.abs(px - px[0]).max() > PIXEL_SPACING_TOL_MM:
        raise CannotAssess("mixed_pixel_spacing", "slices have different PixelSpacing")
    sizes = sorted({(int(a), int(b)) for a, b in zip(rows[:, 0], cols[:, 0])})
    if len(sizes) > 1:
        raise CannotAssess("mixed_matrix_size", f"slices have different Rows/Columns {sizes}")
    if min(sizes[0]) < 1:
        raise CannotAssess("invalid_geometry", f"matrix size {sizes[0]} has no pixels")
    r, c = r / np.linalg.norm(r), c / np.linalg.norm(c)
    n = get_normal_vector(np.concatenate([r, c]), index_convention="RD")
    n = n / np.linalg.norm(n)
    with np.errstate(all="ignore"):
        pos = ipp @ n
    if not np.isfinite(pos).all():
        raise CannotAssess("invalid_geometry", "a slice's position is too large to place")
    order = np.argsort(pos, kind="stable")
    return SeriesGeometry([int(i) for i in order], pos[order], ipp[order], r, c, n,
                          (float(px[0, 0]), float(px[0, 1])), sizes[0][0], sizes[0][1])


def rescale(ds: Dataset) -> tuple[float, float]:
    """(slope, intercept) that turn a slice's stored values into HU; (1, 0) where the slice has none.

    Refuses (``CannotAssess("invalid_rescale")``) a value that is not one number finite in float32, or a
    zero slope (every pixel would be one HU value)."""
    out = []
    for kw, default in zip(RESCALE_KEYWORDS, (1.0, 0.0)):
        value = ds.get(kw)
        if value is None or value == "":
            out.append(default)
            continue
        v = floats(value, 1)
        with np.errstate(all="ignore"):
            if v is None or not np.isfinite(np.float32(v[0])):
                raise CannotAssess("invalid_rescale", f"{kw} is not a usable number")
        out.append(v[0])
    if out[0] == 0:
        raise CannotAssess("invalid_rescale", "RescaleSlope is zero")
    return out[0], out[1]


def check_rescale(images: Sequence[Dataset]) -> None:
    """Refuse a stack of which a slice's rescale is not usable (see ``rescale``)."""
    for ds in images:
        rescale(ds)


def evenly_spaced(gaps: np.ndarray, rel_tol: float = EVEN_SPACING_REL_TOL) -> bool:
    """Every gap (sorted positions' differences) within ``rel_tol`` of their positive median."""
    gaps = np.asarray(gaps, dtype=float)
    if len(gaps) == 0:
        return False
    med = float(np.median(gaps))
    return med > 0 and bool(np.all(np.abs(gaps - med) <= rel_tol * med))


def missing_slice_gap(gaps: np.ndarray, gap_factor: float = MISSING_GAP_FACTOR) -> tuple[int, float, float] | None:
    """The first gap larger than ``gap_factor`` × both its neighbourhood's (± ``NEIGHBOURHOOD`` gaps) and
    the global median spacing, as (index, gap, expected); None when nothing is missing.

    Neighbourhood-relative because real protocols switch spacing mid-series (posterior fossa 4 mm, then
    7 mm: global median 4 mm), which is not a missing slice."""
    gaps = np.asarray(gaps, dtype=float)
    if len(gaps) == 0:
        return None
    global_med = float(np.median(gaps))
    for k, gap in enumerate(gaps):
        nbh = np.concatenate([gaps[max(0, k - NEIGHBOURHOOD):k], gaps[k + 1:k + 1 + NEIGHBOURHOOD]])
        expected = max(float(np.median(nbh)) if len(nbh) else float(gap), 0.0)
        if gap > gap_factor * expected and gap > gap_factor * global_med:
            return k, float(gap), expected
    return None


def check_spacing(positions: np.ndarray, *, gap_factor: float = MISSING_GAP_FACTOR,
                  duplicate_tol_mm: float = DUPLICATE_TOL_MM) -> None:
    """Refuse sorted ``positions`` with two slices at one position or a slice missing."""
    gaps = np.diff(np.asarray(positions, dtype=float))
    if np.any(gaps < duplicate_tol_mm):
        raise CannotAssess("duplicate_slices", "two slices share one position")
    miss = missing_slice_gap(gaps, gap_factor)
    if miss is not None:
        k, gap, expected = miss
        raise CannotAssess("missing_slices",
                           f"gap of {gap:.1f} mm after slice {k + 1} (about {expected:.1f} mm expected)")


def check_series_geometry(images: Sequence[Dataset], *, gap_factor: float = MISSING_GAP_FACTOR,
                          duplicate_tol_mm: float = DUPLICATE_TOL_MM) -> SeriesGeometry:
    """All of the above, in the order both callers apply them."""
    check_stack(images)
    geo = check_consistency(images)
    check_rescale(images)
    check_spacing(geo.positions, gap_factor=gap_factor, duplicate_tol_mm=duplicate_tol_mm)
    return geo
