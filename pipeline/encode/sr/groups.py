"""TID 1500 measurement groups: planar on the key slice (TID 1410), volumetric on the SEG (TID 1411),
or measurement-free (TID 1501) for "no hematoma" and "cannot assess".

Every group carries the finding's stable tracking UID (``uids.tracking_uid``), the one the SEG
segment has, so "ICH-1" can be followed across re-analyses.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset

from pipeline.encode import codes
from pipeline.encode.outline import KeyOutline
from pipeline.encode.seg import SEGMENT_NUMBER
from pipeline.encode.sr.findings import Findings
from pipeline.encode.uids import FINDING_ID, tracking_uid


def tracking(sources: list[Dataset]) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(uid=tracking_uid(sources[0].StudyInstanceUID), identifier=FINDING_ID)


def measurements(findings: Findings, outline: KeyOutline | None, *, risk_in_name: bool) -> list[hd.sr.Measurement]:
    """Volume (mL), area on the key slice (cm², with an outline), expansion probability (%).

    ``risk_in_name``: the probability's concept also names the risk category, for viewers that
    show a group's numbers but not its coded evaluations (OHIF 3.13).
    """
    items = [hd.sr.Measurement(name=codes.VOLUME, value=round(float(findings.volume_ml), 3), unit=codes.MILLILITER)]
    if outline is not None:
        items.append(hd.sr.Measurement(name=codes.AREA, value=round(outline.area_cm2, 3), unit=codes.SQUARE_CENTIMETER))
    if findings.expansion_probability is not None:
        name = codes.EXPANSION_PROBABILITY
        if risk_in_name and findings.risk is not None:
            name = codes.probability_with_risk(findings.risk)
        items.append(hd.sr.Measurement(name=name, value=round(findings.expansion_probability * 100.0, 2), unit=codes.PERCENT))
    return items


def risk_evaluations(findings: Findings) -> list[hd.sr.QualitativeEvaluation] | None:
    if findings.risk is None:
        return None
    return [hd.sr.QualitativeEvaluation(name=codes.EXPANSION_RISK, value=codes.risk_code(findings.risk))]


def planar_group(
    findings: Findings, outline: KeyOutline, sources: list[Dataset]
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """The hematoma's outline on its key slice with its numbers (what OHIF 3.13 displays).

    No finding site: OHIF would print it as "363698007: Brain" among the numbers.
    """
    image = sources[outline.slice_index]
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=outline.points,
        source_image=hd.sr.SourceImageForRegion(image.SOPClassUID, image.SOPInstanceUID, _frames(image)),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking(sources),
        referenced_region=region,
        finding_type=codes.HEMORRHAGE,
        measurements=measurements(findings, outline, risk_in_name=True),
        qualitative_evaluations=risk_evaluations(findings),
    )


def volumetric_group(
    findings: Findings, seg: Dataset, sources: list[Dataset]
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """The hematoma as the SEG segment, with its numbers (TID 1411, for strict consumers).

    The segment reference is built explicitly: highdicom 0.28's ``ReferencedSegment.from_segmentation``
    mishandles single-segment SEGs.
    """
    referenced_segment = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=SEGMENT_NUMBER,
        source_series=hd.sr.SourceSeriesForSegmentation(sources[0].SeriesInstanceUID),
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking(sources),
        referenced_segment=referenced_segment,
        finding_type=codes.HEMORRHAGE,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.BRAIN)],
        measurements=measurements(findings, None, risk_in_name=False),
        qualitative_evaluations=risk_evaluations(findings),
    )


def unmeasured_group(findings: Findings, sources: list[Dataset]) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """No hematoma (volume 0 and "No intracerebral hematoma detected") or the coded cannot-assess reason."""
    if findings.assessed:
        evaluation = hd.sr.QualitativeEvaluation(name=codes.ASSESSMENT, value=codes.NO_HEMATOMA)
        numbers = measurements(findings, None, risk_in_name=False)
    else:
        evaluation = hd.sr.QualitativeEvaluation(
            name=codes.CANNOT_ASSESS, value=codes.cannot_assess_reason(str(findings.reason_code))
        )
        numbers = None
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking(sources),
        finding_type=codes.HEMORRHAGE,
        measurements=numbers,
        qualitative_evaluations=[evaluation],
    )


def _frames(image: Dataset) -> list[int] | None:
    """Referenced frame numbers: only for a multi-frame image (a single-frame reference has none)."""
    return [1] if int(image.get("NumberOfFrames") or 1) > 1 else None
