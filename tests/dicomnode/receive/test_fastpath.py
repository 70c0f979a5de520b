"""The fast C-STORE reader's guards: fingerprints of pynetdicom's internals, shared contexts, validator memo."""

from __future__ import annotations

import copy
import logging

from pynetdicom.presentation import build_context

from dicomnode.receive import fastpath


def test_the_fingerprints_match_the_installed_pynetdicom():
    """Fails when pynetdicom changes: review the fast path against the new internals, then update FINGERPRINTS."""
    assert fastpath.mismatches() == ()
    assert all(len(v) == 16 for v in fastpath.FINGERPRINTS.values())


def test_a_changed_internal_turns_the_fast_path_off_with_a_warning(monkeypatch, caplog):
    monkeypatch.setitem(fastpath.FINGERPRINTS, "dul.DULServiceProvider._read_pdu_data", "0" * 16)
    monkeypatch.setattr(fastpath.available, "_warned", False, raising=False)
    fastpath.mismatches.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            assert fastpath.available() is False
        assert "running stock pynetdicom" in caplog.text and "_read_pdu_data" in caplog.text
    finally:
        fastpath.mismatches.cache_clear()


def test_an_unknown_internal_has_no_fingerprint():
    assert fastpath.fingerprint("dul.DULServiceProvider.no_such_method") == ""


def test_shared_contexts_deep_copy_independently_and_keep_their_uids():
    contexts = [build_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]),
                build_context("1.2.840.10008.1.1")]
    shared = fastpath.shared_contexts(contexts)
    copies = copy.deepcopy(shared)  # what pynetdicom does for every association
    assert [(c.abstract_syntax, c.transfer_syntax) for c in copies] == [(c.abstract_syntax, c.transfer_syntax)
                                                                       for c in contexts]
    copies[0].transfer_syntax.append("1.2.840.10008.1.2.5")
    copies[0].context_id = 3
    assert len(shared[0].transfer_syntax) == 2 and shared[0].context_id is None
    assert copies[1].abstract_syntax is shared[1].abstract_syntax  # UIDs shared, not re-validated


def test_the_memoised_uid_validator_answers_as_pynetdicoms_own():
    from pydicom.uid import UID
    from pynetdicom import _config
    from pynetdicom._validators import validate_ui

    fastpath.memoise_uid_validator()
    memo = _config.VALIDATORS["UI"]
    assert hasattr(memo, "cache_info")
    for value in ("1.2.840.10008.1.2.1", "1.2.3." + "4" * 70, "", "1.2.a"):
        assert memo(UID(value)) == validate_ui(UID(value)) == memo(UID(value))
    assert memo.cache_info().hits >= 4
