"""The PDU meter: every declared length checked against the node's limits, however the bytes are split."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomnode.receive.guard import ASSOCIATE_MAX, Limits, PduMeter, PduViolation

LIMITS = Limits(max_pdu=16384, max_message=100_000, idle_s=5)


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def pdv(value: bytes, ctx: int = 1, command: bool = False, last: bool = True) -> bytes:
    return struct.pack(">LBB", len(value) + 2, ctx, int(command) | (int(last) << 1)) + value


def p_data(*pdvs: bytes) -> bytes:
    return pdu(0x04, b"".join(pdvs))


def feed_split(stream: bytes, cuts: list[int], limits: Limits = LIMITS) -> None:
    meter = PduMeter(limits)
    prev = 0
    for cut in sorted(set(c % (len(stream) + 1) for c in cuts)) + [len(stream)]:
        meter.feed(stream[prev:cut])
        prev = cut


def test_a_one_gib_associate_request_is_refused_from_its_header_alone():
    with pytest.raises(PduViolation, match="A-ASSOCIATE"):
        PduMeter(LIMITS).feed(struct.pack(">BBL", 0x01, 0, 1 << 30))
    PduMeter(LIMITS).feed(struct.pack(">BBL", 0x01, 0, ASSOCIATE_MAX))  # at the limit: fine


def test_p_data_longer_than_the_announced_maximum_is_refused():
    PduMeter(LIMITS).feed(p_data(pdv(b"x" * (LIMITS.max_pdu - 6))))
    with pytest.raises(PduViolation, match="maximum PDU length"):
        PduMeter(LIMITS).feed(p_data(pdv(b"x" * (LIMITS.max_pdu - 5))))


def test_a_pdv_that_overruns_its_pdu_is_refused():
    body = struct.pack(">LBB", 5000, 1, 2) + b"x" * 100
    with pytest.raises(PduViolation, match="does not fit"):
        PduMeter(LIMITS).feed(pdu(0x04, body))


def test_a_data_set_over_the_limit_is_refused_across_pdus_and_the_count_restarts_after_the_last_fragment():
    chunk = b"d" * 16000
    ok = b"".join(p_data(pdv(chunk, last=False)) for _ in range(6)) + p_data(pdv(b"d" * 3000))  # 99 000 bytes
    meter = PduMeter(LIMITS)
    meter.feed(ok)
    meter.feed(ok)  # a second data set of the same size: the count restarted
    with pytest.raises(PduViolation, match="data set larger"):
        meter.feed(b"".join(p_data(pdv(chunk, last=False)) for _ in range(7)))


def test_unknown_pdu_types_and_long_release_pdus_are_refused():
    with pytest.raises(PduViolation, match="unknown PDU type"):
        PduMeter(LIMITS).feed(pdu(0x09, b""))
    with pytest.raises(PduViolation, match="A-RELEASE"):
        PduMeter(LIMITS).feed(struct.pack(">BBL", 0x05, 0, 1 << 20))


def test_limits_below_what_the_protocol_needs_are_rejected():
    with pytest.raises(ValueError):
        Limits(max_pdu=100, max_message=1, idle_s=1)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_a_valid_stream_passes_however_it_is_split(cuts):
    stream = (pdu(0x01, b"a" * 300) + p_data(pdv(b"c" * 80, command=True), pdv(b"d" * 5000, last=False))
              + p_data(pdv(b"d" * 7000)) + pdu(0x05, b"\0" * 4))
    feed_split(stream, cuts)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=4096), st.lists(st.integers(min_value=0, max_value=4096), max_size=6))
def test_arbitrary_bytes_raise_nothing_but_a_violation(data, cuts):
    try:
        feed_split(data, cuts)
    except PduViolation:
        pass


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.integers(min_value=0, max_value=2**32 - 1), st.sampled_from([1, 2, 3, 4, 5, 6, 7]))
def test_every_declared_length_over_its_limit_is_refused_before_any_body_byte(length, pdu_type):
    limit = {4: LIMITS.max_pdu, 1: ASSOCIATE_MAX, 2: ASSOCIATE_MAX, 3: ASSOCIATE_MAX}.get(pdu_type, 64)
    meter = PduMeter(LIMITS)
    if length > limit:
        with pytest.raises(PduViolation):
            meter.feed(struct.pack(">BBL", pdu_type, 0, length))
    else:
        meter.feed(struct.pack(">BBL", pdu_type, 0, length))
