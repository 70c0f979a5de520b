"""Durable spool of received instances: temp file → write → fsync → atomic rename → fsync dir.

Why this order: after ``write`` returns, the file is complete under its final name and both
its bytes and its directory entry are on disk, so the SCP may acknowledge. A crash before that
leaves only a ``.partial`` temp file (removed by :meth:`Spool.remove_partials`), never a
half-written instance under a real name.

Layout (no raw UID ever reaches a path)::

    <root>/<sha(study)>/<sha(series)>/<sha(sop)>.dcm

so a series directory holds exactly that series and can be handed to ``pipeline.analyze``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ichutil.files import fsync_dir

from .digest import digest as digest_of
from ..uids import uid_hash, validate_uid

_IOV_MAX = os.sysconf("SC_IOV_MAX")  # buffers one writev takes (1024 on Linux)

PARTIAL_SUFFIX = ".partial"
_CANONICAL = re.compile(r"[0-9a-f]{32}/[0-9a-f]{32}/[0-9a-f]{32}\.dcm")


class SpoolFull(OSError):
    """Free space is below the configured threshold (the SCP answers 0xA700)."""


@dataclass(frozen=True)
class Written:
    path: str  # relative to the spool root
    digest: str  # dicomnode.store.digest of the bytes that matter
    size: int


class Spool:
    """The directory tree where received instances live until retention removes them."""

    def __init__(self, root: str | Path, min_free_bytes: int = 0) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.min_free_bytes = int(min_free_bytes)
        self._known_dirs: set[str] = set()

    # -- paths -------------------------------------------------------------------------------

    def relpath(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """Relative path of an instance; every UID is validated first (raises InvalidUID)."""
        return "/".join((
            uid_hash(validate_uid(study_uid, "StudyInstanceUID")),
            uid_hash(validate_uid(series_uid, "SeriesInstanceUID")),
            uid_hash(validate_uid(sop_uid, "SOPInstanceUID")) + ".dcm",
        ))

    def series_dir(self, study_uid: str, series_uid: str) -> Path:
        """Absolute directory that holds exactly the instances of one series."""
        return self.root / uid_hash(validate_uid(study_uid, "StudyInstanceUID")) / uid_hash(
            validate_uid(series_uid, "SeriesInstanceUID"))

    def abspath(self, relpath: str) -> Path:
        """Absolute path of a relative spool path; refuses anything that escapes the root."""
        if _CANONICAL.fullmatch(relpath):  # what relpath() builds cannot escape: no resolve() (0.08 ms)
            return Path(f"{self.root}/{relpath}")
        p = (self.root / relpath).resolve()
        if self.root not in p.parents:
            raise ValueError(f"path {relpath!r} escapes the spool")
        return p

    # -- disk guard --------------------------------------------------------------------------

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def has_room(self, incoming: int = 0) -> bool:
        """True when writing ``incoming`` bytes keeps at least ``min_free_bytes`` free."""
        return self.free_bytes() - incoming >= self.min_free_bytes

    # -- writing -----------------------------------------------------------------------------

    def _ensure_dir(self, d: Path) -> None:
        """Create ``d`` (durably) unless this spool created it before (no stat per write); ``write``
        notices one removed since (its temp file cannot be created) and asks again."""
        key = str(d)
        if key in self._known_dirs:
            return
        created = []
        p = d
        while not p.is_dir():
            created.append(p)
            p = p.parent
        d.mkdir(parents=True, exist_ok=True)
        # a new directory entry is only durable once its parent is fsynced
        for c in reversed(created):
            fsync_dir(c.parent)
        self._known_dirs.add(key)

    def write(self, relpath: str, chunks: Iterable[bytes], digest: str | None = None, durable: bool = True) -> Written:
        """Write ``chunks`` durably at ``relpath`` (replacing any previous file atomically).

        ``digest`` may be given when the caller already hashed the bytes that matter (the SCP
        hashes the data set without the file meta); otherwise the written bytes are hashed.
        ``durable=False`` skips both fsyncs (still temp → rename): only for bytes that are already
        durable elsewhere, i.e. in the write-ahead journal (dicomnode.store.journal), until its checkpoint.
        Raises :class:`SpoolFull` before writing anything when space is short.
        """
        chunks = list(chunks)
        size = sum(len(c) for c in chunks)
        if not self.has_room(size):
            raise SpoolFull(f"free space below {self.min_free_bytes} bytes")
        digest = digest or digest_of(chunks)
        part = self.open_partial(relpath)
        try:
            part.write_all(chunks)
        except BaseException:
            part.discard()
            raise
        part.commit(durable)
        return Written(relpath, digest, size)

    def open_partial(self, relpath: str) -> "Partial":
        """A temp file beside ``relpath`` to write piecewise; :meth:`Partial.commit` renames it into place."""
        final = self.abspath(relpath)
        self._ensure_dir(final.parent)
        tmp = final.with_name(f".{final.name}.{secrets.token_hex(6)}{PARTIAL_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except FileNotFoundError:  # retention removed the directory since we made it
            self._known_dirs.discard(str(final.parent))
            self._ensure_dir(final.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        return Partial(fd, tmp, final)

    def remove(self, relpath: str) -> None:
        """Remove one instance file (and its directories once empty)."""
        p = self.abspath(relpath)
        p.unlink(missing_ok=True)
        for d in (p.parent, p.parent.parent):
            try:
                d.rmdir()
                self._known_dirs.discard(str(d))
            except OSError:
                break

    def remove_partials(self) -> int:
        """Delete temp files left by a crash mid-write; returns how many. Call at start-up."""
        n = 0
        for p in self.root.rglob(f".*{PARTIAL_SUFFIX}"):
            p.unlink(missing_ok=True)
            n += 1
        return n


class Partial:
    """A spool file being written: ``write`` pieces, then ``commit`` (fsync → rename → fsync dir) or ``discard``."""

    def __init__(self, fd: int, tmp: Path, final: Path) -> None:
        self.fd, self.tmp, self.final = fd, tmp, final
        self.size = 0

    def write(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
            self.size += n

    def write_all(self, chunks: Sequence[bytes | memoryview]) -> None:
        """Write ``chunks`` in order with as few system calls as the kernel allows (``writev``): on ext4
        each ``write`` costs ≈ 10 µs of its own, and a CT slice arrives as ~34 P-DATA fragments."""
        views = [memoryview(c).cast("B") for c in chunks if len(c)]
        i = 0
        while i < len(views):
            n = os.writev(self.fd, views[i:i + _IOV_MAX])
            self.size += n
            while i < len(views) and n >= len(views[i]):  # skip what was written whole, trim a partial one
                n -= len(views[i])
                i += 1
            if n:
                views[i] = views[i][n:]

    def commit(self, durable: bool = True) -> None:
        try:
            if durable:
                os.fsync(self.fd)
        except BaseException:
            self.discard()
            raise
        os.close(self.fd)
        self.fd = -1
        os.replace(self.tmp, self.final)
        if durable:
            fsync_dir(self.final.parent)

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.tmp.unlink(missing_ok=True)
