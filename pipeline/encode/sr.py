"""Comprehensive 3D SR with a TID 1500 Measurement Report: hematoma volume, expansion probability, risk.

The volumetric group references the SEG segment explicitly (highdicom 0.28's
``ReferencedSegment.from_segmentation`` mishandles single-segment SEGs). A series that cannot be
assessed gets the same document type carrying only the coded reason, so a PACS always shows an
answer. Every document is flagged preliminary and unverified: it is research output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from pipeline.encode import codes
from pipeline.encode.common import quiet_names, DeviceInfo, header_copy, new_series_number
from pipeline.encode.seg import SEGMENT_NUMBER

SR_TITLE = hd.sr.CodedConcept("126000", "DCM", "Imaging Measurement Report")
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


@dataclass(frozen=True)
class Findings:
    """What the SR states; ``volume_ml`` None means cannot assess (then ``reason_code`` is set)."""

    volume_ml: float | None = None
    expansion_probability: float | None = None
    risk: str | None = None                       # "high" | "low" | None
    reason_code: str | None = None                # CannotAssess.code
    model_versions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.volume_ml is None and not self.reason_code:
            raise ValueError("Findings need either a volume or a cannot-assess reason code")
        if self.volume_ml is not None and self.volume_ml < 0:
            raise ValueError(f"volume_ml must be ≥ 0, got {self.volume_ml}")
        if self.expansion_probability is not None and not 0.0 <= self.expansion_probability <= 1.0:
            raise ValueError(f"expansion_probability must be in [0, 1], got {self.expansion_probability}")
        if self.risk not in (None, "high", "low"):
            raise ValueError(f"risk must be 'high', 'low' or None, got {self.risk!r}")


def build_sr(
    source_datasets: list[Dataset],
    findings: Findings,
    seg: Dataset | None = None,
    predecessors: list[Dataset] | None = None,
    device: DeviceInfo | None = None,
    series_number: int | None = None,
) -> Dataset:
    """The TID 1500 report for one analysed (or unassessable) series."""
    device = device or DeviceInfo()
    if not source_datasets:
        raise ValueError("build_sr needs at least one source CT slice (patient and study come from it)")
    if findings.volume_ml is not None and seg is None:
        raise ValueError("an analysed result needs the SEG it measures")
    sources = [header_copy(ds) for ds in source_datasets]
    observation_context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=hd.UID(),
                name=device.model_name,
                manufacturer_name=device.manufacturer,
                model_name=_model_text(findings.model_versions),
                serial_number=device.serial_number,
            ),
        )
    )
    if findings.volume_ml is not None:
        group = _volumetric_group(findings, seg, sources)
    else:
        group = _cannot_assess_group(findings)
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=codes.PROCEDURE_CT,
        imaging_measurements=[group],
        title=SR_TITLE,
    )
    _insert_image_library(report, sources)
    evidence = sources + ([header_copy(seg)] if seg is not None else [])
    previous = [header_copy(p) for p in (predecessors or []) if str(p.get("SOPClassUID", "")) == COMPREHENSIVE_3D_SR]
    with quiet_names():
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence,
            content=report,
            series_instance_uid=hd.UID(),
            series_number=series_number or new_series_number(source_datasets, offset=2),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=device.manufacturer,
            is_complete=True,
            is_final=False,
            is_verified=False,
            institution_name=device.institution_name,
            previous_versions=previous or None,
            series_description="ICH measurement report - research use, not for diagnostic use",
        )
    sr.PreliminaryFlag = "PRELIMINARY"
    sr.CodingSchemeIdentificationSequence = DicomSequence([codes.coding_scheme_identification()])
    replaced = [p for p in (predecessors or []) if str(p.get("SOPClassUID", "")) != COMPREHENSIVE_3D_SR]
    if replaced:
        # a replaced SEG is not an SR "version"; cite it as evidence of the prior analysis instead
        sr.PertinentOtherEvidenceSequence = _hierarchical_refs(replaced)
    return sr


def _insert_image_library(report: hd.sr.MeasurementReport, sources: list[Dataset]) -> None:
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


def _model_text(versions: dict[str, str]) -> str:
    return "; ".join(f"{kind} {ver}" for kind, ver in sorted(versions.items())) or "unknown models"


def _volumetric_group(
    findings: Findings, seg: Dataset, sources: list[Dataset]
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    referenced_segment = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=SEGMENT_NUMBER,
        source_series=hd.sr.SourceSeriesForSegmentation(sources[0].SeriesInstanceUID),
    )
    measurements = [
        hd.sr.Measurement(
            name=codes.VOLUME,
            value=round(float(findings.volume_ml), 3),   # 1 mL = 1 cm3
            unit=codes.CUBIC_CENTIMETER,
        )
    ]
    if findings.expansion_probability is not None:
        measurements.append(
            hd.sr.Measurement(
                name=codes.EXPANSION_PROBABILITY,
                value=round(float(findings.expansion_probability), 4),
                unit=codes.NO_UNITS,
            )
        )
    evaluations = []
    if findings.risk is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(name=codes.EXPANSION_RISK, value=codes.risk_code(findings.risk)))
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="ICH-1"),
        referenced_segment=referenced_segment,
        finding_type=codes.HEMORRHAGE,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.BRAIN)],
        measurements=measurements,
        qualitative_evaluations=evaluations or None,
    )


def _cannot_assess_group(findings: Findings) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="ICH-1"),
        finding_type=codes.HEMORRHAGE,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=codes.CANNOT_ASSESS, value=codes.cannot_assess_reason(str(findings.reason_code))
            )
        ],
    )


def _hierarchical_refs(datasets: list[Dataset]) -> DicomSequence:
    """Study → series → SOP instance references, as in PertinentOtherEvidenceSequence."""
    studies: dict[str, dict[str, list[Dataset]]] = {}
    for ds in datasets:
        studies.setdefault(str(ds.StudyInstanceUID), {}).setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    items = []
    for study_uid, series in studies.items():
        study = Dataset()
        study.StudyInstanceUID = study_uid
        study.ReferencedSeriesSequence = DicomSequence()
        for series_uid, members in series.items():
            s = Dataset()
            s.SeriesInstanceUID = series_uid
            s.ReferencedSOPSequence = DicomSequence()
            for ds in members:
                ref = Dataset()
                ref.ReferencedSOPClassUID = ds.SOPClassUID
                ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
                s.ReferencedSOPSequence.append(ref)
            study.ReferencedSeriesSequence.append(s)
        items.append(study)
    return DicomSequence(items)


def read_sr_volume_ml(sr: Dataset) -> float | None:
    """The hematoma volume (mL) an SR states, or None for a cannot-assess SR (read-back check)."""
    for item in _walk(sr.ContentSequence):
        if item.get("ValueType") == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == codes.VOLUME.value:
            return float(item.MeasuredValueSequence[0].NumericValue)
    return None


def read_sr_reason(sr: Dataset) -> str | None:
    """The coded cannot-assess reason's CodeValue, if the SR carries one."""
    for item in _walk(sr.ContentSequence):
        if item.get("ValueType") == "CODE" and item.ConceptNameCodeSequence[0].CodeValue == codes.CANNOT_ASSESS.value:
            return str(item.ConceptCodeSequence[0].CodeValue)
    return None


def _walk(seq):
    for item in seq:
        yield item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence)
