"""One study's verdict: assess each series from its spooled headers, then choose (thinnest qualifying wins)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Literal

from pydicom.dataset import Dataset

from ..config import SelectionSection
from .series import HEADER_TAGS, SeriesAssessment, Verdict, assess_series

if TYPE_CHECKING:
    from ..store.index import Index
    from ..store.spool import Spool

LOG = logging.getLogger("dicomnode.select")


@dataclass(frozen=True)
class SelectionDecision:
    """The verdict on one study; ``action`` is what the node does."""

    study_uid: str
    action: Literal["analyze", "cannot_assess", "ignore"]
    series_uid: str | None = None
    code: str | None = None
    reason: str = ""
    assessments: tuple[SeriesAssessment, ...] = field(default_factory=tuple)
    complete: bool = False  # analyze: the chosen series is geometrically complete


def choose(study_uid: str, assessments: Iterable[SeriesAssessment]) -> SelectionDecision:
    """The study's decision from its series' assessments: thinnest qualifying series wins."""
    assessments = tuple(assessments)
    ok = [a for a in assessments if a.verdict is Verdict.QUALIFIES]
    if ok:
        best = min(ok, key=lambda a: (a.slice_thickness_mm or 99.0, -a.n_slices, -(a.coverage_mm or 0.0)))
        return SelectionDecision(study_uid, "analyze", best.series_uid, None, best.reason, assessments, best.complete)
    bad = [a for a in assessments if a.verdict is Verdict.CANNOT_ASSESS]
    if bad:
        worst = max(bad, key=lambda a: (a.n_slices, -(a.slice_thickness_mm or 99.0)))
        return SelectionDecision(study_uid, "cannot_assess", worst.series_uid, worst.code, worst.reason, assessments)
    why = "; ".join(f"{a.code}: {a.reason}" for a in assessments) or "no series"
    return SelectionDecision(study_uid, "ignore", None, None, f"no head NCCT series ({why})"[:500], assessments)


def read_headers(paths: Iterable[Path]) -> list[Dataset]:
    """Header-only reads; unreadable files are skipped (they were validated on receipt)."""
    from pydicom import dcmread

    out = []
    for p in paths:
        try:
            out.append(dcmread(p, stop_before_pixels=True, specific_tags=HEADER_TAGS))
        except Exception as exc:  # noqa: BLE001 - one bad file must not hide the rest of the series
            LOG.warning("header of %s unreadable: %s", Path(p).name, type(exc).__name__)
    return out


def select_study(study_uid: str, index: "Index", spool: "Spool", cfg: SelectionSection) -> SelectionDecision:
    """Assess every series of ``study_uid`` in the index and decide what to analyse."""
    assessments = []
    for s in index.series_of_study(study_uid):
        if s.modality and s.modality != "CT":
            assessments.append(SeriesAssessment(s.series_uid, Verdict.NOT_HEAD_CT, "not_ct", f"modality {s.modality}"))
            continue
        headers = read_headers(spool.abspath(i.path) for i in index.instances_of(s.series_uid))
        assessments.append(assess_series(s.series_uid, headers, cfg))
    decision = choose(study_uid, assessments)
    LOG.info("selection: %s%s%s", decision.action, f" [{decision.code}]" if decision.code else "",
             f" — {decision.reason}" if decision.reason else "")
    return decision
