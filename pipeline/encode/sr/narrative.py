"""Free-text parts of the reports: the disclaimer and model versions, and the text-only report.

Why a text-only report (TID 2000, "Diagnostic Imaging Report"): OHIF 3.13 opens a TID 1500 report
only on an image region, and one without any (no hematoma, cannot assess) leaves a black viewport.
Any other SR it renders as readable text, so the "ohif" profile states those results that way.
"""

from __future__ import annotations

import highdicom as hd
from highdicom.sr.templates import DEFAULT_LANGUAGE
from pydicom.dataset import Dataset

from pipeline.encode import codes
from pipeline.encode.common import DISCLAIMER
from pipeline.encode.sr.findings import Findings, model_text

CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS


def notice(findings: Findings) -> str:
    """The reader's notice: research use, and which models produced the result."""
    return f"{DISCLAIMER[0].upper()}{DISCLAIMER[1:]}. Models: {model_text(findings.model_versions)}."


def finding_text(findings: Findings) -> str:
    """The result in one sentence."""
    if not findings.assessed:
        reason = codes.cannot_assess_reason(str(findings.reason_code)).meaning
        detail = f" ({findings.reason_text})" if findings.reason_text else ""
        return f"Cannot assess: {reason}{detail}."
    if not findings.detected:
        return "No intracerebral hematoma detected."
    return f"Intracerebral hematoma, volume {findings.volume_ml:.1f} mL."


def qualitative_evaluations(findings: Findings) -> hd.sr.ContainerContentItem:
    """TID 1500's document-level "Qualitative Evaluations" with the notice as a TEXT comment."""
    container = hd.sr.ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS, relationship_type=CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence([_text(codes.COMMENT, notice(findings))])
    return container


def text_report(findings: Findings, observation_context: hd.sr.ObservationContext) -> hd.sr.ContainerContentItem:
    """TID 2000 Basic Diagnostic Imaging Report: a Findings section with the finding as TEXT, its
    code (no hematoma / cannot-assess reason) and the notice. (No volume NUM: TID 1402 wants cubic
    units, and "no hematoma" says it.)

    Containers are SEPARATE: OHIF prints "<concept>: <value>" per item only then (CONTINUOUS runs
    the values together as prose, without their names).
    """
    section = hd.sr.ContainerContentItem(name=codes.FINDINGS, relationship_type=CONTAINS, is_content_continuous=False)
    items = [_text(codes.FINDING, finding_text(findings))]
    if findings.assessed:
        items.append(_code(codes.ASSESSMENT, codes.NO_HEMATOMA))
    else:
        items.append(_code(codes.CANNOT_ASSESS, codes.cannot_assess_reason(str(findings.reason_code))))
    items.append(_text(codes.COMMENT, notice(findings)))
    section.ContentSequence = hd.sr.ContentSequence(items)
    root = hd.sr.ContainerContentItem(name=codes.DIAGNOSTIC_IMAGING_REPORT, template_id="2000", is_content_continuous=False)
    procedure = _code(codes.PROCEDURE_REPORTED, codes.PROCEDURE_CT, hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD)
    root.ContentSequence = hd.sr.ContentSequence(
        [*hd.sr.LanguageOfContentItemAndDescendants(DEFAULT_LANGUAGE), *observation_context, procedure, section]
    )
    return root


def _text(name: hd.sr.CodedConcept, value: str) -> Dataset:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=CONTAINS)


def _code(
    name: hd.sr.CodedConcept, value: hd.sr.CodedConcept, relationship: hd.sr.RelationshipTypeValues = CONTAINS
) -> Dataset:
    return hd.sr.CodeContentItem(name=name, value=value, relationship_type=relationship)
