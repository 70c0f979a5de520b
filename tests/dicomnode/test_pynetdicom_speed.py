"""pynetdicom speed patches that are not exercised on the wire elsewhere."""

from __future__ import annotations

from pynetdicom.presentation import build_context

from dicomnode.pynetdicom_speed import _copy_contexts


def test_contexts_are_copied_independently_and_other_objects_deep_copied():
    contexts = [build_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]),
                build_context("1.2.840.10008.1.1")]
    copies = _copy_contexts(contexts)
    assert [(c.abstract_syntax, c.transfer_syntax) for c in copies] == [(c.abstract_syntax, c.transfer_syntax)
                                                                       for c in contexts]
    copies[0].transfer_syntax.append("1.2.840.10008.1.2.5")
    copies[0].context_id = 3
    assert len(contexts[0].transfer_syntax) == 2 and contexts[0].context_id is None
    other = {"a": [1, 2]}
    copied = _copy_contexts(other)
    assert copied == other and copied["a"] is not other["a"]


def test_the_memoised_uid_validator_answers_as_pynetdicoms_own():
    from pydicom.uid import UID
    from pynetdicom import _config
    from pynetdicom._validators import validate_ui

    from dicomnode.pynetdicom_speed import apply

    apply()
    memo = _config.VALIDATORS["UI"]
    assert hasattr(memo, "cache_info")
    for value in ("1.2.840.10008.1.2.1", "1.2.3." + "4" * 70, "", "1.2.a"):
        assert memo(UID(value)) == validate_ui(UID(value)) == memo(UID(value))
    assert memo.cache_info().hits >= 4
