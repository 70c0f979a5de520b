"""Property-based fuzzing of the fast C-STORE path's wire handling (``fast_store``), issue 13 part 5.

Properties:

* ``parse_command``: any bytes give None or a dict, never an exception; an encoded command set comes
  back element for element.
* ``_pdv_items``: any bytes give None or PDV items that tile the body exactly; encoded PDVs come back.
* ``store_response``: for any context ID, message ID, status, comment and UIDs (text or the raw bytes a
  peer sent, non-ASCII included) it builds one P-DATA-TF PDU that pydicom decodes as a C-STORE-RSP with
  those values (UIDs as sent, cut to 64 bytes; comment ≤ 64 ASCII characters), and pynetdicom's own
  decoder reads back the status and message ID.
* ``FastStore.take`` with a stand-in DUL: a valid C-STORE whose command and data are split into any
  PDVs and PDUs is reassembled byte for byte and answered once, with its message ID (also when it is
  larger than ``memory_limit`` and streams to a sink); any sequence of PDU bodies (structured garbage
  or random bytes) raises nothing but :class:`ProtocolViolation`, a PDU it declines leaves no trace,
  and every response it sends is a well-formed C-STORE-RSP.

``HYPOTHESIS_PROFILE=explore`` runs 20× the examples (random); ``CI`` set: derandomized (tests/conftest.py).
"""

from __future__ import annotations

import inspect
import os
import queue
import struct
import warnings
from io import BytesIO
from types import SimpleNamespace

from hypothesis import event, given, settings
from hypothesis import strategies as st
from pydicom.filereader import read_dataset

try:  # the module moved into dicomnode.receive (issue 13); older trees have it at the top level
    from dicomnode.receive import fast_store as fs
except ImportError:  # pragma: no cover
    from dicomnode import fast_store as fs

_SCALE = 20 if os.environ.get("HYPOTHESIS_PROFILE") == "explore" else 1
CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
CONTEXTS = {1: (CT, EXPLICIT), 3: (CT, IMPLICIT), 5: (VERIFICATION, IMPLICIT)}
STREAMS = "open_stream" in inspect.signature(fs.FastStore).parameters


# -- encoders (independent of the module under test) --------------------------------------------


def element(elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, elem, len(value)) + value


def command_set(elements: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(element(e, v) for e, v in elements)
    return element(0x0000, struct.pack("<I", len(body))) + body


def store_rq(message_id: int, sop_class: bytes = CT.encode(), sop_uid: bytes = b"1.2.826.0.1.3680043.10.1427.5",
             data_set: int = 0x0000) -> bytes:
    return command_set([(0x0002, sop_class), (0x0100, struct.pack("<H", fs.C_STORE_RQ)),
                        (0x0110, struct.pack("<H", message_id)), (0x0700, b"\0\0"),
                        (0x0800, struct.pack("<H", data_set)), (0x1000, sop_uid)])


def pdv(context_id: int, header: int, value: bytes) -> bytes:
    return struct.pack(">IBB", len(value) + 2, context_id, header) + value


# -- stand-ins for pynetdicom's DUL and the receiver --------------------------------------------


class Context(SimpleNamespace):
    pass


def fake_dul() -> SimpleNamespace:
    contexts = [Context(context_id=k, abstract_syntax=a, transfer_syntax=[t]) for k, (a, t) in CONTEXTS.items()]
    assoc = SimpleNamespace(is_established=True, _sent_release=False, dimse=SimpleNamespace(message=None),
                            accepted_contexts=contexts, _accepted_cx={c.context_id: c for c in contexts})
    sent: list[bytes] = []
    return SimpleNamespace(assoc=assoc, state_machine=SimpleNamespace(current_state="Sta6"), event_queue=queue.Queue(),
                           _recv_pdu=queue.Queue(), socket=SimpleNamespace(send=lambda b: sent.append(bytes(b))),
                           sent=sent)


class Sink:
    def __init__(self, log: list, first: list, status: tuple[int, str]) -> None:
        self.log, self.data, self.status = log, bytearray(b"".join(bytes(f) for f in first)), status

    def write(self, chunk) -> None:
        self.data += bytes(chunk)

    def finish(self) -> tuple[int, str]:
        self.log.append(("sink", bytes(self.data)))
        return self.status

    def discard(self) -> None:
        self.log.append(("discarded", bytes(self.data)))


def fast_store(status: tuple[int, str] = (0, ""), memory_limit: int | None = None):
    """A FastStore whose answers (and streamed data sets) are logged: [(kind, data set bytes)]."""
    log: list = []

    def answer(sop_class, sop_uid, transfer_syntax, data, calling_ae, later=None, journal=None):
        log.append(("answer", b"".join(bytes(c) for c in data)))
        return status

    kwargs = {}
    if STREAMS and memory_limit is not None:
        kwargs = {"open_stream": lambda sop_class, sop_uid, ts, ae, first: Sink(log, first, status),
                  "memory_limit": memory_limit}
    return fs.FastStore(answer, lambda: "FUZZ", **kwargs), log


def decode_response(pdu: bytes) -> tuple[int, dict[int, bytes], object]:
    """(context id, raw command elements, pydicom Dataset) of a C-STORE-RSP PDU; asserts its framing."""
    kind, _, length = struct.unpack_from(">BBI", pdu)
    assert kind == 0x04 and length == len(pdu) - 6
    items = fs._pdv_items(bytearray(pdu[6:]))
    assert items is not None and len(items) == 1
    [(ctx, mch, start, end)] = items
    assert mch == 0x03  # a command, its last fragment
    raw = pdu[6 + start:6 + end]
    elements = fs.parse_command(raw)
    assert elements is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-ASCII UIDs echoed back are invalid UI values to pydicom
        ds = read_dataset(BytesIO(raw), is_implicit_VR=True, is_little_endian=True)
    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.CommandField == fs.C_STORE_RSP and ds.CommandDataSetType == fs.NO_DATA_SET
    return ctx, elements, ds


# -- parse_command and _pdv_items ----------------------------------------------------------------

ELEMENTS = st.dictionaries(st.integers(0, 0xFFFF), st.binary(max_size=70), max_size=8)


@settings(max_examples=200 * _SCALE)
@given(elements=ELEMENTS)
def test_parse_command_reads_back_an_encoded_command_set(elements):
    raw = b"".join(element(e, v) for e, v in elements.items())
    assert fs.parse_command(raw) == elements


@settings(max_examples=300 * _SCALE)
@given(raw=st.one_of(st.binary(max_size=200), ELEMENTS.map(lambda d: b"".join(element(e, v) for e, v in d.items())).flatmap(
    lambda raw: st.tuples(st.just(raw), st.integers(0, max(len(raw) - 1, 0)), st.integers(0, 255)).map(
        lambda t: t[0][:t[1]] + bytes([t[2]]) + t[0][t[1] + 1:]))))
def test_parse_command_never_raises(raw):
    got = fs.parse_command(raw)
    assert got is None or (isinstance(got, dict) and sum(8 + len(v) for v in got.values()) <= len(raw))
    assert fs.parse_command(memoryview(raw)) == got


PDVS = st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=40)), min_size=1, max_size=6)


@settings(max_examples=200 * _SCALE)
@given(pdvs=PDVS)
def test_pdv_items_reads_back_encoded_pdvs(pdvs):
    body = bytearray(b"".join(pdv(c, m, v) for c, m, v in pdvs))
    items = fs._pdv_items(body)
    assert [(c, m, bytes(body[s:e])) for c, m, s, e in items] == pdvs


@settings(max_examples=300 * _SCALE)
@given(body=st.one_of(st.binary(max_size=120), PDVS.map(lambda p: b"".join(pdv(c, m, v) for c, m, v in p)).flatmap(
    lambda b: st.tuples(st.just(b), st.integers(0, len(b))).map(lambda t: t[0][:t[1]]))))
def test_pdv_items_tile_the_body_or_are_none(body):
    items = fs._pdv_items(bytearray(body))
    if items is None:
        return
    pos = 0
    for _, _, start, end in items:
        assert start == pos + 6 and start <= end
        pos = end
    assert pos == len(body)


# -- store_response --------------------------------------------------------------------------------

UID_TEXT = st.one_of(st.from_regex(r"[0-9.]{0,70}", fullmatch=True), st.text(max_size=80))
UID_BYTES = st.one_of(st.binary(max_size=80), st.sampled_from([b"1.2.\xe9", "1.٢".encode(), b"1.2.3\0", b"../../x",
                                                              b"1.2.3 ", b"", b"\0" * 9]))


@settings(max_examples=300 * _SCALE)
@given(context_id=st.integers(1, 255), message_id=st.integers(0, 0xFFFF), status=st.integers(0, 0xFFFF),
       comment=st.text(max_size=100), sop_class=st.one_of(UID_TEXT, UID_BYTES), sop_uid=st.one_of(UID_TEXT, UID_BYTES))
def test_store_response_decodes_to_what_was_asked(context_id, message_id, status, comment, sop_class, sop_uid):
    pdu = fs.store_response(context_id, message_id, sop_class, sop_uid, status, comment)
    ctx, elements, ds = decode_response(pdu)
    assert ctx == context_id
    assert (ds.MessageIDBeingRespondedTo, ds.Status) == (message_id, status)
    for elem, sent in ((0x0002, sop_class), (0x1000, sop_uid)):
        raw = sent if isinstance(sent, bytes) else sent.encode("ascii", "replace")
        assert elements[elem].rstrip(b"\0") == raw.rstrip(b"\0 ")[:64].rstrip(b"\0"), elem
        assert len(elements[elem]) % 2 == 0 and len(elements[elem]) <= 64
    if status != 0 and comment:
        text = elements[0x0902]
        assert len(text) <= 64 and len(text) % 2 == 0 and text.isascii()
        assert text.rstrip(b" ") == comment[:64].encode("ascii", "replace").rstrip(b" ")
    else:
        assert 0x0902 not in elements


@settings(max_examples=100 * _SCALE)
@given(context_id=st.integers(0, 127).map(lambda c: 2 * c + 1), message_id=st.integers(1, 0xFFFF),
       status=st.sampled_from([0x0000, 0xA700, 0xA900, 0xC000, 0x0110, 0x0122]), comment=st.text(max_size=80),
       sop_uid=st.from_regex(r"[1-9][0-9]{0,20}(\.[1-9][0-9]{0,8}){1,5}", fullmatch=True))
def test_pynetdicom_reads_the_response(context_id, message_id, status, comment, sop_uid):
    from pynetdicom.dimse_messages import C_STORE_RSP as RSP
    from pynetdicom.pdu import P_DATA_TF

    pdu = P_DATA_TF()
    pdu.decode(fs.store_response(context_id, message_id, CT, sop_uid, status, comment))
    msg = RSP()
    assert msg.decode_msg(pdu.to_primitive())  # what a pynetdicom SCU does with the PDU
    assert msg.context_id == context_id
    primitive = msg.message_to_primitive()
    assert (primitive.MessageIDBeingRespondedTo, primitive.Status) == (message_id, status)
    assert (str(primitive.AffectedSOPClassUID), str(primitive.AffectedSOPInstanceUID)) == (CT, sop_uid)


# -- FastStore.take --------------------------------------------------------------------------------


@st.composite
def split_store(draw):
    """One valid C-STORE as PDU bodies: the command PDV, then its data set in PDVs, grouped into PDUs."""
    context_id = draw(st.sampled_from([1, 3]))
    message_id = draw(st.integers(0, 0xFFFF))
    data = draw(st.binary(min_size=1, max_size=3000))
    cuts = sorted(set(draw(st.lists(st.integers(1, len(data)), max_size=8))) - {len(data)})
    fragments = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
    pdvs = [pdv(context_id, 0x03, store_rq(message_id))]
    pdvs += [pdv(context_id, 0x02 if i == len(fragments) - 1 else 0x00, f) for i, f in enumerate(fragments)]
    bodies, i = [], 0
    while i < len(pdvs):
        n = draw(st.integers(1, 3))
        bodies.append(bytearray(b"".join(pdvs[i:i + n])))
        i += n
    return message_id, context_id, data, bodies


@settings(max_examples=200 * _SCALE)
@given(stores=st.lists(split_store(), min_size=1, max_size=3),
       status=st.sampled_from([(0, ""), (0xC000, "unparsable data set"), (0xA900, "é" * 80)]),
       memory_limit=st.one_of(st.none(), st.integers(0, 4000)))
def test_a_store_split_anywhere_is_reassembled_and_answered_once(stores, status, memory_limit):
    fast, log = fast_store(status, memory_limit)
    dul = fake_dul()
    for message_id, context_id, data, bodies in stores:
        for body in bodies:
            assert fast.take(dul, body) is True
        assert not fast.busy
        kind, got = log[-1]
        assert got == data and kind in ("answer", "sink")
        if memory_limit is None or len(data) <= memory_limit or not STREAMS:
            assert kind == "answer"
        ctx, elements, ds = decode_response(dul.sent[-1])
        assert (ctx, ds.MessageIDBeingRespondedTo, ds.Status) == (context_id, message_id, status[0])
    assert len(dul.sent) == len(stores) == len(log)


def _uid_like():
    return st.one_of(st.just(CT.encode()), st.just(CT.encode() + b"\0"), st.just(VERIFICATION.encode()), UID_BYTES)


@st.composite
def garbage_command(draw) -> bytes:
    """A command set that is, or almost is, a C-STORE-RQ: elements missing, odd values, shuffled."""
    elements = {
        0x0002: draw(_uid_like()),
        0x0100: struct.pack("<H", draw(st.sampled_from([fs.C_STORE_RQ, fs.C_STORE_RQ, 0x0030, fs.C_STORE_RSP]))),
        0x0110: draw(st.one_of(st.integers(0, 0xFFFF).map(lambda m: struct.pack("<H", m)), st.binary(max_size=3))),
        0x0700: b"\0\0",
        0x0800: struct.pack("<H", draw(st.sampled_from([0x0000, 0x0001, fs.NO_DATA_SET]))),
        0x1000: draw(_uid_like()),
    }
    keep = draw(st.lists(st.sampled_from(sorted(elements)), unique=True, min_size=3, max_size=6))
    items = [(e, elements[e]) for e in sorted(keep)]
    if draw(st.booleans()):
        items = draw(st.permutations(items))
    return command_set(items)


PDV_VALUE = st.one_of(garbage_command(), st.binary(max_size=60))
BODY = st.one_of(
    st.binary(max_size=60),
    st.lists(st.tuples(st.sampled_from([1, 3, 5, 7, 0]), st.sampled_from([0x00, 0x01, 0x02, 0x03, 0xFF]), PDV_VALUE),
             min_size=1, max_size=3).map(lambda items: b"".join(pdv(c, m, v) for c, m, v in items)),
    split_store().map(lambda s: bytes(s[3][0])),
).flatmap(lambda b: st.one_of(st.just(b), st.integers(0, len(b)).map(lambda n: b[:n]),       # as is, cut short,
                              st.tuples(st.integers(0, max(len(b) - 1, 0)), st.integers(1, 255)).map(  # or a byte flipped
                                  lambda t: b[:t[0]] + bytes([(b[t[0]] ^ t[1]) if b else 0]) + b[t[0] + 1:])))


@settings(max_examples=400 * _SCALE)
@given(bodies=st.lists(BODY, min_size=1, max_size=6), memory_limit=st.one_of(st.none(), st.integers(0, 100)),
       status=st.sampled_from([(0, ""), (0xC000, "cannot understand"), (0x0110, "ü" * 70)]))
def test_any_pdu_sequence_raises_only_protocol_violation(bodies, memory_limit, status):
    fast, log = fast_store(status, memory_limit)
    dul = fake_dul()
    for body in bodies:
        busy, answered, sent = fast.busy, len(log), len(dul.sent)
        try:
            taken = fast.take(dul, bytearray(body))
        except fs.ProtocolViolation:
            assert busy or len(log) > answered, "a violation without a C-STORE in progress"
            event("protocol violation")
            fast.abandon()
            break
        if not taken:  # declined: pynetdicom decodes it; nothing here may have changed
            assert (fast.busy, len(log), len(dul.sent)) == (busy, answered, sent)
            event("declined")
        elif len(log) > answered:
            event("answered")
    for pdu in dul.sent:
        _, elements, ds = decode_response(pdu)
        assert ds.Status == status[0]
    assert len(dul.sent) == sum(1 for kind, _ in log if kind in ("answer", "sink"))
