"""SQLite (WAL) index of everything the node has received: patients, studies, series, instances.

Why SQLite: the index is written from several SCP threads and read by the scheduler and the
CLI; WAL gives concurrent readers with one writer and survives ``kill -9``. A row is committed
before the C-STORE is acknowledged, so an acknowledged instance is always findable after a
crash. Jobs and results are not here: the queue owns them.

Completion is tracked per series: ``last_received_at`` moves with every new or changed
instance and ``changed_since_analysis`` is set; a claim (``claim_series`` / ``claim_study``)
clears the flag with a compare-and-set on ``last_received_at`` and bumps
``analysis_generation``, so an instance that arrives between "ready" and "claim" is never
lost: the claim fails and the series becomes ready again after the next quiet period.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ..pseudonym import PSEUDONYM_HEX
from ichutil.sqlitetx import immediate

if TYPE_CHECKING:
    from ..pseudonym import Pseudonymizer

LOG = logging.getLogger(__name__)

# 2: instances.sha256 became instances.digest (dicomnode.store.digest)
# 3: patients.patient_hash holds keyed pseudonyms (dicomnode.pseudonym); see migrate_pseudonyms
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS patients (
    id INTEGER PRIMARY KEY,
    patient_hash TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL UNIQUE,
    patient_id INTEGER NOT NULL REFERENCES patients(id),
    first_received_at REAL NOT NULL,
    analysis_generation INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    series_uid TEXT NOT NULL UNIQUE,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    modality TEXT,
    calling_ae TEXT,
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    changed_since_analysis INTEGER NOT NULL DEFAULT 1,
    analysis_generation INTEGER NOT NULL DEFAULT 0,
    queued_at REAL,
    analyzed_at REAL,
    analyzed_generation INTEGER,
    state TEXT NOT NULL DEFAULT 'receiving',
    note TEXT,
    released_at REAL
);
CREATE INDEX IF NOT EXISTS series_ready_ix ON series(changed_since_analysis, last_received_at);
CREATE INDEX IF NOT EXISTS series_study_ix ON series(study_id);
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY,
    sop_uid TEXT NOT NULL UNIQUE,
    series_id INTEGER NOT NULL REFERENCES series(id),
    path TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    transfer_syntax TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    instance_number INTEGER
);
CREATE INDEX IF NOT EXISTS instances_series_ix ON instances(series_id);
"""


class StoreOutcome(str, Enum):
    NEW = "new"  # first time this SOP Instance UID was seen
    DUPLICATE = "duplicate"  # same bytes again: nothing changed
    REPLACED = "replaced"  # same SOP Instance UID, different bytes: series flagged changed


@dataclass(frozen=True)
class InstanceRecord:
    """What the SCP knows about one received instance (all UIDs already validated)."""

    sop_uid: str
    sop_class: str
    transfer_syntax: str
    study_uid: str
    series_uid: str
    patient_hash: str
    modality: str | None
    path: str  # relative to the spool root
    digest: str  # dicomnode.store.digest of the data set
    size: int
    instance_number: int | None = None
    calling_ae: str | None = None


@dataclass(frozen=True)
class InstanceInfo:
    sop_uid: str
    series_uid: str
    path: str  # relative to the spool root
    digest: str  # dicomnode.store.digest of the data set (bare SHA-256 hex in rows from schema 1)
    size: int
    received_at: float
    transfer_syntax: str
    sop_class: str
    instance_number: int | None


@dataclass(frozen=True)
class SeriesInfo:
    series_uid: str
    study_uid: str
    patient_hash: str
    modality: str | None
    calling_ae: str | None
    instance_count: int
    first_received_at: float
    last_received_at: float
    changed_since_analysis: bool
    analysis_generation: int  # claims so far; 0 = never analysed
    analyzed_generation: int | None  # generation whose analysis finished
    state: str  # receiving | queued | analyzed | ignored
    note: str | None


@dataclass(frozen=True)
class StudyReady:
    """A study whose series are quiet and at least one of them changed since the last claim."""

    study_uid: str
    patient_hash: str
    last_received_at: float  # pass back to claim_study (compare-and-set)
    analysis_generation: int
    changed_series: tuple[str, ...]


class Index:
    """Thread-safe handle on the SQLite index. One per process; share it between threads."""

    def __init__(self, path: str | Path, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a write transaction holds
        # the write lock from its first statement (no upgrade deadlocks between processes).
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives the process being killed (kill -9) but the last
            # commits may roll back on power loss. The spool is the durable truth (each file is
            # fsynced under its final name before the ack), and ``reconcile`` re-indexes any spool
            # file the index lost; this saves one fsync (≈ a journal commit) per received instance.
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.executescript(_SCHEMA)
            if "sha256" in {r[1] for r in self._db.execute("PRAGMA table_info(instances)")}:  # schema 1
                self._db.execute("ALTER TABLE instances RENAME COLUMN sha256 TO digest")
            if "released_at" not in {r[1] for r in self._db.execute("PRAGMA table_info(series)")}:  # before 2026-12
                self._db.execute("ALTER TABLE series ADD COLUMN released_at REAL")
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version < 3 and self._db.execute("SELECT 1 FROM patients LIMIT 1").fetchone() is None:
                version = SCHEMA_VERSION  # no patient to rename: a new index, or nothing received yet
            # schema 3 needs the site key and the spool: migrate_pseudonyms, at the node's start
            self.schema_version = max(2, min(version, SCHEMA_VERSION))
            self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                             (str(self.schema_version),))

    # -- plumbing ----------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, immediate(self._db) as db:
            yield db

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- schema 3: keyed pseudonyms ---------------------------------------------------------------

    def migrate_pseudonyms(self, spool_root: str | Path, pseudonym: Pseudonymizer) -> dict[str, int]:
        """Schema 2 → 3: replace every unkeyed patient hash by the keyed pseudonym of the patient.

        The patient ID is read again from the patient's oldest spool file that can still be read
        (its header, as the SCP reads it, so the value matches what the SCP computes for the next
        study of that patient). A patient whose files are all gone (retention) gets
        ``pseudonym.unlinkable(old hash)``: it keeps its studies apart from other patients' but
        can never pair with the patient's new studies, and the brute-forceable old hash is gone.
        Rows already keyed (:data:`PSEUDONYM_HEX` digits) are left as they are, so running it
        again, or after an older node wrote to the index, is harmless. Returns the counts
        ``{"rekeyed": ..., "unlinked": ...}`` (empty when the index is at schema 3 already).
        """
        if self.schema_version >= 3:
            return {}
        root = Path(spool_root)
        old = self._query("SELECT id, patient_hash FROM patients WHERE length(patient_hash) != ?", (PSEUDONYM_HEX,))
        renamed: dict[int, str] = {}
        counts = {"rekeyed": 0, "unlinked": 0}
        for row in old:
            paths = self._query(
                "SELECT i.path FROM instances i JOIN series s ON s.id = i.series_id JOIN studies st ON st.id = s.study_id"
                " WHERE st.patient_id = ? ORDER BY i.received_at, i.id", (row["id"],))
            new = next((p for p in (_patient_of_file(root / r["path"], pseudonym) for r in paths) if p), None)
            counts["rekeyed" if new else "unlinked"] += 1
            renamed[row["id"]] = new or pseudonym.unlinkable(row["patient_hash"])
        with self._tx() as db:
            for pid, name in renamed.items():
                same = db.execute("SELECT id FROM patients WHERE patient_hash = ?", (name,)).fetchone()
                if same is not None and same["id"] != pid:  # two old rows of one patient: merge them
                    db.execute("UPDATE studies SET patient_id = ? WHERE patient_id = ?", (same["id"], pid))
                    db.execute("DELETE FROM patients WHERE id = ?", (pid,))
                else:
                    db.execute("UPDATE patients SET patient_hash = ? WHERE id = ?", (name, pid))
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self.schema_version = SCHEMA_VERSION
        if old:
            LOG.warning("index schema 3: %d patient hash(es) replaced by keyed pseudonyms, %d of them unlinkable "
                        "(no readable spool file left)", len(old), counts["unlinked"])
        return counts

    # -- writes from the SCP -----------------------------------------------------------------

    def lookup_digest(self, sop_uid: str) -> str | None:
        """Digest of the stored bytes of ``sop_uid``, or None if unknown (idempotence check)."""
        rows = self._query("SELECT digest FROM instances WHERE sop_uid = ?", (sop_uid,))
        return rows[0]["digest"] if rows else None

    def record_instance(self, rec: InstanceRecord, now: float | None = None) -> StoreOutcome:
        """Insert or update one instance and mark its series changed; commits before returning."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute(
                "SELECT i.id, i.digest, s.series_uid FROM instances i JOIN series s ON s.id = i.series_id WHERE i.sop_uid = ?",
                (rec.sop_uid,),
            ).fetchone()
            if row is not None and row["digest"] == rec.digest:
                return StoreOutcome.DUPLICATE
            series_id = self._ensure_series(db, rec, now)
            if row is None:
                db.execute(
                    "INSERT INTO instances(sop_uid, series_id, path, digest, size, received_at, transfer_syntax, sop_class, instance_number)"
                    " VALUES (?,?,?,?,?,?,?,?,?)",
                    (rec.sop_uid, series_id, rec.path, rec.digest, rec.size, now, rec.transfer_syntax, rec.sop_class, rec.instance_number),
                )
                outcome = StoreOutcome.NEW
            else:
                db.execute(
                    "UPDATE instances SET series_id=?, path=?, digest=?, size=?, received_at=?, transfer_syntax=?, sop_class=?, instance_number=?"
                    " WHERE id=?",
                    (series_id, rec.path, rec.digest, rec.size, now, rec.transfer_syntax, rec.sop_class, rec.instance_number, row["id"]),
                )
                outcome = StoreOutcome.REPLACED
            db.execute(
                "UPDATE series SET last_received_at = MAX(last_received_at, ?), changed_since_analysis = 1,"
                " state = CASE WHEN state = 'queued' THEN state ELSE 'receiving' END WHERE id = ?",
                (now, series_id),
            )
            return outcome

    def _ensure_series(self, db: sqlite3.Connection, rec: InstanceRecord, now: float) -> int:
        row = db.execute("SELECT id FROM series WHERE series_uid = ?", (rec.series_uid,)).fetchone()
        if row is not None:
            return row["id"]
        db.execute("INSERT OR IGNORE INTO patients(patient_hash) VALUES (?)", (rec.patient_hash,))
        pid = db.execute("SELECT id FROM patients WHERE patient_hash = ?", (rec.patient_hash,)).fetchone()["id"]
        db.execute("INSERT OR IGNORE INTO studies(study_uid, patient_id, first_received_at) VALUES (?,?,?)", (rec.study_uid, pid, now))
        sid = db.execute("SELECT id FROM studies WHERE study_uid = ?", (rec.study_uid,)).fetchone()["id"]
        cur = db.execute(
            "INSERT INTO series(series_uid, study_id, modality, calling_ae, first_received_at, last_received_at) VALUES (?,?,?,?,?,?)",
            (rec.series_uid, sid, rec.modality, rec.calling_ae, now, now),
        )
        return int(cur.lastrowid)

    # -- completion --------------------------------------------------------------------------

    _SERIES_SELECT = """
        SELECT s.series_uid, st.study_uid, p.patient_hash, s.modality, s.calling_ae,
               (SELECT COUNT(*) FROM instances i WHERE i.series_id = s.id) AS instance_count,
               s.first_received_at, s.last_received_at, s.changed_since_analysis, s.analysis_generation,
               s.analyzed_generation, s.state, s.note
        FROM series s JOIN studies st ON st.id = s.study_id JOIN patients p ON p.id = st.patient_id
    """

    @staticmethod
    def _series_info(r: sqlite3.Row) -> SeriesInfo:
        return SeriesInfo(
            series_uid=r["series_uid"], study_uid=r["study_uid"], patient_hash=r["patient_hash"], modality=r["modality"],
            calling_ae=r["calling_ae"], instance_count=r["instance_count"], first_received_at=r["first_received_at"],
            last_received_at=r["last_received_at"], changed_since_analysis=bool(r["changed_since_analysis"]),
            analysis_generation=r["analysis_generation"], analyzed_generation=r["analyzed_generation"],
            state=r["state"], note=r["note"],
        )

    def series_ready(self, quiet_seconds: float, now: float | None = None) -> list[SeriesInfo]:
        """Series changed since their last claim and quiet for ``quiet_seconds``, oldest first."""
        now = time.time() if now is None else now
        rows = self._query(
            self._SERIES_SELECT + " WHERE s.changed_since_analysis = 1 AND s.last_received_at <= ? ORDER BY s.last_received_at",
            (now - quiet_seconds,),
        )
        return [self._series_info(r) for r in rows]

    _STUDIES_SELECT = """
        SELECT st.study_uid, p.patient_hash, st.analysis_generation, MAX(s.last_received_at) AS last,
               GROUP_CONCAT(CASE WHEN s.changed_since_analysis = 1 THEN s.series_uid END) AS changed
        FROM studies st JOIN series s ON s.study_id = st.id JOIN patients p ON p.id = st.patient_id
        GROUP BY st.id
        HAVING SUM(s.changed_since_analysis) > 0 AND {having}
        ORDER BY last
    """

    def _studies(self, having: str, args: tuple) -> list[StudyReady]:
        """Studies with a changed series that also meet ``having`` (an aggregate over their series)."""
        rows = self._query(self._STUDIES_SELECT.format(having=having), args)
        return [
            StudyReady(r["study_uid"], r["patient_hash"], r["last"], r["analysis_generation"], tuple(sorted((r["changed"] or "").split(","))))
            for r in rows
        ]

    def studies_ready(self, quiet_seconds: float, now: float | None = None) -> list[StudyReady]:
        """Studies with a changed series where *every* series has been quiet for ``quiet_seconds``.

        Selection chooses among all series of a study, so a study waits for its slowest series.
        """
        now = time.time() if now is None else now
        return self._studies("MAX(s.last_received_at) <= ?", (now - quiet_seconds,))

    def mark_released(self, calling_ae: str | None, since: float, now: float | None = None) -> int:
        """An association from ``calling_ae`` opened at ``since`` was released normally: the changed
        series it delivered whole (first instance at or after ``since``) are complete as far as the
        sender is concerned. A series begun by an earlier association is not marked (the quiet period
        decides it). Returns how many series were marked."""
        now = time.time() if now is None else now
        with self._tx() as db:
            cur = db.execute(
                "UPDATE series SET released_at = ? WHERE changed_since_analysis = 1 AND calling_ae IS ?"
                " AND first_received_at >= ? AND last_received_at <= ?",
                (now, calling_ae, since, now))
            return cur.rowcount

    def studies_released(self, grace_s: float, now: float | None = None) -> list[StudyReady]:
        """Studies whose every changed series was released (:meth:`mark_released`) after its last
        instance, the last release at least ``grace_s`` ago (a sender's next association may follow)."""
        now = time.time() if now is None else now
        return self._studies(
            "SUM(CASE WHEN s.changed_since_analysis = 1"
            "         AND (s.released_at IS NULL OR s.released_at < s.last_received_at) THEN 1 ELSE 0 END) = 0"
            " AND MAX(CASE WHEN s.changed_since_analysis = 1 THEN s.released_at END) <= ?",
            (now - grace_s,))

    def claim_series(self, series_uid: str, last_received_at: float, now: float | None = None) -> int | None:
        """Take a ready series for analysis: returns its new generation, or None if it changed meanwhile."""
        now = time.time() if now is None else now
        with self._tx() as db:
            cur = db.execute(
                "UPDATE series SET changed_since_analysis = 0, analysis_generation = analysis_generation + 1, queued_at = ?,"
                " state = 'queued' WHERE series_uid = ? AND changed_since_analysis = 1 AND last_received_at = ?",
                (now, series_uid, last_received_at),
            )
            if cur.rowcount != 1:
                return None
            return db.execute("SELECT analysis_generation FROM series WHERE series_uid = ?", (series_uid,)).fetchone()[0]

    def claim_study(self, study_uid: str, last_received_at: float, now: float | None = None) -> int | None:
        """Take a ready study: clears the changed flag of all its series (each gets a new generation)
        and returns the study's new generation, or None if any series received data meanwhile."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute(
                "SELECT st.id, MAX(s.last_received_at) AS last, SUM(s.changed_since_analysis) AS changed"
                " FROM studies st JOIN series s ON s.study_id = st.id WHERE st.study_uid = ? GROUP BY st.id",
                (study_uid,),
            ).fetchone()
            if row is None or row["last"] != last_received_at or not row["changed"]:
                return None
            db.execute(
                "UPDATE series SET changed_since_analysis = 0, analysis_generation = analysis_generation + 1, queued_at = ?,"
                " state = 'queued' WHERE study_id = ? AND changed_since_analysis = 1",
                (now, row["id"]),
            )
            db.execute("UPDATE studies SET analysis_generation = analysis_generation + 1 WHERE id = ?", (row["id"],))
            return db.execute("SELECT analysis_generation FROM studies WHERE id = ?", (row["id"],)).fetchone()[0]

    def mark_series_queued(self, series_uid: str, now: float | None = None) -> None:
        """Unconditionally mark a series queued (prefer the compare-and-set ``claim_*``)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute(
                "UPDATE series SET changed_since_analysis = 0, analysis_generation = analysis_generation + 1, queued_at = ?,"
                " state = 'queued' WHERE series_uid = ?",
                (now, series_uid),
            )

    def mark_series_analyzed(self, series_uid: str, generation: int | None = None, note: str | None = None, now: float | None = None) -> None:
        """Record that the analysis of ``generation`` (default: the current one) finished."""
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute(
                "UPDATE series SET analyzed_at = ?, analyzed_generation = COALESCE(?, analysis_generation),"
                " state = CASE WHEN changed_since_analysis = 1 THEN 'receiving' ELSE 'analyzed' END, note = ?"
                " WHERE series_uid = ?",
                (now, generation, note, series_uid),
            )

    def mark_series_ignored(self, series_uid: str, reason: str) -> None:
        """Not analysed (e.g. not a head CT); ``reason`` is kept for ``ich-node status``."""
        with self._tx() as db:
            db.execute(
                "UPDATE series SET state = CASE WHEN changed_since_analysis = 1 THEN 'receiving' ELSE 'ignored' END, note = ?"
                " WHERE series_uid = ?",
                (reason, series_uid),
            )

    def mark_series_changed(self, series_uid: str, now: float | None = None) -> None:
        """Force a re-analysis after the quiet period (e.g. ``jobs retry`` of a whole series)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute(
                "UPDATE series SET changed_since_analysis = 1, last_received_at = MAX(last_received_at, ?), state = 'receiving'"
                " WHERE series_uid = ?",
                (now, series_uid),
            )

    # -- reads -------------------------------------------------------------------------------

    def series(self, series_uid: str) -> SeriesInfo | None:
        rows = self._query(self._SERIES_SELECT + " WHERE s.series_uid = ?", (series_uid,))
        return self._series_info(rows[0]) if rows else None

    def series_of_study(self, study_uid: str) -> list[SeriesInfo]:
        rows = self._query(self._SERIES_SELECT + " WHERE st.study_uid = ? ORDER BY s.first_received_at", (study_uid,))
        return [self._series_info(r) for r in rows]

    def instances_of(self, series_uid: str) -> list[InstanceInfo]:
        """Instances of a series, ordered by InstanceNumber then SOP UID (paths relative to the spool)."""
        rows = self._query(
            "SELECT i.*, s.series_uid FROM instances i JOIN series s ON s.id = i.series_id WHERE s.series_uid = ?"
            " ORDER BY i.instance_number IS NULL, i.instance_number, i.sop_uid",
            (series_uid,),
        )
        return [
            InstanceInfo(r["sop_uid"], r["series_uid"], r["path"], r["digest"], r["size"], r["received_at"],
                         r["transfer_syntax"], r["sop_class"], r["instance_number"])
            for r in rows
        ]

    def instance(self, sop_uid: str) -> InstanceInfo | None:
        rows = self._query(
            "SELECT i.*, s.series_uid FROM instances i JOIN series s ON s.id = i.series_id WHERE i.sop_uid = ?", (sop_uid,)
        )
        if not rows:
            return None
        r = rows[0]
        return InstanceInfo(r["sop_uid"], r["series_uid"], r["path"], r["digest"], r["size"], r["received_at"],
                            r["transfer_syntax"], r["sop_class"], r["instance_number"])

    def indexed_paths(self) -> set[str]:
        """Every instance path the index knows (relative to the spool)."""
        return {r[0] for r in self._query("SELECT path FROM instances")}

    def counts(self) -> dict[str, int]:
        """Totals for ``ich-node status``."""
        r = self._query(
            "SELECT (SELECT COUNT(*) FROM patients) AS patients, (SELECT COUNT(*) FROM studies) AS studies,"
            " (SELECT COUNT(*) FROM series) AS series, (SELECT COUNT(*) FROM instances) AS instances,"
            " (SELECT COALESCE(SUM(size), 0) FROM instances) AS bytes,"
            " (SELECT COUNT(*) FROM series WHERE changed_since_analysis = 1) AS series_pending"
        )[0]
        return {k: int(r[k]) for k in r.keys()}

    # -- retention -----------------------------------------------------------------------------

    def series_older_than(self, cutoff: float) -> list[SeriesInfo]:
        """Series whose last instance arrived before ``cutoff`` and that are not waiting for analysis."""
        rows = self._query(
            self._SERIES_SELECT + " WHERE s.last_received_at < ? AND s.changed_since_analysis = 0 AND s.state != 'queued'",
            (cutoff,),
        )
        return [self._series_info(r) for r in rows]

    def forget_series(self, series_uid: str) -> list[str]:
        """Delete a series (and its empty study/patient) from the index; returns the instance paths
        so the caller can remove the files *after* this commit (a crash leaves orphans, not dangling rows)."""
        with self._tx() as db:
            row = db.execute("SELECT id, study_id FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
            if row is None:
                return []
            paths = [r[0] for r in db.execute("SELECT path FROM instances WHERE series_id = ?", (row["id"],))]
            db.execute("DELETE FROM instances WHERE series_id = ?", (row["id"],))
            db.execute("DELETE FROM series WHERE id = ?", (row["id"],))
            if db.execute("SELECT COUNT(*) FROM series WHERE study_id = ?", (row["study_id"],)).fetchone()[0] == 0:
                pid = db.execute("SELECT patient_id FROM studies WHERE id = ?", (row["study_id"],)).fetchone()[0]
                db.execute("DELETE FROM studies WHERE id = ?", (row["study_id"],))
                if db.execute("SELECT COUNT(*) FROM studies WHERE patient_id = ?", (pid,)).fetchone()[0] == 0:
                    db.execute("DELETE FROM patients WHERE id = ?", (pid,))
            return paths


def _patient_of_file(path: Path, pseudonym: Pseudonymizer) -> str | None:
    """The pseudonym of the patient in one of our spool files, or None if it cannot be read."""
    import io

    from pydicom.filereader import _read_file_meta_info

    from ..receive.header import parse_header

    try:
        raw = path.read_bytes()
        fp = io.BytesIO(raw)
        fp.seek(132)
        meta = _read_file_meta_info(fp)
        return parse_header(memoryview(raw)[fp.tell():], str(meta.TransferSyntaxUID), pseudonym).patient_hash
    except Exception:  # noqa: BLE001 - gone, truncated, not DICOM: the caller tries the next file
        return None
