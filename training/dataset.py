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

Patient IDs never enter the store, only the node's keyed pseudonyms: whoever opens the store to add
studies passes the node's pseudonymizer (``DatasetStore(root, pseudonym=...)``, dicomnode.pseudonym; the
same site key names the patient in the node's index and logs). A store from before the site key has its
own salt (``patient-salt``, see ``hash_patient_id``); its rows are renamed when the store is opened with
the pseudonymizer (see ``DatasetStore.migrate_legacy``), and the salt file goes when no row needs it.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import hashlib
import json
import sqlite3
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterator

from ichutil.sqlitetx import immediate

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


Pseudonym = Callable[..., str]  # (patient_id, issuer=None) -> the node's keyed pseudonym
LEGACY_SALT = "patient-salt"
_LEGACY_HEX = 24  # length of hash_patient_id's values; the node's pseudonyms are longer


def hash_patient_id(patient_id: str, salt: str) -> str:
    """The legacy pseudonym (a store's own salt, before the node's site key); kept to migrate old rows."""
    return hashlib.sha256(f"{salt}\x00{patient_id.strip()}".encode()).hexdigest()[:_LEGACY_HEX]


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

    def __init__(self, root: Path | str, pseudonym: Pseudonym | None = None) -> None:
        """``pseudonym``: the node's pseudonymizer, needed only to add studies (``patient_hash``)."""
        self.root = Path(root)
        self._pseudonym = pseudonym
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "dataset.sqlite3"
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        finally:
            db.close()
        salt = self.root / LEGACY_SALT
        self._legacy_salt = salt.read_text().strip() if pseudonym is not None and salt.is_file() else None
        if self._legacy_salt is not None:
            self.migrate_legacy()

    @classmethod
    def for_data_dir(cls, data_dir: Path | str, pseudonym: Pseudonym | None = None) -> "DatasetStore":
        return cls(Path(data_dir) / "training", pseudonym)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA busy_timeout=30000")
            with immediate(db):
                yield db
        finally:
            db.close()

    # ------------------------------------------------------------------ node-side pseudonyms and files
    def patient_hash(self, patient_id: str, issuer: str | None = None) -> str:
        """The patient's pseudonym (the node's site key); renames the patient's legacy rows, if any."""
        if self._pseudonym is None:
            raise DatasetError("the dataset store was opened without the node's pseudonymizer "
                               "(DatasetStore(root, pseudonym=...)): it cannot name patients")
        name = self._pseudonym(patient_id, issuer)
        if self._legacy_salt is not None:
            self._rename(hash_patient_id(patient_id, self._legacy_salt), name)
        return name

    def migrate_legacy(self) -> int:
        """Rename rows named with the store's legacy salt to the node's pseudonyms; returns how many are left.

        A legacy name is renamed when the store still holds images of one of its studies (the patient ID
        is read from them, and checked against the legacy name), else when ``patient_hash`` next meets
        its patient (a new study of the same patient pairs with the old ones as before). Rows that are
        never renamed keep their legacy name: salted, so not reversible without the salt file, which is
        deleted as soon as no row needs it (after that such rows can no longer pair).
        """
        from .studies import read_study_info

        with self._connect() as db:
            rows = db.execute(
                "SELECT patient_hash, series_dir FROM studies WHERE length(patient_hash) = ?"
                " UNION ALL SELECT patient_hash, baseline_dir FROM cases WHERE length(patient_hash) = ?",
                (_LEGACY_HEX, _LEGACY_HEX)).fetchall()
        done: set[str] = set()
        for old, where in rows:
            if old in done or not where or not Path(where).is_dir():
                continue
            try:
                info = read_study_info(Path(where))
            except ValueError:  # no readable file left
                continue
            if info.patient_id and hash_patient_id(info.patient_id, self._legacy_salt) == old:
                self._rename(old, self._pseudonym(info.patient_id, info.issuer))
                done.add(old)
        return self._legacy_left()

    def _rename(self, old: str, new: str) -> None:
        with self._connect() as db:
            renamed = db.execute("UPDATE studies SET patient_hash=? WHERE patient_hash=?", (new, old)).rowcount
            renamed += db.execute("UPDATE cases SET patient_hash=? WHERE patient_hash=?", (new, old)).rowcount
        if renamed:
            self._legacy_left()

    def _legacy_left(self) -> int:
        """Rows still named with the legacy salt; the salt file is deleted when there are none."""
        with self._connect() as db:
            left = db.execute("SELECT (SELECT COUNT(*) FROM studies WHERE length(patient_hash) = ?)"
                              " + (SELECT COUNT(*) FROM cases WHERE length(patient_hash) = ?)",
                              (_LEGACY_HEX, _LEGACY_HEX)).fetchone()[0]
        if not left:
            (self.root / LEGACY_SALT).unlink(missing_ok=True)
            self._legacy_salt = None
        return left

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

    def prune(self, *, keep_days: float = 7.0, now: _dt.datetime | None = None) -> int:
        """Drop the kept images of studies that never became a case baseline within ``keep_days``.

        Every analysed study with a hematoma is kept in case its follow-up comes (≤ 72 h by default);
        after a week without one, the copy only costs disk. Study records stay (they are small and
        let a very late follow-up still be recognised as one). Returns the number of studies pruned.
        """
        import shutil

        now = now or _dt.datetime.now(_dt.timezone.utc)
        cutoff = (now - _dt.timedelta(days=keep_days)).isoformat(timespec="seconds")
        with self._connect() as db:
            rows = db.execute(
                "SELECT study_uid FROM studies WHERE series_dir IS NOT NULL AND analysed_at < ? AND study_uid NOT IN "
                "(SELECT baseline_study_uid FROM cases)", (cutoff,)).fetchall()
            for r in rows:
                db.execute("UPDATE studies SET series_dir=NULL, mask_path=NULL WHERE study_uid=?", (r["study_uid"],))
        for r in rows:
            shutil.rmtree(self.files_dir(r["study_uid"]), ignore_errors=True)
        return len(rows)

    def prune_now_and_then(self, every_s: float = 3600.0, **kw) -> int:
        """``prune`` at most once per ``every_s`` (a marker file's mtime), cheap enough for every analysis."""
        import time

        marker = self.root / ".pruned"
        try:
            if time.time() - marker.stat().st_mtime < every_s:
                return 0
        except FileNotFoundError:
            pass
        marker.touch()
        return self.prune(**kw)

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
    def export_cohort(self, out_dir: Path | str, *, segmenter_dir: Path | None,
                      progress=lambda _m: None) -> Path:
        """The included cases as a cohort directory (``manifest.csv``, absolute paths) for retraining.

        Cases without a stored mask get one from model 1 (``segmenter_dir``, the served version), cached
        per segmenter version: the classifier then trains on the same kind of mask it sees at inference.
        """
        from .studies import measure
        from pipeline.segment import load_segmenter

        cases = self.cases(include_excluded=False)
        segmenter = None
        ready = []
        for c in cases:
            if not (c.baseline_mask and Path(c.baseline_mask).is_file()):
                if not (c.baseline_dir and Path(c.baseline_dir).is_dir()):
                    progress(f"case {c.case_id}: baseline images missing from the store; skipped")
                    continue
                segmenter = segmenter or load_segmenter(segmenter_dir)
                tag = getattr(segmenter, "version", "x")
                mask = self.files_dir(c.baseline_study_uid) / f"mask-seg{tag}.nii.gz"
                if not mask.is_file():
                    measure(c.baseline_dir, None, mask, segmenter=segmenter)
                c = self.upsert_case(Case(**{**c.__dict__, "baseline_mask": str(mask)}))
            ready.append(c)
        out_dir = Path(out_dir)
        self.write_manifest(out_dir / "manifest.csv", ready)
        return out_dir

    def write_manifest(self, path: Path | str, cases: list[Case] | None = None) -> Path:
        """The included cases as a manifest CSV in the cohort format the trainers read.

        Every mask here is model 1's (``mask_source=model1``), never a reference segmentation.
        """
        cases = self.cases(include_excluded=False) if cases is None else cases
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        cols = ["case_id", "patient_id", "baseline_dir", "baseline_mask", "baseline_volume_ml", "followup_volume_ml",
                "expansion", "baseline_study_uid", "followup_study_uid", "interval_h", "label_source", "source", "mask_source"]
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
                    "mask_source": "model1",
                })
        return path


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


# ---------------------------------------------------------------------------------- site imports
