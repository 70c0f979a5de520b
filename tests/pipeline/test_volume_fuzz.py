"""Property-based fuzzing of series loading with hostile geometry values, issue 13 part 5.

The node stores data sets whose geometry or rescale values are not numbers (benchmarks/fuzz_store.py,
class ``non_numeric_geometry``: answered 0x0000, as the receiver does not read them). The analysis then
loads the series: ``load_series`` must either load it or refuse it with :class:`CannotAssess` (the node
sends a coded "cannot assess" SR). Any other exception fails the job on every attempt: the study gets
no result and no SR at all.

Inputs: the 5 mm phantom (the files as stored), one to all slices given hostile values for
ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness, Rows/Columns,
RescaleSlope/Intercept.
"""

from __future__ import annotations

import io
import os
import struct
import warnings

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.result import CannotAssess
from pipeline.volume import load_series

_SCALE = 20 if os.environ.get("HYPOTHESIS_PROFILE") == "explore" else 1
FIELDS = {"ImagePositionPatient": (0x00200032, b"DS"), "ImageOrientationPatient": (0x00200037, b"DS"),
          "PixelSpacing": (0x00280030, b"DS"), "SliceThickness": (0x00180050, b"DS"),
          "RescaleSlope": (0x00281053, b"DS"), "RescaleIntercept": (0x00281052, b"DS"),
          "Rows": (0x00280010, b"US"), "Columns": (0x00280011, b"US")}
HOSTILE = [b"abc\\def\\ghi", b"NaN\\NaN\\NaN", b"inf\\-inf\\1e999", b"", b"1,5\\2,5\\3,5", b"1\\2", b"-0\\-0\\-0",
           b"1e308\\1e308\\1e308", b"\x00\x01\x02\x03", b"1\\2\\3\\4\\5\\6\\7\\8\\9\\10", b" \\ \\ ", b"0\\0\\0\\0\\0\\0"]
VALUES = st.one_of(st.sampled_from(HOSTILE),
                   st.text(alphabet="0123456789.-+eE \\,naifNI", max_size=40).map(lambda t: t.encode()))


def with_value(raw: bytes, tag: int, vr: bytes, value: bytes) -> bytes:
    """A Part 10 file (explicit VR little endian) with the top-level element ``tag`` holding ``value``."""
    head = struct.pack("<HH2s", tag >> 16, tag & 0xFFFF, vr)
    at = raw.index(head, 132)
    (length,) = struct.unpack_from("<H", raw, at + 6)
    if vr == b"US" and len(value) != 2:
        value = (value + b"\0\0")[:2]
    value += b" " * (len(value) % 2)
    return raw[:at] + head + struct.pack("<H", len(value)) + value + raw[at + 8 + length:]


def read(raw: bytes):
    import pydicom

    return pydicom.dcmread(io.BytesIO(raw))


@pytest.fixture(scope="module")
def phantom_files(ct_data) -> list[bytes]:
    return [p.read_bytes() for p in sorted((ct_data / "philips-phantom-5mm").iterdir()) if p.name != "DIRFILE"]


def test_the_unmutated_phantom_loads(phantom_files):
    assert len(load_series([read(raw) for raw in phantom_files]).datasets) == 28


@settings(max_examples=25 * _SCALE)
@given(field=st.sampled_from(sorted(FIELDS)), value=VALUES,
       slices=st.one_of(st.just("all"), st.sets(st.integers(0, 27), min_size=1, max_size=5)))
@example(field="ImagePositionPatient", value=b"abc\\def\\ghi", slices={10})
@example(field="RescaleSlope", value=b"abc", slices={3})
def test_hostile_geometry_loads_or_is_refused_with_a_code(phantom_files, field, value, slices):
    tag, vr = FIELDS[field]
    datasets = [read(with_value(raw, tag, vr, value) if slices == "all" or i in slices else raw)
                for i, raw in enumerate(phantom_files)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            load_series(datasets)
        except CannotAssess:
            pass
