"""The File Meta Information group written in front of each received data set (our implementation UID,
the sender's AE), encoded once per series and patched per instance: no pydicom round trip per C-STORE."""

from __future__ import annotations

import functools
import logging
import struct

from pydicom.dataset import Dataset


LOG = logging.getLogger("dicomnode.scp")  # one name for everything the Storage SCP logs (operators filter on it)


IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1427.1"  # ich-node implementation UID root
IMPLEMENTATION_VERSION = "ICHNODE_010"



@functools.lru_cache(maxsize=256)
def _meta_group(sop_class: str, transfer_syntax: str, calling_ae: str) -> tuple[bytes, bytes]:
    """The encoded File Meta group split around the SOP Instance UID value (cached: same for a series)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    marker = "9" * 64
    meta = Dataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = marker
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    if calling_ae:
        meta.SourceApplicationEntityTitle = calling_ae
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = False
    write_file_meta_info(buf, meta, enforce_standard=True)
    head, _, tail = buf.getvalue().partition(marker.encode())
    return head, tail


def file_meta_bytes(sop_class: str, sop_uid: str, transfer_syntax: str, calling_ae: str) -> bytes:
    """Preamble, 'DICM' and the File Meta Information group for a received data set."""
    head, tail = _meta_group(sop_class, transfer_syntax, calling_ae)
    uid = sop_uid.encode("ascii")
    if len(uid) % 2:
        uid += b"\x00"
    # head ends with the (0002,0003) element header (tag, VR, 2-byte length) and the group length
    # at offset 8 of the group counts the 64-byte placeholder: patch both for the real UID.
    delta = len(uid) - 64
    head = bytearray(head)
    head[-2:] = struct.pack("<H", len(uid))
    (group_len,) = struct.unpack_from("<I", head, 8)
    struct.pack_into("<I", head, 8, group_len + delta)
    return b"\x00" * 128 + b"DICM" + bytes(head) + uid + tail
