"""UID validation and the hashes that stand in for UIDs on disk and in logs.

Why: a UID comes from the network and is attacker-controlled (``../../x`` is a valid string,
not a valid UID). File names and log lines therefore use hashes of *validated* UIDs. Patient
identifiers are only ever written as keyed pseudonyms (``dicomnode.pseudonym``).
"""

from __future__ import annotations

import hashlib
import re

# PS3.5 9.1: components of digits separated by '.', no leading zero in a multi-digit component,
# at most 64 characters.
_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


class InvalidUID(ValueError):
    """A UID that breaks PS3.5 syntax; ``field`` names the attribute it came from."""

    def __init__(self, field: str, value: object, why: str) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{field} {shown}: {why}")
        self.field = field
        self.why = why


def validate_uid(value: object, field: str = "UID") -> str:
    """Return ``value`` as a clean UID string or raise :class:`InvalidUID`.

    Trailing NUL/space padding (even-length padding on the wire) is removed first.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidUID(field, value, "not ASCII") from None
    if not isinstance(value, str):
        raise InvalidUID(field, value, "missing or not a string")
    uid = value.rstrip("\x00 ")
    if not uid:
        raise InvalidUID(field, value, "empty")
    if len(uid) > 64:
        raise InvalidUID(field, value, f"{len(uid)} characters, more than 64")
    if not _UID_RE.fullmatch(uid):
        raise InvalidUID(field, value, "not digits and dots (PS3.5 9.1)")
    return uid


def uid_hash(uid: str) -> str:
    """Stable 32-hex-digit name for a validated UID (used for spool paths)."""
    return hashlib.sha256(uid.encode("ascii")).hexdigest()[:32]
