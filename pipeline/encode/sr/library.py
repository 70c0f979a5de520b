"""TID 1600 image library of the source series, placed before the measurements of a TID 1500 report."""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset


def insert_image_library(report: hd.sr.MeasurementReport, sources: list[Dataset]) -> None:
    """TID 1600 image library of the source series, placed before the measurements.

    One group per series (shared modality and frame of reference), one IMAGE entry per slice. The
    per-image descriptors of TID 1602 are optional; highdicom's library writes 15 of them per slice,
    which for a 140-slice study costs seconds and repeats what the images already say.
    """
    group = hd.sr.ContainerContentItem(
        name=hd.sr.CodedConcept("126200", "DCM", "Image Library Group"),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    context = [
        hd.sr.CodeContentItem(
            name=hd.sr.CodedConcept("121139", "DCM", "Modality"),
            value=_modality_code(str(sources[0].get("Modality") or "CT")),
            relationship_type=hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT,
        )
    ]
    if sources[0].get("FrameOfReferenceUID"):   # a series refused for lacking one still gets its SR
        context.append(
            hd.sr.UIDRefContentItem(
                name=hd.sr.CodedConcept("112227", "DCM", "Frame of Reference UID"),
                value=sources[0].FrameOfReferenceUID,
                relationship_type=hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT,
            )
        )
    images = [
        hd.sr.ImageContentItem(
            name=hd.sr.CodedConcept("260753009", "SCT", "Source"),
            referenced_sop_class_uid=ds.SOPClassUID,
            referenced_sop_instance_uid=ds.SOPInstanceUID,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        for ds in sources
    ]
    group.ContentSequence = hd.sr.ContentSequence(context + images)
    library = hd.sr.ContainerContentItem(
        name=hd.sr.CodedConcept("111028", "DCM", "Image Library"),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    library.ContentSequence = hd.sr.ContentSequence([group])
    items = report[0].ContentSequence
    position = next(
        (i for i, item in enumerate(items) if item.ConceptNameCodeSequence[0].CodeValue == "126010"), len(items)
    )
    items.insert(position, library)


def _modality_code(modality: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(modality, "DCM", "Computed Tomography" if modality == "CT" else modality)
