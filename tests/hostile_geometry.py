"""Hostile geometry values for property tests of everything that reads a series' geometry (selection in
the node, ``pipeline.volume``): the bytes a careless or hostile sender may put in DS/US elements."""

from __future__ import annotations

import os
import struct

from hypothesis import strategies as st

SCALE = 20 if os.environ.get("HYPOTHESIS_PROFILE") == "explore" else 1
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
        value = (value + b"\0\0")[:2]  # an unsigned short is two bytes, whatever they say
    value += b" " * (len(value) % 2)
    return raw[:at] + head + struct.pack("<H", len(value)) + value + raw[at + 8 + length:]
