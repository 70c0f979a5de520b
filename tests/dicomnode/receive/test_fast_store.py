"""The hand-read C-STORE path's wire format, checked against pynetdicom's and pydicom's own codecs."""

from __future__ import annotations

import struct
from io import BytesIO

from pydicom.filereader import read_dataset
from pynetdicom.dimse_messages import C_STORE_RQ as C_STORE_RQ_MSG
from pynetdicom.dimse_primitives import C_STORE

from dicomnode.receive.fast_store import C_STORE_RSP, NO_DATA_SET, FastStore, _pdv_items, parse_command, store_response

CT = "1.2.840.10008.5.1.4.1.1.2"
SOP = "1.2.826.0.1.3680043.10.1.2.3"


def decode_command(raw: bytes):
    return read_dataset(BytesIO(raw), is_implicit_VR=True, is_little_endian=True)


def test_response_pdu_decodes_as_a_c_store_rsp():
    pdu = store_response(5, 42, CT, SOP + "1", 0xA900, "SOPInstanceUID differs from AffectedSOPInstanceUID")
    kind, _, length = struct.unpack_from(">BBI", pdu)
    assert kind == 0x04 and length == len(pdu) - 6
    [(ctx, mch, start, end)] = _pdv_items(bytearray(pdu[6:]))
    assert ctx == 5 and mch == 0x03  # command, last fragment
    ds = decode_command(pdu[6 + start:6 + end])
    assert ds.CommandField == C_STORE_RSP and ds.MessageIDBeingRespondedTo == 42
    assert ds.CommandDataSetType == NO_DATA_SET and ds.Status == 0xA900
    assert ds.AffectedSOPClassUID == CT and ds.AffectedSOPInstanceUID == SOP + "1"
    assert ds.ErrorComment == "SOPInstanceUID differs from AffectedSOPInstanceUID"
    assert ds.CommandGroupLength == len(pdu[6 + start:6 + end]) - 12
    ok = decode_command(store_response(1, 1, CT, SOP, 0)[12:])
    assert ok.Status == 0 and "ErrorComment" not in ok


def test_parses_the_command_pynetdicom_sends():
    req = C_STORE()
    req.MessageID, req.AffectedSOPClassUID, req.AffectedSOPInstanceUID, req.Priority = 7, CT, SOP, 2
    req.DataSet = BytesIO(b"\x08\x00\x16\x00")
    msg = C_STORE_RQ_MSG()
    msg.primitive_to_message(req)
    command = parse_command(_encoded_command(msg))
    assert struct.unpack("<H", command[0x0100])[0] == 0x0001
    assert struct.unpack("<H", command[0x0110])[0] == 7
    assert command[0x0002].rstrip(b"\0").decode() == CT and command[0x1000].rstrip(b"\0").decode() == SOP
    assert struct.unpack("<H", command[0x0800])[0] != NO_DATA_SET
    assert parse_command(b"\x00\x00\x00\x01") is None            # truncated element header
    assert parse_command(b"\x08\x00\x16\x00\x02\x00\x00\x00ab") is None  # not group 0000


def _encoded_command(msg) -> bytes:
    from pynetdicom.dsutils import encode

    return encode(msg.command_set, True, True)


class _Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, sop_class, sop_uid, ts, data, calling, later=None, journal=None):
        self.calls.append((sop_class, sop_uid, ts, b"".join(data), calling))
        return 0, ""


def test_fragments_outside_a_taken_store_are_a_protocol_violation():
    import pytest

    from dicomnode.receive.fast_store import ProtocolViolation

    fast = FastStore(_Recorder(), lambda: "X")
    fast.context_id, fast.transfer_syntax = 1, "1.2.840.10008.1.2.1"  # as if a C-STORE-RQ had been taken
    command_pdv = struct.pack(">IBB", 6, 1, 0x03) + b"\0" * 4
    with pytest.raises(ProtocolViolation):
        fast.take(None, bytearray(command_pdv))
    fast.context_id = 1
    other_context = struct.pack(">IBB", 6, 3, 0x00) + b"\0" * 4
    with pytest.raises(ProtocolViolation):
        fast.take(None, bytearray(other_context))
    fast.abandon()
    assert not fast.busy
