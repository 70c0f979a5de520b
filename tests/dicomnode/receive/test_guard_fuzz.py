"""The PDU meter (dicomnode.receive.guard) against a reference model, issue 13 part 5 (PDU/PDV parsing).

tests/dicomnode/receive/test_guard.py checks the limits one by one and that arbitrary bytes raise only
:class:`PduViolation`. Here a plain whole-stream parser written from PS3.8 9.3 says, for any stream of
PDUs (valid ones, ones with lengths near or past the limits, corrupted ones, random bytes), at which
byte the first violation becomes visible: the byte that completes the offending PDU or PDV item header.
The meter, fed the same stream in any split (byte by byte included), must raise exactly there: never
later (it would have read a body the peer should not send) and never earlier or without a cause.

``HYPOTHESIS_PROFILE=explore`` runs 20× the examples (random); ``CI`` set: derandomized (tests/conftest.py).
"""

from __future__ import annotations

import os
import struct

from hypothesis import event, given, settings
from hypothesis import strategies as st

from dicomnode.receive.guard import SMALL_PDU_MAX, Limits, PduMeter, PduViolation

_SCALE = 20 if os.environ.get("HYPOTHESIS_PROFILE") == "explore" else 1
LIMITS = Limits(max_pdu=4096, max_message=6000, idle_s=5, max_associate=600, max_command=300)


def reference(stream: bytes, lim: Limits) -> int | None:
    """Offset of the byte at which the first violation is known, or None (PS3.8 9.3, the node's limits)."""
    pos, command, message = 0, 0, 0
    while pos + 6 <= len(stream):
        pdu_type, _, length = struct.unpack_from(">BBL", stream, pos)
        end_of_header = pos + 5
        if pdu_type == 0x04:
            limit = lim.max_pdu
        elif pdu_type in (0x01, 0x02, 0x03):
            limit = lim.max_associate
        elif 0x05 <= pdu_type <= 0x07:
            limit = SMALL_PDU_MAX
        else:
            return end_of_header
        if length > limit:
            return end_of_header
        pos += 6
        if pdu_type != 0x04:
            pos += length
            continue
        left = length
        while left:
            if pos + 6 > len(stream):
                return None
            item_len, _, mch = struct.unpack_from(">LBB", stream, pos)
            if item_len < 2 or item_len + 4 > left:
                return pos + 5
            left -= item_len + 4
            value = item_len - 2
            if mch & 0x01:
                command += value
                if command > lim.max_command:
                    return pos + 5
                if mch & 0x02:
                    command = 0
            else:
                message += value
                if message > lim.max_message:
                    return pos + 5
                if mch & 0x02:
                    message = 0
            pos += 6 + value
    return None


def meter_verdict(stream: bytes, cuts: list[int], lim: Limits = LIMITS) -> tuple[int, int] | None:
    """(start, end) of the chunk whose feed made the meter raise, or None."""
    meter = PduMeter(lim)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {len(stream)})
    prev = 0
    for cut in points:
        try:
            meter.feed(stream[prev:cut])
        except PduViolation:
            return prev, cut  # the violation lies within this chunk
        prev = cut
    return None


def check(stream: bytes, cuts: list[int]) -> None:
    expected = reference(stream, LIMITS)
    got = meter_verdict(stream, cuts)
    if expected is None:
        assert got is None, f"violation raised in bytes {got} where PS3.8 and the limits see none"
    else:
        assert got is not None, f"no violation; expected at byte {expected}"
        start, end = got
        assert start <= expected < end, f"violation raised in bytes {got}, expected at byte {expected}"
    one_by_one = meter_verdict(stream, list(range(len(stream) + 1)))
    assert (one_by_one is None) == (expected is None)
    if expected is not None:
        assert one_by_one == (expected, expected + 1), "raised before or after the offending header's last byte"
    event("violation" if expected is not None else "clean")


def pdu(pdu_type: int, body: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body) if length is None else length) + body


def pdv(value: bytes, header: int, length: int | None = None) -> bytes:
    return struct.pack(">LBB", len(value) + 2 if length is None else length, 1, header) + value


_NEAR = st.sampled_from([0, 1, 2, 3, 5, 63, 64, 65, 299, 300, 301, 599, 600, 601, 4095, 4096, 4097, 2**32 - 1])
PDV = st.tuples(st.integers(0, 400), st.sampled_from([0x00, 0x01, 0x02, 0x03]),
                st.one_of(st.none(), st.none(), _NEAR))  # value size, header, a length field that lies
PDU = st.one_of(
    st.tuples(st.just(0x04), st.lists(PDV, max_size=4), st.one_of(st.none(), st.none(), _NEAR)),
    st.tuples(st.sampled_from([0x01, 0x02, 0x03, 0x05, 0x06, 0x07, 0x00, 0x08, 0xFF]),
              st.integers(0, 700), st.one_of(st.none(), st.none(), _NEAR)),
)


def build(specs) -> bytes:
    out = b""
    for kind, body, length in specs:
        if kind == 0x04:
            items = b"".join(pdv(b"v" * size, header, item_len) for size, header, item_len in body)
            out += pdu(0x04, items, length)
        else:
            out += pdu(kind, b"a" * body, length)
    return out


@settings(max_examples=400 * _SCALE)
@given(specs=st.lists(PDU, min_size=1, max_size=8), cuts=st.lists(st.integers(0, 50_000), max_size=6),
       trim=st.integers(0, 64))
def test_the_meter_raises_exactly_where_the_first_bad_header_completes(specs, cuts, trim):
    stream = build(specs)
    check(stream[:max(0, len(stream) - trim)], cuts)


@settings(max_examples=300 * _SCALE)
@given(stream=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=6))
def test_random_bytes_too(stream, cuts):
    check(stream, cuts)
