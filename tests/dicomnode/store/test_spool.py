"""Spool: hashed paths from validated UIDs, atomic durable writes, disk guard, crash leftovers."""

from __future__ import annotations

import pytest

from dicomnode.store.digest import digest
from dicomnode.store.spool import Spool, SpoolFull
from dicomnode.uids import InvalidUID, validate_uid


def test_paths_are_hashes_of_validated_uids(tmp_path):
    sp = Spool(tmp_path)
    rel = sp.relpath("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert "1.2.3" not in rel and rel.count("/") == 2 and rel.endswith(".dcm")
    assert sp.series_dir("1.2.3", "1.2.3.4") == tmp_path.resolve() / rel.rsplit("/", 1)[0]
    for bad in ("../../x", "1.2.3/../..", "", "1.02.3", "1." + "2" * 70, "1.2.3\x00x", "1..2"):
        with pytest.raises(InvalidUID):
            sp.relpath("1.2.3", "1.2.3.4", bad)
    with pytest.raises(ValueError):
        sp.abspath("../outside.dcm")


def test_uid_padding():
    assert validate_uid("1.2.840.10008.1.2\x00") == "1.2.840.10008.1.2"


def test_write_is_atomic_and_replaces(tmp_path):
    sp = Spool(tmp_path)
    rel = sp.relpath("1.2", "1.2.3", "1.2.3.4")
    w = sp.write(rel, [b"abc", b"def"])
    assert sp.abspath(rel).read_bytes() == b"abcdef" and w.size == 6 and w.digest == digest([b"abcdef"])
    sp.write(rel, [b"new"])
    assert sp.abspath(rel).read_bytes() == b"new"
    assert not list(tmp_path.rglob("*.partial"))


def test_a_directory_removed_behind_the_spools_back_is_made_again(tmp_path):
    import shutil

    sp = Spool(tmp_path)
    rel = sp.relpath("1.2", "1.2.3", "1.2.3.4")
    sp.write(rel, [b"first"])
    shutil.rmtree(tmp_path / rel.split("/")[0])  # another process's retention, say
    other = sp.relpath("1.2", "1.2.3", "1.2.3.5")
    sp.write(other, [b"second"])
    assert sp.abspath(other).read_bytes() == b"second"


def test_disk_guard_writes_nothing(tmp_path):
    sp = Spool(tmp_path, min_free_bytes=1 << 62)
    with pytest.raises(SpoolFull):
        sp.write(sp.relpath("1.2", "1.2.3", "1.2.3.4"), [b"x"])
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_partials_removed_and_remove_prunes_dirs(tmp_path):
    sp = Spool(tmp_path)
    rel = sp.relpath("1.2", "1.2.3", "1.2.3.4")
    sp.write(rel, [b"x"])
    leftover = sp.abspath(rel).parent / ".abc.dcm.1234.partial"
    leftover.write_bytes(b"half")
    assert sp.remove_partials() == 1 and not leftover.exists()
    sp.remove(rel)
    assert list(tmp_path.iterdir()) == []


def test_write_takes_more_fragments_than_one_writev_call_and_empty_ones(tmp_path):
    """A data set may arrive as thousands of P-DATA fragments (small PDUs): written in order, whole."""
    from dicomnode.store import spool as spool_module

    chunks = [bytes([i % 251]) * (i % 7) for i in range(spool_module._IOV_MAX * 2 + 5)]
    chunks[3] = memoryview(b"")
    s = Spool(tmp_path / "spool")
    w = s.write("a/b/c.dcm", chunks, durable=False)
    expected = b"".join(bytes(c) for c in chunks)
    assert (tmp_path / "spool" / "a/b/c.dcm").read_bytes() == expected
    assert w.size == len(expected) and w.digest == digest([expected])
