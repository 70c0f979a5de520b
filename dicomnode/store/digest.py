"""Digest of a received data set: what makes an identical re-send idempotent and a spool file checkable.

Why XXH3-128 and not SHA-256: the receiver hashes every data set it stores; on a CT slice SHA-256
costs 0.3 ms of CPU (≈ 15 % of the node's receive cost, measured by benchmarks/ingest.py), XXH3
0.01 ms. The digest only has to tell "the same bytes again" from "a changed instance" for data sent
by allow-listed peers, not resist a forger; a 128-bit hash does that. The algorithm is written into
every digest, so indexes from before (bare SHA-256 hex) keep working: :func:`matches` compares
with whichever algorithm the stored digest names.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import xxhash

PREFIX = "xxh3-128:"


class Digester:
    """:func:`digest` of bytes fed piecewise (a data set streamed to disk as it arrives)."""

    def __init__(self) -> None:
        self._h = xxhash.xxh3_128()

    def update(self, chunk: bytes | memoryview) -> None:
        self._h.update(chunk)

    def hexdigest(self) -> str:
        return PREFIX + self._h.hexdigest()


def digest(chunks: Iterable[bytes | memoryview]) -> str:
    """Digest of the bytes of ``chunks`` joined (e.g. a data set's P-DATA fragments)."""
    h = Digester()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def matches(stored: str, chunks: Iterable[bytes | memoryview], computed: str | None = None) -> bool:
    """Whether ``chunks`` hash to ``stored``, under the algorithm ``stored`` was made with
    (``computed``: their :func:`digest`, when the caller has it already)."""
    if stored.startswith(PREFIX):
        return (computed or digest(chunks)) == stored
    h = hashlib.sha256()  # written by nodes before index schema 2
    for c in chunks:
        h.update(c)
    return h.hexdigest() == stored
