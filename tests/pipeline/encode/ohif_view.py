"""What OHIF Viewer 3.13 makes of an SR, ported from its cornerstone-dicom-sr extension (3.13.2 dist).

``ohif_view(sr)`` returns what a reader sees, or raises ``OhifBreaks`` where OHIF throws (a black
viewport). Ported: getSopClassHandlerModule (_getMeasurements, _processTID1410Measurement,
_processNonGeometricallyDefinedMeasurement, _checkIfCanAddMeasurementsToDisplaySet),
DICOMSRDisplayTool._getTextBoxLinesFromLabels, OHIFCornerstoneSRMeasurementViewport (needs a first
measurement) and OHIFCornerstoneSRTextViewport / formatContentItem (any non-TID-1500 title).
The real-browser test (tests/viewer) checks the same against OHIF itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset

IMAGING_MEASUREMENT_REPORT, IMAGING_MEASUREMENTS, MEASUREMENT_GROUP = "126000", "126010", "125007"
TRACKING_UID, TRACKING_ID, FINDING_SITE_SCT = "112040", "112039", "363698007"
SHORTHAND = {"Short Axis": "W: ", "Long Axis": "L: ", "AREA": "Area: ", "Length": "", "CORNERSTONEFREETEXT": ""}


class OhifBreaks(Exception):
    """OHIF would throw here (TypeError in the browser console, nothing displayed)."""


@dataclass
class Measurement:
    image_uid: str | None
    frame: int
    graphic_type: str | None
    n_points: int
    lines: list[str] = field(default_factory=list)   # the text box next to the drawing (≤ 5 lines)


def ohif_view(sr: Dataset) -> dict:
    """{"measurements": [...]} for a TID 1500 report, {"text": [...]} for any other SR."""
    if sr.ConceptNameCodeSequence[0].CodeValue != IMAGING_MEASUREMENT_REPORT:
        return {"text": _text_lines(sr, [1], "SEPARATE")}
    measurements = [_measurement(items) for items in _merged_groups(sr)]
    for m in measurements:
        if m is None:
            raise OhifBreaks("a measurement without coordinates: coords[0].ReferencedSOPSequence of undefined")
    if not measurements:
        raise OhifBreaks("no measurement: the SR viewport reads measurements[0].displaySetInstanceUID")
    return {"measurements": measurements}


def _concept(item: Dataset) -> str:
    if "ConceptNameCodeSequence" not in item:
        raise OhifBreaks("content item without ConceptNameCodeSequence")
    return item.ConceptNameCodeSequence[0].CodeValue


def _merged_groups(sr: Dataset) -> list[list[Dataset]]:
    container = next((i for i in sr.ContentSequence if _concept(i) == IMAGING_MEASUREMENTS), None)
    if container is None:
        return []
    merged: dict[str, list[Dataset]] = {}
    for group in (g for g in container.get("ContentSequence", []) if _concept(g) == MEASUREMENT_GROUP):
        items = list(group.ContentSequence)
        uid = next((i.UID for i in items if _concept(i) == TRACKING_UID), None)
        if uid is None:
            raise OhifBreaks("group without Tracking Unique Identifier")
        merged.setdefault(str(uid), []).extend(items)
    return list(merged.values())


def _measurement(items: list[Dataset]) -> Measurement | None:
    graphic = next((i for i in items if i.ValueType in ("SCOORD", "SCOORD3D")), None)
    if graphic is None:
        return None                   # non-geometric: no coords, and _checkIfCanAdd... throws
    if not any(_concept(i) == TRACKING_ID for i in items):
        raise OhifBreaks("TID 1410 group without Tracking Identifier")
    ref = graphic.ContentSequence[0].ReferencedSOPSequence[0] if "ContentSequence" in graphic else None
    labels = [_label(i) for i in items if i.ValueType == "NUM" and "MeasuredValueSequence" in i]
    sites = [i for i in items if _concept(i) == FINDING_SITE_SCT and i.ConceptNameCodeSequence[0].CodingSchemeDesignator == "SCT"]
    if sites:
        labels.append((FINDING_SITE_SCT, sites[0].ConceptCodeSequence[0].CodeMeaning))
    lines = [f"{SHORTHAND.get(label, label)}: {value}" for label, value in labels[:5]]
    frames = ref.get("ReferencedFrameNumber") if ref is not None else None
    return Measurement(
        image_uid=str(ref.ReferencedSOPInstanceUID) if ref is not None else None,
        frame=int(frames[0] if isinstance(frames, list) else frames or 1),
        graphic_type=graphic.GraphicType,
        n_points=len(graphic.GraphicData) // (3 if graphic.ValueType == "SCOORD3D" else 2),
        lines=lines,
    )


def _label(item: Dataset) -> tuple[str, str]:
    """``{label: CodeMeaning, value: `${NumericValue ? toFixed(2) : ''} ${unit CodeValue}`}`` (a
    DICOMweb number 0 is falsy in JavaScript: it prints as nothing)."""
    mv = item.MeasuredValueSequence[0]
    number = float(mv.NumericValue)
    shown = f"{number:.2f}" if number else ""
    return item.ConceptNameCodeSequence[0].CodeMeaning, f"{shown} {mv.MeasurementUnitsCodeSequence[0].CodeValue}"


def _text_lines(container: Dataset, numbering: list[int], parent_continuity: str) -> list[str]:
    meaning = container.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in container else ""
    lines = [f"{'.'.join(map(str, numbering))}. {meaning}"]
    continuity = container.get("ContinuityOfContent", "SEPARATE")
    child = 1
    for item in container.get("ContentSequence", []):
        if item.ValueType == "CONTAINER":
            lines += _text_lines(item, numbering + [child], continuity)
            child += 1
            continue
        _concept(item)
        value = _format(item)
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        lines.append(value if continuity == "CONTINUOUS" else f"{name}: {value}")
    return lines


def _format(item: Dataset) -> str:
    kind = item.ValueType
    if kind == "TEXT":
        return str(item.TextValue)
    if kind == "CODE":
        return str(item.ConceptCodeSequence[0].CodeMeaning)
    if kind == "UIDREF":
        return str(item.UID)
    if kind == "NUM":
        mv = item.MeasuredValueSequence[0]
        return f"{mv.NumericValue} {mv.MeasurementUnitsCodeSequence[0].CodeValue}"
    return f"[{kind} is not supported]"
