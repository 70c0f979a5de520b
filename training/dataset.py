"""The training-case store: what the node learned from its own patients, plus imported cases.

A SQLite database under ``<data_dir>/training/dataset.sqlite3``, deliberately separate from the node's
index: the index is about delivering results and is pruned by retention, this store is about learning
and keeps what a retrain needs (baseline images hard-linked or copied in, the baseline mask, both
volumes, both study UIDs, the label and where it came from).

Two tables:

- ``studies``: every study the node analysed (pairing candidates): hashed patient, study time, model-1
  volume, and where the stored copy of the baseline images and mask are.
- ``cases``: one per baseline study with a label, automatic (``label_source='followup'``: a follow-up CT
  6-72 h later, volumes compared by the seed's rule) or given (``'import'``). ``excluded`` cases stay in
  the table (reviewable, reversible) but never reach a cohort.

Patient IDs never enter the store: callers pass ``patient_hash`` (see ``hash_patient_id``).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import hashlib
import json
import os
import secrets
import sqlite3
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid       TEXT PRIMARY KEY,
    patient_hash    TEXT NOT NULL,
    study_time      TEXT,               -- ISO 8601, naive local time from the DICOM header
    volume_ml       REAL,               -- model 1, NULL when the analysis could not assess
    status          TEXT NOT NULL,
    model_versions  TEXT NOT NULL DEFAULT '{}',
    series_dir      TEXT,               -- stored copy of the analysed series (inside the store)
    mask_path       TEXT,               -- stored model-1 mask / SEG of that series
    analysed_at     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_patient ON studies(patient_hash, study_time);
CREATE TABLE IF NOT EXISTS cases (
    case_id             TEXT PRIMARY KEY,
    patient_hash        TEXT NOT NULL,
    source              TEXT NOT NULL,  -- node | import
    label               INTEGER NOT NULL CHECK (label IN (0, 1)),
    label_source        TEXT NOT NULL,  -- followup | import
    baseline_study_uid  TEXT NOT NULL UNIQUE,
    followup_study_uid  TEXT,
    baseline_volume_ml  REAL,
    followup_volume_ml  REAL,
    interval_h          REAL,
    baseline_dir        TEXT,
    baseline_mask       TEXT,
    excluded            INTEGER NOT NULL DEFAULT 0,
    exclude_reason      TEXT,
    extra               TEXT NOT NULL DEFAULT '{}',
    created             TEXT NOT NULL,
    updated             TEXT NOT NULL
);
"""


class DatasetError(ValueError):
    """A dataset operation that cannot be done as asked (unknown case, bad import row...)."""


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def hash_patient_id(patient_id: str, salt: str) -> str:
    """Stable pseudonym for pairing a patient's studies; the salt stays on the node."""
    return hashlib.sha256(f"{salt}\x00{patient_id.strip()}".encode()).hexdigest()[:24]


def case_id_for(source: str, baseline_study_uid: str) -> str:
    """Deterministic, path-safe case id (never the raw UID)."""
    digest = hashlib.sha256(baseline_study_uid.encode()).hexdigest()[:12]
    return f"{source[0]}-{digest}"


@dataclass(frozen=True)
class StudyRecord:
    study_uid: str
    patient_hash: str
    study_time: str | None
    volume_ml: float | None
    status: str
    model_versions: dict
    series_dir: str | None
    mask_path: str | None
    analysed_at: str

    @property
    def time(self) -> _dt.datetime | None:
        return _dt.datetime.fromisoformat(self.study_time) if self.study_time else None


@dataclass(frozen=True)
class Case:
    case_id: str
    patient_hash: str
    source: str
    label: int
    label_source: str
    baseline_study_uid: str
    followup_study_uid: str | None
    baseline_volume_ml: float | None
    followup_volume_ml: float | None
    interval_h: float | None
    baseline_dir: str | None
    baseline_mask: str | None
    excluded: bool
    exclude_reason: str | None
    extra: dict
    created: str
    updated: str


def _row_to(cls, row: sqlite3.Row):
    data = dict(row)
    for key in ("model_versions", "extra"):
        if key in data:
            data[key] = json.loads(data[key] or "{}")
    if "excluded" in data:
        data["excluded"] = bool(data["excluded"])
    return cls(**{f.name: data[f.name] for f in fields(cls)})


class DatasetStore:
    """The store under ``<data_dir>/training``; open it per use, it is just a SQLite file."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "dataset.sqlite3"
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        finally:
            db.close()

    @classmethod
    def for_data_dir(cls, data_dir: Path | str) -> "DatasetStore":
        return cls(Path(data_dir) / "training")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    # ------------------------------------------------------------------ node-side pseudonyms and files
    def salt(self) -> str:
        """Per-node secret for patient pseudonyms, created once (0600)."""
        path = self.root / "patient-salt"
        if not path.is_file():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(16))
        return path.read_text().strip()

    def patient_hash(self, patient_id: str) -> str:
        return hash_patient_id(patient_id, self.salt())

    def files_dir(self, study_uid: str) -> Path:
        """Where the store keeps its copy of one study's files (named by hash, never by raw UID)."""
        return self.root / "studies" / hashlib.sha256(study_uid.encode()).hexdigest()[:24]

    # ------------------------------------------------------------------ studies
    def record_study(self, rec: StudyRecord) -> None:
        """Insert or replace (a re-analysis of the same study replaces the earlier record)."""
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO studies VALUES (?,?,?,?,?,?,?,?,?)",
                (rec.study_uid, rec.patient_hash, rec.study_time, rec.volume_ml, rec.status,
                 json.dumps(rec.model_versions, sort_keys=True), rec.series_dir, rec.mask_path, rec.analysed_at),
            )

    def study(self, study_uid: str) -> StudyRecord | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
        return _row_to(StudyRecord, row) if row else None

    def studies_of(self, patient_hash: str) -> list[StudyRecord]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM studies WHERE patient_hash=? ORDER BY study_time", (patient_hash,)).fetchall()
        return [_row_to(StudyRecord, r) for r in rows]

    # ------------------------------------------------------------------ cases
    def upsert_case(self, case: Case) -> Case:
        now = now_iso()
        with self._connect() as db:
            old = db.execute("SELECT created, excluded, exclude_reason FROM cases WHERE case_id=?", (case.case_id,)).fetchone()
            data = asdict(case)
            data["created"] = old["created"] if old else now
            data["updated"] = now
            if old:  # a relabel never silently re-includes a case a reviewer excluded
                data["excluded"] = bool(old["excluded"]) or case.excluded
                data["exclude_reason"] = old["exclude_reason"] or case.exclude_reason
            data["extra"] = json.dumps(data["extra"], sort_keys=True)
            data["excluded"] = int(data["excluded"])
            cols = [f.name for f in fields(Case)]
            db.execute(
                f"INSERT OR REPLACE INTO cases ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                [data[c] for c in cols],
            )
        return self.case(case.case_id)

    def case(self, case_id: str) -> Case:
        with self._connect() as db:
            row = db.execute("SELECT * FROM cases WHERE case_id=?", (case_id,)).fetchone()
        if row is None:
            raise DatasetError(f"no case {case_id!r} in {self.path}")
        return _row_to(Case, row)

    def case_for_baseline(self, study_uid: str) -> Case | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM cases WHERE baseline_study_uid=?", (study_uid,)).fetchone()
        return _row_to(Case, row) if row else None

    def is_followup(self, study_uid: str) -> bool:
        with self._connect() as db:
            return db.execute("SELECT 1 FROM cases WHERE followup_study_uid=?", (study_uid,)).fetchone() is not None

    def cases(self, *, include_excluded: bool = True, source: str | None = None) -> list[Case]:
        sql, args = "SELECT * FROM cases WHERE 1=1", []
        if not include_excluded:
            sql += " AND excluded=0"
        if source:
            sql += " AND source=?"
            args.append(source)
        with self._connect() as db:
            rows = db.execute(sql + " ORDER BY created, case_id", args).fetchall()
        return [_row_to(Case, r) for r in rows]

    def exclude(self, case_id: str, reason: str, *, excluded: bool = True) -> Case:
        """Keep the case for review but out of every cohort (``excluded=False`` re-includes it)."""
        self.case(case_id)
        with self._connect() as db:
            db.execute("UPDATE cases SET excluded=?, exclude_reason=?, updated=? WHERE case_id=?",
                       (int(excluded), reason if excluded else None, now_iso(), case_id))
        return self.case(case_id)

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            row = db.execute(
                "SELECT COUNT(*) n, SUM(excluded) ex, SUM(CASE WHEN excluded=0 AND label=1 THEN 1 ELSE 0 END) pos,"
                " (SELECT COUNT(*) FROM studies) studies FROM cases"
            ).fetchone()
        return {"cases": row["n"] or 0, "excluded": row["ex"] or 0, "expanders": row["pos"] or 0,
                "studies": row["studies"] or 0}

    # ------------------------------------------------------------------ cohort export
    def write_manifest(self, path: Path | str, cases: list[Case] | None = None) -> Path:
        """The included cases as a manifest CSV in the cohort format the trainers read."""
        cases = self.cases(include_excluded=False) if cases is None else cases
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        cols = ["case_id", "patient_id", "baseline_dir", "baseline_mask", "baseline_volume_ml", "followup_volume_ml",
                "expansion", "baseline_study_uid", "followup_study_uid", "interval_h", "label_source", "source"]
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            for c in cases:
                w.writerow({
                    "case_id": c.case_id, "patient_id": c.patient_hash, "baseline_dir": c.baseline_dir or "",
                    "baseline_mask": c.baseline_mask or "", "baseline_volume_ml": _fmt(c.baseline_volume_ml),
                    "followup_volume_ml": _fmt(c.followup_volume_ml), "expansion": c.label,
                    "baseline_study_uid": c.baseline_study_uid, "followup_study_uid": c.followup_study_uid or "",
                    "interval_h": _fmt(c.interval_h), "label_source": c.label_source, "source": c.source,
                })
        return path


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"
