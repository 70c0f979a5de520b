"""A site's labelled studies into the dataset store: ``ich-node dataset import DIR LABELS.csv``.

Model 1 measures every baseline (the classifier trains on its mask, as at inference) and every
follow-up (the label by the seed's rule); bad rows are reported with their line number and skipped.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from .dataset import Case, DatasetError, DatasetStore, case_id_for
from .labels import LabelPolicy
from .studies import as_files, link_files, measure, read_study_info


@dataclass(frozen=True)
class ImportOutcome:
    imported: list[Case]
    errors: list[str]           # "labels.csv line N: why" for every row not imported


def _parse_label(text: str) -> int | None:
    value = (text or "").strip().lower()
    if value == "":
        return None
    if value in ("1", "yes", "true", "expansion", "expanded"):
        return 1
    if value in ("0", "no", "false", "none", "no expansion"):
        return 0
    raise DatasetError(f"label {text!r} is not one of 1/0, yes/no, true/false")


def _inside(root: Path, rel: str, what: str) -> Path:
    path = (root / rel).resolve()
    if root.resolve() not in path.parents and path != root.resolve():
        raise DatasetError(f"{what} {rel!r} lies outside {root}")
    if not path.is_dir():
        raise DatasetError(f"{what} {rel!r} is not a directory under {root}")
    return path


def import_cases(store: DatasetStore, root: Path | str, labels_csv: Path | str, *, segmenter_dir: Path | None,
                 policy=None, progress=lambda _m: None) -> ImportOutcome:
    """Import a site's labelled cases: ``labels.csv`` rows name a baseline study folder under ``root`` and
    either a ``label`` or a ``followup`` study folder.

    Columns: ``patient_id``, ``baseline``, then ``label`` (1/0/yes/no) or ``followup``; optional ``case_id``.
    Model 1 (``segmenter_dir``; None = classical) measures every baseline (the classifier trains on its
    mask, as at inference) and every follow-up (the label by the seed's rule). Bad rows are reported with
    their line number and skipped; good rows are imported.
    """
    from pipeline.segment import load_segmenter

    policy = policy or LabelPolicy()
    root, labels_csv = Path(root), Path(labels_csv)
    if not labels_csv.is_file():
        raise DatasetError(f"labels file {labels_csv} not found")
    with open(labels_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise DatasetError(f"{labels_csv} has no rows")
    missing = {"patient_id", "baseline"} - set(rows[0])
    if missing or not ({"label", "followup"} & set(rows[0])):
        raise DatasetError(f"{labels_csv} needs columns patient_id, baseline and label and/or followup "
                           f"(has: {', '.join(rows[0])})")
    segmenter = load_segmenter(segmenter_dir)
    imported, errors = [], []
    for line, row in enumerate(rows, start=2):
        try:
            imported.append(_import_row(store, root, row, segmenter, policy))
            progress(f"line {line}: case {imported[-1].case_id} label {imported[-1].label}")
        except Exception as exc:  # noqa: BLE001 - CannotAssess, DatasetError, unreadable DICOM...
            errors.append(f"{labels_csv.name} line {line}: {exc}")
            progress(errors[-1])
    return ImportOutcome(imported, errors)


def _import_row(store: DatasetStore, root: Path, row: dict, segmenter, policy) -> Case:

    patient_id = (row.get("patient_id") or "").strip()
    if not patient_id:
        raise DatasetError("patient_id is empty")
    label = _parse_label(row.get("label", ""))
    fu_rel = (row.get("followup") or "").strip()
    if (label is None) == (not fu_rel):
        raise DatasetError("give either a label or a followup study, not both or neither")
    base_dir = _inside(root, (row.get("baseline") or "").strip() or "<empty>", "baseline")
    base_info = read_study_info(base_dir)
    files = store.files_dir(base_info.study_uid)
    base = measure(base_dir, None, files / "mask.nii.gz", segmenter=segmenter)
    if base.volume_ml < policy.min_baseline_ml:
        raise DatasetError(f"model 1 finds {base.volume_ml:.2f} mL in the baseline (< {policy.min_baseline_ml} mL): "
                           f"no hematoma to learn expansion from")
    fu_uid = fu_ml = interval = None
    label_source = "import"
    if fu_rel:
        fu_dir = _inside(root, fu_rel, "followup")
        fu_info = read_study_info(fu_dir)
        if base_info.study_time and fu_info.study_time:
            interval = (fu_info.study_time - base_info.study_time).total_seconds() / 3600
            if not policy.min_hours <= interval <= policy.max_hours:
                raise DatasetError(f"follow-up is {interval:.1f} h after the baseline, outside "
                                   f"{policy.min_hours:g}-{policy.max_hours:g} h")
        fu_ml = measure(fu_dir, None, segmenter=segmenter).volume_ml
        fu_uid, label, label_source = fu_info.study_uid, policy.rule.label(base.volume_ml, fu_ml), "followup"
    series_dir = link_files(as_files(base_dir), files / "series")
    return store.upsert_case(Case(
        case_id=case_id_for("import", base_info.study_uid), patient_hash=store.patient_hash(patient_id),
        source="import", label=int(label), label_source=label_source, baseline_study_uid=base_info.study_uid,
        followup_study_uid=fu_uid, baseline_volume_ml=round(base.volume_ml, 3),
        followup_volume_ml=None if fu_ml is None else round(fu_ml, 3),
        interval_h=None if interval is None else round(interval, 3), baseline_dir=str(series_dir),
        baseline_mask=str(base.mask_path), excluded=False, exclude_reason=None,
        extra={"segmenter": getattr(segmenter, "version", None), "site_case_id": row.get("case_id") or None},
        created="", updated="",
    ))
