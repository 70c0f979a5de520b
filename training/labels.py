"""Expansion labels from follow-up CTs: the node's own patients become training cases.

When the node has analysed a baseline head CT and, within the window (default 6-72 h later), analyses a
follow-up head CT of the same patient, model 1's two volumes decide the label by the seed's rule
(growth > 6 mL or > 33 %). The baseline becomes a case in the dataset store with both volumes and both
study UIDs.

The node calls exactly one function, after every finished analysis (analysed or "cannot assess")::

    from training.labels import on_analysis
    on_analysis(store_root, series_files, result, seg_files=...)   # never raises into the worker

Everything else (pseudonymising the patient, reading study times, pairing in either arrival order,
keeping a copy of the baseline images) happens here, so the dependency dicomnode → training stays one
call. Pairing uses the node's keyed pseudonym of PatientID (the store is opened with the node's
pseudonymizer) and the study date/time from the DICOM headers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipeline.result import AnalysisResult, Status

from .dataset import Case, DatasetStore, StudyRecord, case_id_for, now_iso
from .studies import StudyInfo, as_files, link_files, read_study_info

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpansionRule:
    """The seed's definition of hematoma expansion (Lu et al. 2024): absolute OR relative growth."""

    abs_ml: float = 6.0
    rel: float = 0.33

    def __post_init__(self) -> None:
        if self.abs_ml <= 0 or self.rel <= 0:
            raise ValueError(f"expansion thresholds must be positive, got abs_ml={self.abs_ml}, rel={self.rel}")

    def label(self, baseline_ml: float, followup_ml: float) -> int:
        if baseline_ml <= 0:
            raise ValueError(f"baseline volume must be positive, got {baseline_ml}")
        growth = followup_ml - baseline_ml
        return int(growth > self.abs_ml or growth / baseline_ml > self.rel)


@dataclass(frozen=True)
class LabelPolicy:
    """When a later study counts as the follow-up of a baseline."""

    min_hours: float = 6.0
    max_hours: float = 72.0
    min_baseline_ml: float = 1.0   # below this there is no hematoma to grow: no case
    rule: ExpansionRule = ExpansionRule()
    keep_images: bool = True       # hard-link/copy baseline series into the store (the spool is pruned)
    keep_days: float = 7.0         # images of a study that found no follow-up by then are dropped

    def __post_init__(self) -> None:
        if not 0 <= self.min_hours < self.max_hours:
            raise ValueError(f"follow-up window must satisfy 0 <= min < max, got {self.min_hours}-{self.max_hours} h")

    @classmethod
    def from_mapping(cls, m: dict | None) -> "LabelPolicy":
        """From flat settings (e.g. a config section's ``model_dump()``); missing keys keep the defaults.

        Keys: followup_min_hours, followup_max_hours, min_baseline_ml, expansion_abs_ml, expansion_rel.
        """
        m = m or {}
        d, r = cls(), ExpansionRule()
        return cls(min_hours=float(m.get("followup_min_hours", d.min_hours)),
                   max_hours=float(m.get("followup_max_hours", d.max_hours)),
                   min_baseline_ml=float(m.get("min_baseline_ml", d.min_baseline_ml)),
                   rule=ExpansionRule(float(m.get("expansion_abs_ml", r.abs_ml)), float(m.get("expansion_rel", r.rel))))


def on_analysis(
    store: DatasetStore,
    series_files: Path | Sequence[Path],
    result: AnalysisResult,
    *,
    seg_files: Sequence[Path] = (),
    policy: LabelPolicy = LabelPolicy(),
) -> Case | None:
    """Record one finished analysis; label a baseline when this study completes a pair.

    ``store`` is a DatasetStore opened with the node's pseudonymizer; ``series_files`` is the
    analysed series (a directory or its files); ``seg_files`` the model-1 SEG written for it. Returns
    the case created or updated, else None. Never raises: a failure here must not fail the delivery of
    a result, so it is logged (without PHI) and swallowed.
    """
    try:
        return record_analysis(store, series_files, result, seg_files=seg_files, policy=policy)
    except Exception:  # noqa: BLE001
        log.exception("training label hook failed; the analysis result is unaffected")
        return None


def record_analysis(
    store: DatasetStore,
    series_files: Path | Sequence[Path],
    result: AnalysisResult,
    *,
    seg_files: Sequence[Path] = (),
    policy: LabelPolicy = LabelPolicy(),
    info: StudyInfo | None = None,
) -> Case | None:
    """``on_analysis`` without the safety net (raises); ``info`` skips reading the headers."""
    info = info or read_study_info(series_files)
    if not info.patient_id:
        log.info("study without PatientID: not used for labels")
        return None
    patient = store.patient_hash(info.patient_id, info.issuer)
    analysed = result.status == Status.ANALYZED and result.volume_ml is not None
    series_dir = mask_path = None
    if analysed and policy.keep_images and result.volume_ml >= policy.min_baseline_ml:
        # Only a study that can be a baseline needs its images kept for training.
        base = store.files_dir(info.study_uid)
        series_dir = str(link_files(as_files(series_files), base / "series"))
        if seg_files:
            mask_path = str(link_files(seg_files, base / "seg") / "00000.dcm")
    store.record_study(StudyRecord(
        study_uid=info.study_uid, patient_hash=patient,
        study_time=info.study_time.isoformat() if info.study_time else None,
        volume_ml=result.volume_ml if analysed else None, status=result.status.value,
        model_versions=dict(result.model_versions), series_dir=series_dir, mask_path=mask_path,
        analysed_at=now_iso(),
    ))
    store.prune_now_and_then(keep_days=policy.keep_days)
    if info.study_time is None:
        log.info("patient %s: study without a date/time, cannot be paired", patient[:8])
        return None
    return pair_patient(store, patient, info.study_uid, policy)


def pair_patient(store: DatasetStore, patient: str, study_uid: str, policy: LabelPolicy) -> Case | None:
    """(Re)label every baseline of ``patient`` that ``study_uid`` may complete, in either arrival order.

    A baseline takes the earliest analysed study 6-72 h after it; a study that is already some
    baseline's follow-up is not itself a baseline.
    """
    studies = [s for s in store.studies_of(patient) if s.time is not None]
    changed: Case | None = None
    for base in studies:
        if base.volume_ml is None or base.volume_ml < policy.min_baseline_ml or store.is_followup(base.study_uid):
            continue
        followups = [
            s for s in studies
            if s.volume_ml is not None and s.study_uid != base.study_uid
            and policy.min_hours <= (s.time - base.time).total_seconds() / 3600 <= policy.max_hours
        ]
        if not followups:
            continue
        fu = min(followups, key=lambda s: s.time)
        if study_uid not in (base.study_uid, fu.study_uid):
            continue
        existing = store.case_for_baseline(base.study_uid)
        if existing is not None and existing.label_source != "followup":
            continue  # an imported label is the site's word; do not overwrite it
        interval = (fu.time - base.time).total_seconds() / 3600
        label = policy.rule.label(base.volume_ml, fu.volume_ml)
        changed = store.upsert_case(Case(
            case_id=case_id_for("node", base.study_uid), patient_hash=patient, source="node", label=label,
            label_source="followup", baseline_study_uid=base.study_uid, followup_study_uid=fu.study_uid,
            baseline_volume_ml=base.volume_ml, followup_volume_ml=fu.volume_ml, interval_h=round(interval, 3),
            baseline_dir=base.series_dir, baseline_mask=None, excluded=False, exclude_reason=None,
            extra={"baseline_models": base.model_versions, "followup_models": fu.model_versions, "seg": base.mask_path,
                   "rule": {"abs_ml": policy.rule.abs_ml, "rel": policy.rule.rel}},
            created="", updated="",
        ))
        log.info("patient %s: case %s labelled %s (%.1f → %.1f mL in %.1f h)", patient[:8], changed.case_id,
                 "expansion" if label else "no expansion", base.volume_ml, fu.volume_ml, interval)
    return changed


# ------------------------------------------------------------------------------ model-1 measurement
