"""Which series of a study is analysed: the qualifying non-contrast head CT, thinnest first.

Works from header-only reads of the spooled files (no pixels), so a sweep over a study costs
milliseconds. Three outcomes per study, because the user sees them differently:

* ``analyze`` — a series qualifies (CT, head, axial ORIGINAL, non-contrast, soft-tissue kernel,
  slices ≤ ``max_slice_thickness_mm``, enough slices and cranio-caudal coverage, consistent
  geometry); the thinnest is chosen.
* ``cannot_assess`` — it *is* a non-contrast axial head CT but the data cannot be analysed
  (missing slices, mixed geometry, no Frame of Reference, single slice, too thick, too short):
  the node sends a coded "cannot assess" SR with ``code`` so the radiologist knows why.
* ``ignore`` — not a head NCCT at all (chest CT, SR, contrast CTA, bone-kernel-only,
  reformats): logged with the reason, nothing is sent.

The geometry checks (slice order, duplicate/missing slices, orientation, pixel spacing, matrix size,
rescale slope/intercept, even spacing) are ``pipeline.geometry``'s, the same ``pipeline.volume`` applies,
with the site's ``gap_factor``; the codes are keys of ``pipeline.result.REASONS``, so the selection and
the analysis reach the same verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset

from pipeline.geometry import (check_consistency, check_rescale, check_spacing, check_stack, evenly_spaced, floats,
                               normal_positions, slice_normal)
from pipeline.result import CannotAssess

from ..config import SelectionSection

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.2"
CT_CLASSES = {CT_IMAGE, ENHANCED_CT, LEGACY_ENHANCED_CT}

HEADER_TAGS = [
    "SOPClassUID", "Modality", "BodyPartExamined", "StudyDescription", "SeriesDescription", "ProtocolName",
    "RequestedProcedureDescription", "PerformedProcedureStepDescription", "ImageType", "ConvolutionKernel",
    "FilterType", "SliceThickness", "ContrastBolusAgent", "ContrastBolusRoute", "PixelSpacing", "Rows", "Columns",
    "ReconstructionDiameter", "ImageOrientationPatient", "ImagePositionPatient", "FrameOfReferenceUID",
    "PatientPosition", "NumberOfFrames", "StudyInstanceUID", "SeriesInstanceUID", "InstanceNumber",
    "ImagesInAcquisition", "RescaleSlope", "RescaleIntercept",
]

_HEAD_WORDS = re.compile(r"HEAD|BRAIN|SKULL|CRAN|CEREB|NEURO|STROKE|\bICH\b|KOPF|SCH[AÄ]E?DEL|CR[AÂ]NE|ENCEPH|HIRN", re.I)
_BODY_WORDS = re.compile(
    r"CHEST|THORA|LUNG|ABD|PELV|SPINE|LSPINE|CSPINE|CARDIAC|HEART|CORON|LIVER|KIDNEY|RENAL|KNEE|HIP\b|"
    r"EXTREM|SHOULDER|ANKLE|WRIST|WHOLE ?BODY|\bWB\b|NECK|SINUS|FACE|DENTAL|ORBIT|TEMPORAL BONE|PETROUS", re.I)
_CONTRAST_WORDS = re.compile(r"CONTRAST|\bC\+|\bKM\b|\bCTA\b|ANGIO|PERFUS|ENHANC|\bPOST\b|VENO|\bIV\b", re.I)
_NO_CONTRAST = re.compile(r"NON[- ]?CON|WITHOUT|\bNO\b|NATIV|PLAIN|\bW/?O\b|\bNC\b|NCCT|NONE", re.I)
# Sharp reconstructions: bone/lung/edge kernels by vendor (GE BONE/LUNG/EDGE/DETAIL, Siemens
# H/B/J/Hr/Br/Qr ≥ 50, Philips D/E/YC/YD/L, Canon FC30+ bone series named "BONE").
_SHARP_KERNEL = re.compile(r"BONE|LUNG|SHARP|EDGE|DETAIL|ULTRA|^[BHIJQ]R?[5-9]\d|^Y[CD]\b|^[DEL]$|^FC[3-9]\d", re.I)
_REFORMAT = re.compile(r"MPR|MIP|MINIP|VRT|3D|REFORMAT|CORONAL|SAGITTAL|\bCOR\b|\bSAG\b|SCOUT|TOPO|LOCALI", re.I)


class Verdict(str, Enum):
    QUALIFIES = "qualifies"
    CANNOT_ASSESS = "cannot_assess"  # head NCCT, but the data cannot be analysed
    EXCLUDED = "excluded"  # head CT, but not one we analyse (contrast, bone kernel, reformat)
    NOT_HEAD_CT = "not_head_ct"


@dataclass(frozen=True)
class SeriesAssessment:
    series_uid: str
    verdict: Verdict
    code: str | None = None  # for CANNOT_ASSESS / EXCLUDED / NOT_HEAD_CT: stable reason code
    reason: str = ""
    slice_thickness_mm: float | None = None
    n_slices: int = 0
    coverage_mm: float | None = None
    complete: bool = False  # QUALIFIES and nothing looks missing (see geometrically_complete)


# ------------------------------------------------------------------------------------------
# one series


def _text(ds: Dataset, *keywords: str) -> str:
    return " ".join(str(ds.get(k) or "") for k in keywords)


def _is_head(ds: Dataset, images: Sequence[Dataset]) -> tuple[bool, str]:
    body_part = str(ds.get("BodyPartExamined") or "").strip()
    if body_part:
        if _HEAD_WORDS.search(body_part):
            return True, f"BodyPartExamined {body_part}"
        if _BODY_WORDS.search(body_part):
            return False, f"BodyPartExamined {body_part}"
    desc = _text(ds, "StudyDescription", "SeriesDescription", "ProtocolName", "RequestedProcedureDescription",
                 "PerformedProcedureStepDescription")
    if _HEAD_WORDS.search(desc) and not _BODY_WORDS.search(desc):
        return True, "description"
    if _BODY_WORDS.search(desc):
        return False, "description names another body part"
    # Anatomy: a head is reconstructed on a small field of view and spans < ~26 cm, head first.
    fov = floats(ds.get("ReconstructionDiameter"))
    if not fov:
        px = floats(ds.get("PixelSpacing"), 2)
        cols = ds.get("Columns")
        fov = [px[1] * int(cols)] if px and cols else None
    extent = _coverage(images)
    head_first = str(ds.get("PatientPosition") or "HF").upper().startswith("HF")
    if fov and fov[0] <= 280 and extent is not None and extent <= 260 and head_first:
        return True, f"anatomy (field of view {fov[0]:.0f} mm, extent {extent:.0f} mm)"
    return False, "no head in body part, descriptions or anatomy"


def _coverage(images: Sequence[Dataset]) -> float | None:
    pos = normal_positions(images)
    if pos is None or len(pos) == 0 or not np.isfinite(pos).all():
        return None
    thick = floats(images[0].get("SliceThickness")) or [0.0]
    return float(pos.max() - pos.min() + thick[0])


def assess_series(series_uid: str, headers: Sequence[Dataset], cfg: SelectionSection) -> SeriesAssessment:
    """Judge one series from its instance headers (``stop_before_pixels`` reads suffice)."""
    def out(verdict: Verdict, code: str | None, reason: str, **kw) -> SeriesAssessment:
        return SeriesAssessment(series_uid, verdict, code, reason, **kw)

    modalities = {str(ds.get("Modality") or "") for ds in headers}
    if "CT" not in modalities:
        return out(Verdict.NOT_HEAD_CT, "not_ct", f"modality {', '.join(sorted(modalities)) or 'missing'}")
    images = [ds for ds in headers if str(ds.get("SOPClassUID") or "") in CT_CLASSES]
    images = [ds for ds in images if "LOCALIZER" not in [str(v).upper() for v in (ds.get("ImageType") or [])]]
    if not images:
        return out(Verdict.NOT_HEAD_CT, "no_images", "no CT image instances (only localizers or other objects)")
    first = images[0]
    head, why = _is_head(first, images)
    if not head:
        return out(Verdict.NOT_HEAD_CT, "not_head", f"not a head CT: {why}")

    # -- is it the kind of head CT we analyse? (otherwise: excluded, ignored quietly)
    image_type = [str(v).upper() for v in (first.get("ImageType") or [])]
    desc = _text(first, "SeriesDescription", "ProtocolName", "StudyDescription")
    if image_type and image_type[0] != "ORIGINAL":
        return out(Verdict.EXCLUDED, "derived", f"ImageType {'/'.join(image_type)} is not ORIGINAL")
    if _REFORMAT.search(str(first.get("SeriesDescription") or "")) or (len(image_type) > 2 and image_type[2] not in ("AXIAL", "HELICAL", "")):
        return out(Verdict.EXCLUDED, "not_axial", "reformatted or non-axial series")
    n = slice_normal(first.get("ImageOrientationPatient"))
    if n is not None and abs(n[2]) < 0.7:  # more than ~45° away from axial (gantry tilt is < 30°)
        return out(Verdict.EXCLUDED, "not_axial", "slices are not axial")
    agent = str(first.get("ContrastBolusAgent") or "").strip()
    if agent and not _NO_CONTRAST.search(agent):
        return out(Verdict.EXCLUDED, "contrast", "ContrastBolusAgent is set")
    if _CONTRAST_WORDS.search(str(first.get("SeriesDescription") or "")) and not _NO_CONTRAST.search(desc):
        return out(Verdict.EXCLUDED, "contrast", "series description says contrast/angiography")
    kernel = _text(first, "ConvolutionKernel", "FilterType").strip()
    if any(_SHARP_KERNEL.search(k.strip()) for k in re.split(r"[\\ ,]+", kernel) if k.strip()) or re.search(
            r"\bBONE\b|\bLUNG\b", str(first.get("SeriesDescription") or ""), re.I):
        return out(Verdict.EXCLUDED, "sharp_kernel", f"bone/lung reconstruction kernel ({kernel or 'description'})")

    # -- a non-contrast axial head CT: can it be analysed? (otherwise: cannot assess, coded)
    n_slices = len(images)
    try:
        check_stack(images)
        geo = check_consistency(images)
        check_rescale(images)
    except CannotAssess as ca:
        return out(Verdict.CANNOT_ASSESS, ca.code, ca.message, n_slices=n_slices)
    pos = geo.positions
    thick = [t[0] for t in (floats(ds.get("SliceThickness")) for ds in images) if t and np.isfinite(t[0])]
    thickness = max(thick) if thick else None
    gaps = np.diff(pos)
    if thickness is None:
        thickness = float(np.median(gaps)) if len(gaps) else None
    coverage = float(pos[-1] - pos[0] + (thickness or 0.0))
    kw = dict(slice_thickness_mm=thickness, n_slices=n_slices, coverage_mm=coverage)
    try:
        check_spacing(pos, gap_factor=cfg.gap_factor)
    except CannotAssess as ca:
        return out(Verdict.CANNOT_ASSESS, ca.code, ca.message, **kw)
    if thickness is not None and thickness > cfg.max_slice_thickness_mm + 1e-6:
        return out(Verdict.CANNOT_ASSESS, "slice_too_thick",
                   f"slices up to {thickness:g} mm thick (limit {cfg.max_slice_thickness_mm:g} mm)", **kw)
    if n_slices < cfg.min_slices:
        return out(Verdict.CANNOT_ASSESS, "too_few_slices", f"{n_slices} slices (at least {cfg.min_slices} needed)", **kw)
    if coverage < cfg.min_coverage_mm:
        return out(Verdict.CANNOT_ASSESS, "insufficient_coverage",
                   f"{coverage:.0f} mm cranio-caudal coverage (at least {cfg.min_coverage_mm:g} mm needed)", **kw)
    return out(Verdict.QUALIFIES, None, f"head NCCT ({why}), {n_slices} slices of {thickness:g} mm",
               complete=geometrically_complete(images, gaps), **kw)


def geometrically_complete(images: Sequence[Dataset], gaps: np.ndarray) -> bool:
    """Nothing missing as far as the headers can tell: evenly spaced (``pipeline.geometry.evenly_spaced``,
    the rule by which the pipeline stacks a series without resampling it, so the count matches extent /
    spacing + 1) and, where every slice states it, as many slices as ``ImagesInAcquisition``. Stricter
    than "analysable": a series that passes may start before the quiet period; one that doesn't still
    gets analysed, after it."""
    if not evenly_spaced(gaps):
        return False
    stated = {ds.get("ImagesInAcquisition") for ds in images}
    if len(stated) == 1 and None not in stated:
        try:
            return int(next(iter(stated))) == len(images)
        except (TypeError, ValueError):
            return False
    return True
