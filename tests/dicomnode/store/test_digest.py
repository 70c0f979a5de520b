"""Data-set digests: XXH3-128 with the algorithm named, and SHA-256 digests of older indexes still honoured."""

from __future__ import annotations

import hashlib

from dicomnode.store.digest import PREFIX, digest, matches


def test_digest_names_its_algorithm_and_ignores_how_the_bytes_are_split():
    data = bytes(range(256)) * 1000
    d = digest([data])
    assert d.startswith(PREFIX) and len(d) == len(PREFIX) + 32
    assert digest([data[:7], memoryview(data)[7:100_000], data[100_000:]]) == d
    assert digest([data[:-1] + b"\x00"]) != d
    assert matches(d, [data]) and not matches(d, [data[:-1]])


def test_a_bare_sha256_from_an_older_index_is_compared_as_sha256():
    data = b"a CT slice"
    legacy = hashlib.sha256(data).hexdigest()
    assert matches(legacy, [data[:3], data[3:]])
    assert not matches(legacy, [b"another slice"])
