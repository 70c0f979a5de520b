"""Read back what an SR written by ``build_sr`` states, whatever its profile (checks and tests)."""

from __future__ import annotations

from typing import Iterator

from pydicom.dataset import Dataset

from pipeline.encode import codes

_PROBABILITY = {c.value for c in (codes.EXPANSION_PROBABILITY, codes.EXPANSION_PROBABILITY_HIGH, codes.EXPANSION_PROBABILITY_LOW)}


def walk(seq) -> Iterator[Dataset]:
    """Every content item below ``seq``, depth first."""
    for item in seq:
        yield item
        if "ContentSequence" in item:
            yield from walk(item.ContentSequence)


def read_sr_volume_ml(sr: Dataset) -> float | None:
    """The hematoma volume (mL) an SR states (0 for none), or None for a cannot-assess SR."""
    volume = _num(sr, {codes.VOLUME.value})
    if volume is None and _code(sr, codes.ASSESSMENT.value) == codes.NO_HEMATOMA.value:
        return 0.0
    return volume


def read_sr_probability(sr: Dataset) -> float | None:
    """The expansion probability in [0, 1], or None when the SR states none."""
    value = _num(sr, _PROBABILITY)
    return None if value is None else value / 100.0


def read_sr_reason(sr: Dataset) -> str | None:
    """The coded cannot-assess reason's CodeValue, if the SR carries one."""
    return _code(sr, codes.CANNOT_ASSESS.value)


def read_sr_risk(sr: Dataset) -> str | None:
    """ "high" / "low" from the coded risk evaluation, or None."""
    value = _code(sr, codes.EXPANSION_RISK.value)
    return {codes.HIGH_RISK.value: "high", codes.LOW_RISK.value: "low"}.get(value or "")


def read_sr_tracking_uid(sr: Dataset) -> str | None:
    """The finding's Tracking Unique Identifier (None in a text-only report)."""
    for item in walk(sr.ContentSequence):
        if item.get("ValueType") == "UIDREF" and item.ConceptNameCodeSequence[0].CodeValue == "112040":
            return str(item.UID)
    return None


def _num(sr: Dataset, names: set[str]) -> float | None:
    for item in walk(sr.ContentSequence):
        if item.get("ValueType") == "NUM" and item.ConceptNameCodeSequence[0].CodeValue in names:
            return float(item.MeasuredValueSequence[0].NumericValue)
    return None


def _code(sr: Dataset, name: str) -> str | None:
    for item in walk(sr.ContentSequence):
        if item.get("ValueType") == "CODE" and item.ConceptNameCodeSequence[0].CodeValue == name:
            return str(item.ConceptCodeSequence[0].CodeValue)
    return None
