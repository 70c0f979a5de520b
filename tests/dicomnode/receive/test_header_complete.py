"""header.check_complete: the whole data set's structure, before the answer (issue 13)."""

from __future__ import annotations

import io

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomnode.receive.header import StoreRefused, check_complete

EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"


@pytest.fixture(scope="module")
def body(ct_data) -> bytes:
    path = [p for p in sorted((ct_data / "philips-phantom-5mm").iterdir()) if p.name != "DIRFILE"][0]
    raw = path.read_bytes()
    fp = io.BytesIO(raw)
    fp.seek(132)
    pydicom.filereader._read_file_meta_info(fp)
    return raw[fp.tell():]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(cuts=st.lists(st.integers(min_value=1, max_value=530_000), max_size=6))
def test_an_intact_data_set_passes_however_it_is_fragmented(body, cuts):
    points = sorted({c % len(body) for c in cuts} - {0})
    fragments = [memoryview(body)[a:b] for a, b in zip([0] + points, points + [len(body)])]
    check_complete(fragments, EXPLICIT)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(cut=st.integers(min_value=1, max_value=2_000))
def test_a_data_set_cut_anywhere_short_is_refused(body, cut):
    with pytest.raises(StoreRefused) as info:
        check_complete(body[:-cut], EXPLICIT)
    assert info.value.status == 0xC000 and "incomplete data set" in info.value.comment


@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.binary(max_size=2048), implicit=st.booleans())
def test_arbitrary_bytes_raise_nothing_but_a_refusal(data, implicit):
    try:
        check_complete(data, IMPLICIT if implicit else EXPLICIT)
    except StoreRefused as exc:
        assert exc.status == 0xC000
