"""Keyed patient pseudonyms: the site key, the receive path, index migration (schema 2 → 3), the dataset store."""

from __future__ import annotations

import hashlib
import stat
import threading

import pytest

from dicomnode.pseudonym import PSEUDONYM_HEX, Pseudonymizer, SiteKeyError, site_key_path

MRN = "00012345"


def old_patient_hash(patient_id: object, issuer: object = None) -> str:
    """What index schema 2 stored (dicomnode.uids.patient_hash before schema 3): unkeyed, 16 hex digits."""
    text = "" if patient_id is None else str(patient_id).strip()
    iss = "" if issuer is None else str(issuer).strip()
    return hashlib.sha256(f"ich-node|{iss}|{text}".encode("utf-8", "replace")).hexdigest()[:16]


# -- the site key ------------------------------------------------------------------------------------


def test_key_is_created_once_private_and_reused_across_restarts(tmp_path):
    path = site_key_path(tmp_path / "var")
    first = Pseudonymizer.load_or_create(path)
    key = path.read_bytes()
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    again = Pseudonymizer.for_data_dir(tmp_path / "var")  # the next start
    assert path.read_bytes() == key and again(MRN) == first(MRN)
    assert [p.name for p in path.parent.iterdir()] == ["site.key"]  # no temporary file left behind


def test_first_starts_racing_agree_on_one_key(tmp_path):
    path = site_key_path(tmp_path)
    start, names = threading.Barrier(8), []

    def load() -> None:
        start.wait()
        names.append(Pseudonymizer.load_or_create(path)(MRN))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(names) == 8 and set(names) == {Pseudonymizer.load_or_create(path)(MRN)}


def test_a_damaged_key_is_refused_never_replaced(tmp_path):
    path = site_key_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"short")
    with pytest.raises(SiteKeyError, match="5 bytes"):
        Pseudonymizer.load_or_create(path)
    assert path.read_bytes() == b"short"


def test_a_key_readable_by_others_is_made_private(tmp_path, caplog):
    path = site_key_path(tmp_path)
    name = Pseudonymizer.load_or_create(path)(MRN)
    path.chmod(0o644)
    assert Pseudonymizer.load_or_create(path)(MRN) == name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and "readable by others" in caplog.text


def test_pseudonym_is_keyed_not_a_hash_of_the_mrn():
    a, b = Pseudonymizer.ephemeral(), Pseudonymizer.ephemeral()
    name = a(MRN)
    assert len(name) == PSEUDONYM_HEX >= 16 and int(name, 16) >= 0
    assert name == a(f" {MRN} ") and MRN not in name
    assert name != b(MRN), "another site's key gives another pseudonym"
    for plain in (hashlib.sha256(MRN.encode()).hexdigest(), old_patient_hash(MRN),
                  hashlib.sha256(f"ich-node||{MRN}".encode()).hexdigest()):
        assert not plain.startswith(name) and not name.startswith(plain[:16])
    assert a(MRN, "HOSP-A") != name != a(MRN, "HOSP-B") != a(MRN, "HOSP-A")
    assert a("b|c", "a") != a("c", "a|b")  # issuer and ID cannot be shifted into each other
    assert a.unlinkable(old_patient_hash(MRN)) not in (name, old_patient_hash(MRN))
    assert "Pseudonymizer(ephemeral key)" == repr(a)
