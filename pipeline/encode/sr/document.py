"""``build_sr``: one analysed (or unassessable) series → the SR document of a profile.

What every profile shares lives here: the device observer (a stable UID per installation), the
evidence (source CT + SEG), the predecessor chain of re-analyses, and the research flags (every
document is preliminary and unverified).
"""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from pipeline.encode import codes
from pipeline.encode.common import DeviceInfo, header_copy, new_series_number, quiet_names, series_description
from pipeline.encode.outline import KeyOutline
from pipeline.encode.sr import groups, narrative
from pipeline.encode.sr.findings import Findings, model_text
from pipeline.encode.sr.library import insert_image_library
from pipeline.encode.sr.profile import DEFAULT_PROFILE, SERIES_OFFSET, check_profile, profile_of


def build_sr(
    source_datasets: list[Dataset],
    findings: Findings,
    seg: Dataset | None = None,
    predecessors: list[Dataset] | None = None,
    device: DeviceInfo | None = None,
    series_number: int | None = None,
    *,
    profile: str = DEFAULT_PROFILE,
    outline: KeyOutline | None = None,
    version_tag: str = "",
) -> Dataset:
    """The report for one series in ``profile`` ("ohif" or "tid1411", see ``sr.profile``).

    A hematoma needs ``outline`` (``outline.key_outline`` of the source mask) for "ohif" and the
    ``seg`` it measures for "tid1411". ``predecessors``: the objects of an earlier analysis of the
    same series; the SR of the same profile becomes the predecessor document, the others (SEG,
    overlays) pertinent other evidence.
    """
    profile = check_profile(profile)
    device = device or DeviceInfo()
    if not source_datasets:
        raise ValueError("build_sr needs at least one source CT slice (patient and study come from it)")
    if findings.detected and profile == "ohif" and outline is None:
        raise ValueError("the 'ohif' profile needs the hematoma's key-slice outline")
    if findings.detected and profile == "tid1411" and seg is None:
        raise ValueError("the 'tid1411' profile needs the SEG it measures")
    sources = [header_copy(ds) for ds in source_datasets]
    context = _observation_context(device, findings)
    if profile == "ohif" and not findings.detected:
        content: Dataset = narrative.text_report(findings, context)
    else:
        group = _group(profile, findings, sources, seg, outline)
        content = _measurement_report(context, group, sources, findings)
    predecessors = predecessors or []
    previous = [header_copy(p) for p in predecessors if profile_of(p) == profile]
    replaced = [p for p in predecessors if profile_of(p) is None]
    evidence = sources + ([header_copy(seg)] if seg is not None else [])
    document = hd.sr.ComprehensiveSR if profile == "ohif" else hd.sr.Comprehensive3DSR
    with quiet_names():
        sr = document(
            evidence=evidence,
            content=content,
            series_instance_uid=hd.UID(),
            series_number=series_number or new_series_number(source_datasets, offset=SERIES_OFFSET[profile]),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=device.manufacturer,
            is_complete=True,
            is_final=False,
            is_verified=False,
            institution_name=device.institution_name,
            previous_versions=previous or None,
            series_description=series_description("report", version_tag),
        )
    sr.PreliminaryFlag = "PRELIMINARY"
    sr.CodingSchemeIdentificationSequence = DicomSequence([codes.coding_scheme_identification()])
    if replaced:
        # a replaced SEG or overlay is not an SR "version"; cite it as evidence of the prior analysis
        sr.PertinentOtherEvidenceSequence = _hierarchical_refs(replaced)
    return sr


def _observation_context(device: DeviceInfo, findings: Findings) -> hd.sr.ObservationContext:
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=device.observer_uid,
                name=device.model_name,
                manufacturer_name=device.manufacturer,
                model_name=model_text(findings.model_versions),
                serial_number=device.serial_number,
            ),
        )
    )


def _group(profile: str, findings: Findings, sources: list[Dataset], seg: Dataset | None, outline: KeyOutline | None):
    if not findings.detected:
        return groups.unmeasured_group(findings, sources)
    if profile == "ohif":
        return groups.planar_group(findings, outline, sources)
    return groups.volumetric_group(findings, seg, sources)


def _measurement_report(
    context: hd.sr.ObservationContext, group, sources: list[Dataset], findings: Findings
) -> hd.sr.MeasurementReport:
    """TID 1500 with the image library before and the notice after the measurements."""
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.PROCEDURE_CT,
        imaging_measurements=[group],
        title=codes.IMAGING_MEASUREMENT_REPORT,
    )
    insert_image_library(report, sources)
    report[0].ContentSequence.append(narrative.qualitative_evaluations(findings))
    return report


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
