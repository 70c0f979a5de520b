"""Overlay series (Secondary Capture) for viewers that show neither SEG nor SR.

Key axial slices (largest hematoma cross-sections) rendered in a brain window, the hematoma contour
burned in, and the result in a few short lines at the bottom centre: viewers draw their own text in
the four corners (OHIF's top-left patient block hid a top banner). Pixels are burned in on purpose:
this is the lowest common denominator every PACS displays.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from scipy import ndimage

from pipeline.encode.common import DeviceInfo, header_copy, new_series_number, quiet_names, series_description
from pipeline.encode.outline import key_slices
from pipeline.geometry import rescale

WINDOW_CENTER, WINDOW_WIDTH = 40.0, 80.0
CONTOUR_RGB = (255, 40, 40)
TEXT_RGB = (255, 255, 0)
DISCLAIMER = "NOT FOR DIAGNOSTIC USE"


def summary_line(volume_ml: float | None, risk: str | None, probability: float | None, reason: str | None = None) -> str:
    """The result as " | "-separated parts; each part is one burned-in line (and ImageComments)."""
    if volume_ml is None:
        return f"ICH: cannot assess ({reason or 'unknown reason'}) | {DISCLAIMER}"
    if volume_ml == 0:
        return f"No intracerebral hematoma detected | {DISCLAIMER}"
    parts = [f"ICH volume {volume_ml:.1f} mL"]
    if risk is not None:
        parts.append(f"expansion risk {risk.upper()}" + (f" ({probability * 100:.0f} %)" if probability is not None else ""))
    else:
        parts.append("expansion risk n/a")
    parts.append(DISCLAIMER)
    return " | ".join(parts)


def build_overlays(
    source_datasets: list[Dataset],
    source_mask: np.ndarray,
    text: str,
    max_slices: int = 3,
    device: DeviceInfo | None = None,
    series_number: int | None = None,
    version_tag: str = "",
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
        sc.SeriesDescription = series_description("overlay", version_tag)
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
    """Brain-window grayscale → RGB with the mask's outline and ``text`` (" | " = new line) centred
    at the bottom on a black box (uint8, rows×cols×3)."""
    lo = WINDOW_CENTER - WINDOW_WIDTH / 2
    gray = np.clip((hu - lo) / WINDOW_WIDTH * 255.0, 0, 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    if mask.any():
        edge = mask & ~ndimage.binary_erosion(mask)
        edge = ndimage.binary_dilation(edge)          # 2-3 px wide: visible at any zoom
        rgb[edge] = CONTOUR_RGB
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(10, img.width // 40))
    lines = text.split(" | ")
    boxes = [draw.textbbox((0, 0), line, font=font) for line in lines]
    step = max(b[3] for b in boxes) + 2
    top = img.height - 4 - step * len(lines)
    widest = max(b[2] for b in boxes)
    left = (img.width - widest) // 2
    draw.rectangle((left - 4, top - 2, left + widest + 4, img.height - 2), fill=(0, 0, 0))
    for i, (line, box) in enumerate(zip(lines, boxes)):
        draw.text(((img.width - box[2]) // 2, top + i * step), line, fill=TEXT_RGB, font=font)
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
    slope, intercept = rescale(ds)  # the pipeline's one rule (the series passed it before analysis)
    return ds.pixel_array.astype(np.float32) * slope + intercept
