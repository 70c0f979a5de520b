"""DICOM SEG of the hematoma, on the original CT slices (one BINARY segment, every frame kept).

Frames follow the source slices exactly (not the analysis grid), because viewers place a SEG frame
on the image it references; empty frames are kept because several viewers misplace segments when
frames are omitted. There is no SEG without a hematoma: an empty segment shows as NaN statistics
(OHIF), which a reader can misread. The segment has a display colour (OHIF warns on every load
without one) and the finding's stable tracking UID, shared with the SR.
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from pipeline.encode import codes
from pipeline.encode.common import DeviceInfo, header_copy, new_series_number, quiet_names, series_description
from pipeline.encode.uids import FINDING_ID, tracking_uid

SEGMENT_NUMBER = 1
SEGMENT_LABEL = "Intracerebral hematoma"
DISPLAY_RGB = (255, 64, 32)   # red-orange: blood, and apart from viewers' yellow/green SR outlines


@dataclass(frozen=True)
class SegmenterInfo:
    name: str
    version: str
    family: hd.sr.CodedConcept = codes.ARTIFICIAL_INTELLIGENCE


def build_seg(
    source_datasets: list[Dataset],
    source_mask: np.ndarray,
    segmenter: SegmenterInfo,
    device: DeviceInfo | None = None,
    series_number: int | None = None,
    version_tag: str = "",
) -> Dataset:
    """A SEG whose frame k is ``source_mask[k]`` on ``source_datasets[k]`` (sorted spatially).

    ``version_tag``: short model versions for the series description (``common.version_tag``).
    """
    device = device or DeviceInfo()
    if not source_datasets:
        raise ValueError("build_seg needs the source CT slices")
    mask = np.asarray(source_mask, dtype=bool)
    expected = (len(source_datasets), int(source_datasets[0].Rows), int(source_datasets[0].Columns))
    if mask.shape != expected:
        raise ValueError(f"source mask shape {mask.shape} does not match the source slices {expected}")
    if not mask.any():
        raise ValueError("no hematoma in the mask: a negative result has no SEG")
    frames = {str(ds.get("FrameOfReferenceUID", "")) for ds in source_datasets}
    if len(frames) != 1 or "" in frames:
        raise ValueError("source slices must share one FrameOfReferenceUID")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=segmenter.name, family=segmenter.family, version=segmenter.version
    )
    description = hd.seg.SegmentDescription(
        segment_number=SEGMENT_NUMBER,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        segmented_property_type=codes.HEMORRHAGE,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=tracking_uid(source_datasets[0].StudyInstanceUID),
        tracking_id=FINDING_ID,
        anatomic_regions=[codes.BRAIN],
        display_color=hd.color.CIELabColor.from_rgb(*DISPLAY_RGB),
    )
    with quiet_names():
        seg = hd.seg.Segmentation(
            source_images=[header_copy(ds) for ds in source_datasets],
            pixel_array=mask.astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=hd.UID(),
            series_number=series_number or new_series_number(source_datasets, offset=1),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=device.manufacturer,
            manufacturer_model_name=device.model_name,
            software_versions=device.software_version,
            device_serial_number=device.serial_number,
            series_description=series_description("SEG", version_tag or f"v{segmenter.version}"),
            content_label="ICH",
            content_description="Intracerebral hematoma - not for diagnostic use",
            omit_empty_frames=False,
        )
    return seg


def read_seg_mask(seg: Dataset, source_datasets: list[Dataset]) -> np.ndarray:
    """The segment as a bool (n_slices, rows, cols) array aligned to ``source_datasets`` (read-back check)."""
    parsed = hd.seg.Segmentation.from_dataset(seg) if not isinstance(seg, hd.seg.Segmentation) else seg
    uids = [ds.SOPInstanceUID for ds in source_datasets]
    arr = parsed.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[SEGMENT_NUMBER], assert_missing_frames_are_empty=True
    )
    return arr[..., 0].astype(bool)
