"""Overlay series (Secondary Capture) for viewers that show neither SEG nor SR.

Key axial slices (largest hematoma cross-sections) rendered in a brain window, the hematoma contour
burned in, and one text line: volume, risk, "NOT FOR DIAGNOSTIC USE". Pixels are burned in on
purpose: this is the lowest common denominator every PACS displays.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from scipy import ndimage

from pipeline.encode.common import quiet_names, DeviceInfo, header_copy, new_series_number

WINDOW_CENTER, WINDOW_WIDTH = 40.0, 80.0
CONTOUR_RGB = (255, 40, 40)
DISCLAIMER = "NOT FOR DIAGNOSTIC USE"


def summary_line(volume_ml: float | None, risk: str | None, probability: float | None, reason: str | None = None) -> str:
    """The one text line burned into every overlay."""
    if volume_ml is None:
        return f"ICH: cannot assess ({reason or 'unknown reason'}) | {DISCLAIMER}"
    parts = [f"ICH volume {volume_ml:.1f} mL"]
    if risk is not None:
        parts.append(f"expansion risk {risk.upper()}" + (f" (p={probability:.2f})" if probability is not None else ""))
    else:
        parts.append("expansion risk n/a")
    parts.append(DISCLAIMER)
    return " | ".join(parts)


def key_slices(source_mask: np.ndarray, max_slices: int) -> list[int]:
    """Indices of the slices with the largest hematoma area, in spatial order; the middle slice if none."""
    if max_slices < 1:
        raise ValueError(f"max_slices must be ≥ 1, got {max_slices}")
    area = np.asarray(source_mask, dtype=bool).reshape(len(source_mask), -1).sum(axis=1)
    if not area.any():
        return [len(source_mask) // 2]
    ranked = [int(k) for k in np.argsort(-area, kind="stable") if area[k] > 0][:max_slices]
    return sorted(ranked)


def build_overlays(
    source_datasets: list[Dataset],
    source_mask: np.ndarray,
    text: str,
    max_slices: int = 3,
    device: DeviceInfo | None = None,
    series_number: int | None = None,
) -> list[Dataset]:
    """One RGB Secondary Capture image per key slice, all in one new series."""
    device = device or DeviceInfo()
    mask = np.asarray(source_mask, dtype=bool)
    if mask.shape[0] != len(source_datasets):
        raise ValueError(f"mask has {mask.shape[0]} slices, the series {len(source_datasets)}")
    series_uid = hd.UID()
    number = series_number or new_series_number(source_datasets, offset=3)
    out = []
    for i, k in enumerate(key_slices(mask, max_slices)):
        ds = source_datasets[k]
        rgb = render(_hu(ds), mask[k], text)
        ref = header_copy(ds)
        with quiet_names():
            sc = hd.sc.SCImage.from_ref_dataset(
                ref_dataset=ref,
                pixel_array=rgb,
                photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
                bits_allocated=8,
                coordinate_system=hd.CoordinateSystemNames.PATIENT,
                series_instance_uid=series_uid,
                series_number=number,
                sop_instance_uid=hd.UID(),
                instance_number=i + 1,
                manufacturer=device.manufacturer,
                patient_orientation=patient_orientation(ds),
                pixel_spacing=tuple(float(v) for v in ds.PixelSpacing),
            )
        sc.SeriesDescription = "ICH overlay - not for diagnostic use"
        sc.BurnedInAnnotation = "YES"
        if "Laterality" not in sc:
            sc.Laterality = ""   # type 2C; dciodvfy wants it present for SC (head: unpaired, so empty)
        sc.ImageComments = text[:10240]
        sc.DerivationDescription = "CT slice in a brain window with the hematoma contour burned in"
        source_ref = Dataset()
        source_ref.ReferencedSOPClassUID = ds.SOPClassUID
        source_ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        sc.SourceImageSequence = DicomSequence([source_ref])
        out.append(sc)
    return out


def render(hu: np.ndarray, mask: np.ndarray, text: str) -> np.ndarray:
    """Brain-window grayscale → RGB with the mask's outline and a text banner (uint8, rows×cols×3)."""
    lo = WINDOW_CENTER - WINDOW_WIDTH / 2
    gray = np.clip((hu - lo) / WINDOW_WIDTH * 255.0, 0, 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    if mask.any():
        edge = mask & ~ndimage.binary_erosion(mask)
        edge = ndimage.binary_dilation(edge)          # 2-3 px wide: visible at any zoom
        rgb[edge] = CONTOUR_RGB
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    size = max(10, img.width // 40)
    font = ImageFont.load_default(size=size)
    box = draw.textbbox((4, 4), text, font=font)
    draw.rectangle((0, 0, img.width, box[3] + 4), fill=(0, 0, 0))
    draw.text((4, 4), text, fill=(255, 255, 0), font=font)
    return np.asarray(img)


def patient_orientation(ds: Dataset) -> tuple[str, str]:
    """Row and column directions as their dominant patient-orientation letters (e.g. ("L", "P")).

    highdicom accepts one letter per direction; oblique (tilted) directions keep the dominant one.
    """
    iop = [float(v) for v in ds.ImageOrientationPatient]
    return _letters(iop[:3]), _letters(iop[3:])


def _letters(v: list[float]) -> str:
    names = (("L", "R"), ("P", "A"), ("H", "F"))
    order = np.argsort(-np.abs(v))
    i = int(order[0])
    return names[i][0] if v[i] > 0 else names[i][1]


def _hu(ds: Dataset) -> np.ndarray:
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return ds.pixel_array.astype(np.float32) * slope + intercept
