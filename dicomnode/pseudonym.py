"""Keyed patient pseudonyms: the one name a patient has in logs, the index and the training store.

``Pseudonymizer`` is the entry point: ``Pseudonymizer.for_data_dir(data_dir)`` loads the per-site secret
(``<data_dir>/secrets/site.key``: 32 random bytes, created on the first start, mode 0600; never in the
repository, never logged), and ``pz(patient_id, issuer)`` gives the patient's pseudonym:
HMAC-SHA256(site key, issuer, patient id) in hex, cut to :data:`PSEUDONYM_HEX` digits.

Why keyed: MRNs are low-entropy (a few million candidates), so any unkeyed hash of one — salted with a
public constant or not — is reversed by trying them all in seconds. Without the key, a pseudonym tells
nothing; with it, the same patient gets the same pseudonym on every start, so follow-up studies pair.
Back the key up with the data dir: a lost key means new pseudonyms, and old and new studies of one
patient no longer pair.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import tempfile
from pathlib import Path

from ichutil.files import fsync_dir

LOG = logging.getLogger(__name__)

KEY_BYTES = 32
# 32 hex digits = 128 bits. At least 16 are needed so that the node's patients do not collide (a
# birthday collision needs ~2^(bits/2) patients: 2^32 at 16 digits, and a collision would pair two
# patients' studies); 32 leave no practical doubt, and differ in length from both legacy formats
# (16 digits in the index, 24 in the training store), so a migration can tell which rows it did.
PSEUDONYM_HEX = 32
_PATIENT = b"ich-node/patient/v1\x00"
_UNLINKED = b"ich-node/unlinked/v1\x00"
_INSTALLATION = b"ich-node/installation/v1\x00"  # domain of installation_id()


class SiteKeyError(RuntimeError):
    """The site key exists but cannot be used (wrong size, unreadable): never replaced silently."""


def site_key_path(data_dir: str | os.PathLike) -> Path:
    """Where a node keeps its site key: ``<data_dir>/secrets/site.key``."""
    return Path(data_dir) / "secrets" / "site.key"


class Pseudonymizer:
    """Turns a patient ID into the site's keyed pseudonym. Holds no raw key (only the keyed HMAC state).

    Cheap enough for the receive path: one HMAC of a short message from a precomputed key state (≈ 3 µs,
    against ≈ 20 µs for the header scan).
    """

    def __init__(self, key: bytes, source: str = "memory") -> None:
        if len(key) != KEY_BYTES:
            raise SiteKeyError(f"site key from {source} has {len(key)} bytes, expected {KEY_BYTES}")
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self.source = source

    def __repr__(self) -> str:  # never the key
        return f"Pseudonymizer({self.source})"

    @classmethod
    def for_data_dir(cls, data_dir: str | os.PathLike) -> "Pseudonymizer":
        """The node's pseudonymizer (its key created on the first call)."""
        return cls.load_or_create(site_key_path(data_dir))

    @classmethod
    def ephemeral(cls) -> "Pseudonymizer":
        """A random in-memory key: pseudonyms valid for this process only (unit tests, tools)."""
        return cls(secrets.token_bytes(KEY_BYTES), "ephemeral key")

    @classmethod
    def load_or_create(cls, path: str | os.PathLike) -> "Pseudonymizer":
        """Read the key at ``path``, or create it atomically (0600, in a 0700 directory) if there is none.

        Two processes starting at once agree on one key: it is written whole to a temporary file and
        hard-linked to its final name, which only one of them can do. An existing key of the wrong
        size raises :class:`SiteKeyError` rather than being replaced (that would orphan every pseudonym).
        """
        path = Path(path)
        if not path.exists():
            _create(path)
        try:
            st = path.stat()
            if st.st_mode & 0o077:
                LOG.warning("site key %s was readable by others (mode %o); set to 0600", path, st.st_mode & 0o777)
                os.chmod(path, 0o600)
            key = path.read_bytes()
        except OSError as exc:
            raise SiteKeyError(f"site key {path} cannot be read: {exc.strerror}") from None
        return cls(key, str(path))

    def __call__(self, patient_id: object, issuer: object = None) -> str:
        """Pseudonym of a patient ID (surrounding spaces ignored; None counts as empty).

        The issuer (IssuerOfPatientID) is part of the message, length-prefixed so that no
        (issuer, id) pair can be shifted into another."""
        pid = "" if patient_id is None else str(patient_id).strip()
        iss = "" if issuer is None else str(issuer).strip()
        mac = self._mac.copy()
        mac.update(_PATIENT + f"{len(iss)}:{iss}|{pid}".encode("utf-8", "surrogatepass"))
        return mac.hexdigest()[:PSEUDONYM_HEX]

    def installation_id(self) -> str:
        """A stable value only this installation has (keyed, in its own domain; reveals nothing of the
        key): names the node as the Device Observer of its SRs across re-analyses and restarts."""
        mac = self._mac.copy()
        mac.update(_INSTALLATION)
        return mac.hexdigest()[:PSEUDONYM_HEX]

    def unlinkable(self, old_pseudonym: str) -> str:
        """A replacement for a legacy pseudonym whose patient ID cannot be read any more (migration).

        Keyed, so the legacy value cannot be recovered from it, and in another domain than
        :meth:`__call__`, so it never equals (pairs with) the pseudonym of a patient ID."""
        mac = self._mac.copy()
        mac.update(_UNLINKED + old_pseudonym.encode("utf-8", "surrogatepass"))
        return mac.hexdigest()[:PSEUDONYM_HEX]


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".site.key.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(KEY_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails if another process created the key first
        except FileExistsError:
            return
        fsync_dir(path.parent)
        LOG.warning("created a new site key for patient pseudonyms in %s: back it up with the data directory",
                    path)
    finally:
        os.unlink(tmp)
