"""C-STORE fuzz harness: mutated data sets against the full node, then checks that nothing broke.

    .venv/bin/python benchmarks/fuzz_store.py [--count 1000] [--associations 40] [--parallel 2] [--seed 0]
                                              [--json benchmarks/results/fuzz_store.json]

Starts a throw-away Orthanc (the PACS) and ``ich-node serve`` as a subprocess (as the integration tests
do: free loopback ports, ``ICH_NODE__*`` overrides, its own data dir, cwd, HOME and TMPDIR inside one
run folder), waits until the node answers C-ECHO and its analysis process has loaded its models, then
sends ``--count`` mutated data sets (plus a few unmutated controls and some protocol-level garbage)
over ``--associations`` associations, ``--parallel`` at a time, with pynetdicom as SCU. The C-STORE
command and the P-DATA-TF PDUs are written by hand on the association's socket, so hostile bytes reach
the node as they are (pynetdicom would validate or re-encode them); pynetdicom negotiates, releases and
reads the responses (its association reactor stays paused for the whole association: when it pauses
per request, as ``send_c_store`` does, it now and then takes a response off the queue itself, which
looked like a node that never answers).

Mutation classes (each data set: a real CT slice of ../shared/data/ct, or a synthetic one, with fresh
UIDs, in explicit, implicit or deflated little endian; ``MUTATORS`` below):

    truncation, byte_flip, huge_length, nested_sequences, hostile_uid, non_numeric_geometry,
    text_300k, out_of_order, pixel_mismatch       (data sets: an abort is a failure, a status is expected)
    control                                       (unmutated: must be stored, 0x0000)
    protocol_garbage                              (broken PDUs, PDVs or command sets, a C-STORE-RQ whose
                                                  SOP class is neither its context's nor valid: an abort
                                                  is acceptable)

Checks, afterwards (the run fails if any fails):

    alive                 the node process is the one started (same PID, still running) and answers C-ECHO
    no_abort              no association carrying a data set was aborted by the node, none went unanswered
    expectations          controls stored (0x0000); no hostile UID ever stored
    nothing_outside       no file appeared outside the data dir: the run folder, the node's cwd, HOME and
                          TMPDIR are snapshot before the fuzzing, after it and after the analyses; hostile UIDs
                          carry a marker that is searched for under the run folder and /tmp; the node's (and
                          its children's) files open for writing are sampled every 0.2 s and must all lie in
                          the data dir
    indexed               every instance answered 0x0000 is in the index (SQLite) with a digest that
                          matches its spool file (dicomnode.store.digest.matches), and the spool file holds the
                          bytes that were sent; every spool file lies inside the spool
    valid_study           a valid head CT study (philips-phantom-5mm, new UIDs) sent afterwards is stored,
                          analysed and its SEG and SR reach Orthanc

Prints a summary (statuses per mutation class, aborted associations) and writes it as JSON with --json.
``tests/integration/test_fuzz_store.py`` runs a smaller version in ``make test``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zlib
from collections import Counter
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

from benchmarks.peers import (CT_DATA, EXE, NODE_AE, SEG_CLASS, SR_PREFIX, OrthancServer, copy_study,  # noqa: E402
                              free_port, process_tree, stop)

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT, IMPLICIT, DEFLATED = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"
UID_ROOT = "1.2.826.0.1.3680043.10.1427.77"  # ich-node's root + a branch for fuzz data

DATASET_CLASSES = ("truncation", "byte_flip", "huge_length", "nested_sequences", "hostile_uid",
                   "non_numeric_geometry", "text_300k", "out_of_order", "pixel_mismatch")
STATUS_NAMES = {0x0000: "success", 0xA700: "out of resources", 0xA900: "data set does not match SOP class",
                0xC000: "cannot understand", 0x0110: "processing failure", 0x0122: "SOP class not supported",
                0x0211: "unrecognised operation", 0x0117: "invalid SOP instance"}


# ------------------------------------------------------------------------------------------------
# encoding: a data set as a list of top-level elements, re-encoded with consistent lengths


@dataclasses.dataclass
class El:
    tag: int
    vr: bytes | None  # None in implicit VR (and for delimiters)
    value: bytes  # the raw value as encoded (a sequence: its items, delimiters included)
    undefined: bool = False  # encoded with length 0xFFFFFFFF (a sequence, or a pixel data fragment list)
    length: int | None = None  # a length to write instead of the true one (huge-length mutations)


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def _skip_undefined(raw: bytes, pos: int, implicit: bool) -> int:
    """End of an undefined-length value that starts at ``pos`` (its items, up to its delimiter)."""
    depth = 0
    while pos + 8 <= len(raw):
        g, e = struct.unpack_from("<HH", raw, pos)
        tag = (g << 16) | e
        if tag == 0xFFFEE0DD:
            if depth == 0:
                return pos + 8
            depth -= 1
            pos += 8
        elif tag == 0xFFFEE000:
            (length,) = struct.unpack_from("<I", raw, pos + 4)
            pos += 8 if length == 0xFFFFFFFF else 8 + length
        elif tag == 0xFFFEE00D:
            pos += 8
        else:
            _, vr, vpos, length = _header(raw, pos, implicit)
            if length == 0xFFFFFFFF:
                depth += 1
                pos = vpos
            else:
                pos = vpos + length
    raise ValueError("undefined-length value without its end")


def _header(raw: bytes, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    g, e = struct.unpack_from("<HH", raw, pos)
    tag = (g << 16) | e
    if implicit or g == 0xFFFE:
        return tag, None, pos + 8, struct.unpack_from("<I", raw, pos + 4)[0]
    vr = raw[pos + 4:pos + 6]
    if vr in _LONG_VRS:
        return tag, vr, pos + 12, struct.unpack_from("<I", raw, pos + 8)[0]
    return tag, vr, pos + 8, struct.unpack_from("<H", raw, pos + 6)[0]


def parse(raw: bytes, implicit: bool) -> list[El]:
    out, pos = [], 0
    while pos < len(raw):
        tag, vr, vpos, length = _header(raw, pos, implicit)
        if length == 0xFFFFFFFF:
            end = _skip_undefined(raw, vpos, implicit)
            out.append(El(tag, vr, raw[vpos:end], undefined=True))
        else:
            end = vpos + length
            out.append(El(tag, vr, raw[vpos:end]))
        pos = end
    return out


def encode(elements: list[El], implicit: bool) -> bytes:
    parts = []
    for el in elements:
        g, e = el.tag >> 16, el.tag & 0xFFFF
        length = 0xFFFFFFFF if el.undefined else len(el.value) if el.length is None else el.length
        if implicit or el.vr is None:
            parts.append(struct.pack("<HHI", g, e, length))
        elif el.vr in _LONG_VRS:
            parts.append(struct.pack("<HH2sHI", g, e, el.vr, 0, length))
        else:
            parts.append(struct.pack("<HH2sH", g, e, el.vr, length & 0xFFFF))
        parts.append(el.value)
    return b"".join(parts)


def find(elements: list[El], tag: int) -> El | None:
    return next((el for el in elements if el.tag == tag), None)


def put(elements: list[El], el: El) -> None:
    """Replace the element with this tag, or insert it in tag order."""
    for i, other in enumerate(elements):
        if other.tag == el.tag:
            elements[i] = el
            return
        if other.tag > el.tag:
            elements.insert(i, el)
            return
    elements.append(el)


def ui(uid: str | bytes) -> bytes:
    b = uid.encode("latin-1") if isinstance(uid, str) else uid
    return b + b"\0" if len(b) % 2 else b


def text(value: bytes) -> bytes:
    return value + b" " if len(value) % 2 else value


def deflate(raw: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(raw) + c.flush()


# ------------------------------------------------------------------------------------------------
# source data sets


@dataclasses.dataclass
class Source:
    kind: str  # phantom | ge-head | synthetic
    encoded: dict[bool, bytes]  # implicit? -> data set bytes (no file meta)


def load_sources(ct_data: Path, work: Path) -> list[Source]:
    """Every slice of the 5 mm phantom and the GE head, plus synthetic head CT slices (64², 8 slices)."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from dicomnode.observe.heartbeat import synthetic_head_ct

    paths = [("phantom", p) for p in sorted((ct_data / "philips-phantom-5mm").iterdir()) if p.name != "DIRFILE"]
    paths += [("ge-head", p) for p in sorted((ct_data / "ge-human-head-tilted").iterdir()) if p.name != "DIRFILE"]
    _, synthetic = synthetic_head_ct(work / "synthetic", slices=8, size=64, seed=7)
    paths += [("synthetic", p) for p in synthetic]
    out = []
    for kind, path in paths:
        ds = pydicom.dcmread(path)
        encoded = {}
        for implicit in (False, True):
            buf = DicomBytesIO()
            buf.is_little_endian, buf.is_implicit_VR = True, implicit
            write_dataset(buf, ds)
            encoded[implicit] = buf.getvalue()
        out.append(Source(kind, encoded))
    return out


# ------------------------------------------------------------------------------------------------
# cases


@dataclasses.dataclass
class Case:
    index: int
    klass: str
    detail: str
    transfer_syntax: str
    sop_class: bytes  # the command's Affected SOP Class UID (raw)
    sop_uid: bytes  # the command's Affected SOP Instance UID (raw)
    data: bytes | None  # the data set as it goes on the wire
    expect: str = "any"  # any | store | refuse | garbage
    garbage: bytes | None = None  # protocol_garbage: raw bytes sent instead of a C-STORE
    context_sop_class: str = CT_IMAGE  # which accepted context carries it


HOSTILE_UIDS = [
    b"../../{m}", b"../../../../tmp/{m}", b"/tmp/{m}", b"1.2.3/../../{m}", b"1.2.840..1", b"01.2.3", b"1.2.3.",
    b".1.2", b"1.2.3\\1.2.4", b"1.2.3 4", b"1.2.3\n4", b"-1.2.3", b"1.2." + b"9" * 80, b"1." * 40 + b"1",
    b"", b"\0", b"   ", b"1.2.\xe9\xe8", "1.٢.٣".encode(), b"1.2.3\x00{m}", b"%s%n%x.{m}", b"${jndi:ldap://{m}}",
    b"1.2.3;rm -rf {m}", b"C:\\{m}\\x", b"1.2.3" + b"\x7f" * 3, b"\xff\xfe\xfd", b"1" * 65,
]
GEOMETRY_TAGS = {0x00200032: b"DS", 0x00200037: b"DS", 0x00280030: b"DS", 0x00180050: b"DS", 0x00201041: b"DS",
                 0x00281052: b"DS", 0x00281053: b"DS", 0x00281050: b"DS", 0x00180088: b"DS"}
BAD_NUMBERS = [b"abc\\def\\ghi", b"NaN\\NaN\\NaN", b"inf\\-inf\\1e999", b"", b"1,5\\2,5\\3,5", b"1\\2",
               b"1e308\\1e308\\1e308", b"-0\\-0\\-0", b"\x00\x01\x02\x03", b"1\\2\\3\\4\\5\\6\\7\\8\\9\\10",
               b"0x10\\0b1\\0o7", b"1_000\\2_0\\3", b"\xd9\xa1\\\xd9\xa2\\\xd9\xa3", b" \\ \\ "]
TEXT_TAGS = [(0x00100010, b"PN"), (0x00100020, b"LO"), (0x00081030, b"LO"), (0x0008103E, b"LO"),
             (0x00080080, b"LO"), (0x00204000, b"LT"), (0x00180015, b"CS"), (0x00181210, b"SH"),
             (0x00080008, b"CS"), (0x00091001, b"LO"), (0x00200013, b"IS")]


class Generator:
    """Deterministic cases: case ``i`` depends only on (seed, i)."""

    def __init__(self, sources: list[Source], seed: int, marker: str) -> None:
        self.sources = sources
        self.seed = seed
        self.marker = marker.encode()
        self.run = random.Random(seed).randrange(10**6)
        self.studies = {kind: f"{UID_ROOT}.{self.run}.1.{n}" for n, kind in enumerate(("phantom", "ge-head", "synthetic"), 1)}

    def uid(self, i: int) -> str:
        return f"{UID_ROOT}.{self.run}.2.{i}"

    def base(self, rng: random.Random, i: int, implicit: bool) -> tuple[list[El], str]:
        src = rng.choice(self.sources)
        elements = parse(src.encoded[implicit], implicit)
        sop = self.uid(i)
        study = self.studies[src.kind]
        for tag, value in ((0x00080018, sop), (0x0020000D, study), (0x0020000E, study + ".1")):
            el = find(elements, tag)
            if el is not None:
                el.value = ui(value)
        return elements, src.kind

    def case(self, i: int, klass: str) -> Case:
        rng = random.Random(f"{self.seed}/{i}")
        ts = rng.choices([EXPLICIT, IMPLICIT, DEFLATED], weights=[50, 35, 15])[0]
        implicit = ts == IMPLICIT
        elements, kind = self.base(rng, i, implicit)
        c = Case(i, klass, kind, ts, ui(CT_IMAGE), ui(self.uid(i)), None)
        if klass == "protocol_garbage":
            return self._garbage(rng, c, elements)
        # a mutator edits ``elements``, or sets c.data (the bytes before deflating), or returns an
        # edit of the bytes as they go on the wire (after deflating)
        on_wire = getattr(self, "_" + klass)(rng, c, elements, implicit)
        if c.data is None:
            c.data = encode(elements, implicit)
        if ts == DEFLATED:
            c.data = deflate(c.data)
        if on_wire is not None:
            c.data = on_wire(c.data)
        return c

    # -- the mutators --------------------------------------------------------------------------------

    def _control(self, rng, c, elements, implicit):
        c.expect, c.detail = "store", f"{c.detail} unmutated"

    def _truncation(self, rng, c, elements, implicit):
        raw = encode(elements, implicit)
        pixel_at = len(raw) - len(find(elements, 0x7FE00010).value) if find(elements, 0x7FE00010) else len(raw)
        where = rng.choice(["header", "pixels", "tiny", "last byte"])
        if where == "header":
            cut = rng.randrange(1, max(2, pixel_at))
        elif where == "pixels":
            cut = rng.randrange(pixel_at, len(raw))
        elif where == "tiny":
            cut = rng.randrange(0, 17)
        else:
            cut = len(raw) - 1
        c.detail += f" cut at {cut} of {len(raw)} ({where})"
        if c.transfer_syntax == DEFLATED and rng.random() < 0.5:
            c.detail += ", of the deflated stream"
            return lambda wire: wire[:len(wire) * cut // len(raw)]
        c.data = raw[:cut]
        return None

    def _byte_flip(self, rng, c, elements, implicit):
        n = rng.choice([1, 1, 2, 4, 16])
        region = rng.choice(["header", "anywhere", "uids"])
        raw = bytearray(encode(elements, implicit))
        lo, hi = 0, len(raw)
        if region == "header":
            hi = min(len(raw), 2000)
        elif region == "uids":
            at = raw.find(ui(self.uid(c.index)))
            lo, hi = max(0, at - 40), min(len(raw), at + 80)
        positions = [rng.randrange(lo, hi) for _ in range(n)]
        c.detail += f" {n} byte(s) flipped " + ("anywhere" if region == "anywhere" else f"in the {region}")
        bits = [1 << rng.randrange(8) for _ in positions]
        if c.transfer_syntax == DEFLATED and rng.random() < 0.5:
            c.detail += " of the deflated stream"

            def flip(wire: bytes) -> bytes:
                w = bytearray(wire)
                for p, bit in zip(positions, bits):
                    w[p % len(w)] ^= bit
                return bytes(w)
            return flip
        for p, bit in zip(positions, bits):
            raw[p] ^= bit
        c.data = bytes(raw)
        return None

    def _huge_length(self, rng, c, elements, implicit):
        header = [el for el in elements if el.tag <= 0x00200013 and not el.undefined]  # what the node reads
        rest = [el for el in elements if el.tag > 0x00200013 and not el.undefined]    # incl. the pixel data
        el = rng.choice(header if header and (rng.random() < 0.6 or not rest) else rest or elements)
        value = rng.choice([0xFFFFFFF0, 0x7FFFFFFF, 0xFFFFFFFE, 0x80000000, len(el.value) + 10**6, 0xFFFFFFFF])
        if not implicit and el.vr is not None and el.vr not in _LONG_VRS:
            if rng.random() < 0.5:
                value = 0xFFFF  # the most a short explicit VR can say
            else:
                el.vr = b"UN"  # becomes a long VR to carry a 32-bit length
        if value == 0xFFFFFFFF:
            el.undefined = True  # an undefined length on a plain element
        else:
            el.length = value
        c.detail += f" ({el.tag >> 16:04X},{el.tag & 0xFFFF:04X}) length 0x{value:08X}"

    def _nested_sequences(self, rng, c, elements, implicit):
        depth = rng.choice([33, 64, 200, 1000, 5000, 20000])
        closed = rng.random() < 0.7
        tag = rng.choice([0x00080006, 0x00081140, 0x00400275])  # before the UIDs, among them, after (0020,0013)
        item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        inner_seq = struct.pack("<HHI", 0x0008, 0x1140, 0xFFFFFFFF) if implicit else \
            struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
        end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)  # item, sequence
        value = item + (inner_seq + item) * (depth - 1) + (end * depth if closed else b"")  # incl. its own end
        put(elements, El(tag, None if implicit else b"SQ", value, undefined=True))
        if not closed:  # nothing after it: the rest of the data set would be inside the sequence
            idx = next(i for i, el in enumerate(elements) if el.tag == tag)
            rest = encode(elements[idx + 1:], implicit)
            del elements[idx + 1:]
            elements[idx].value += rest
        c.detail += f" ({tag >> 16:04X},{tag & 0xFFFF:04X}) nested {depth} deep, {'closed' if closed else 'never closed'}"

    def _hostile_uid(self, rng, c, elements, implicit):
        value = rng.choice(HOSTILE_UIDS).replace(b"{m}", self.marker)
        where = rng.choice(["command+data SOPInstanceUID", "data SOPInstanceUID", "StudyInstanceUID",
                            "SeriesInstanceUID", "data SOPClassUID", "command SOPInstanceUID",
                            "command SOPClassUID (MR on the CT context)"])
        c.expect = "refuse"
        if where in ("command+data SOPInstanceUID", "command SOPInstanceUID"):
            c.sop_uid = ui(value)
        elif where.startswith("command SOPClassUID"):  # another known storage class: pynetdicom's path
            value = b"1.2.840.10008.5.1.4.1.1.4"
            c.sop_class = ui(value)
        tags = {"command+data SOPInstanceUID": 0x00080018, "data SOPInstanceUID": 0x00080018,
                "StudyInstanceUID": 0x0020000D, "SeriesInstanceUID": 0x0020000E, "data SOPClassUID": 0x00080016}
        if where in tags:
            el = find(elements, tags[where])
            if el is None:
                el = El(tags[where], None if implicit else b"UI", b"")
                put(elements, el)
            if not implicit and len(value) > 0xFFFF:
                el.vr = b"UN"
            el.value = ui(value)
        c.detail += f" {where} = {value[:40]!r}"

    def _non_numeric_geometry(self, rng, c, elements, implicit):
        tags = rng.sample(sorted(GEOMETRY_TAGS), rng.randint(1, 4))
        for tag in tags:
            value = rng.choice(BAD_NUMBERS)
            put(elements, El(tag, None if implicit else GEOMETRY_TAGS[tag], text(value)))
        if rng.random() < 0.3:  # Rows/Columns as text where numbers belong
            put(elements, El(0x00280010, None if implicit else b"US", b"ab"))
        c.detail += " " + ",".join(f"({t >> 16:04X},{t & 0xFFFF:04X})" for t in tags)

    def _text_300k(self, rng, c, elements, implicit):
        tag, vr = rng.choice(TEXT_TAGS)
        size = 300_000
        kind = rng.choice(["letters", "backslashes", "utf-8", "binary", "digits"])
        if kind == "letters":
            value = (b"ICH FUZZ " * (size // 9 + 1))[:size]
        elif kind == "backslashes":
            value = (b"A\\" * (size // 2))[:size]
        elif kind == "utf-8":
            value = ("Ωμέγα ﷽ 🧠 " * (size // 20))[:size // 2].encode("utf-8")[:size]
        elif kind == "binary":
            value = bytes(random.Random(c.index).randrange(256) for _ in range(4096)) * (size // 4096)
        else:
            value = b"9" * size
        if not implicit:
            vr = rng.choice([b"UC", b"UT", b"UN"]) if vr not in (b"LT",) else rng.choice([b"UT", b"UN"])
        put(elements, El(tag, None if implicit else vr, text(value)))
        c.detail += f" ({tag >> 16:04X},{tag & 0xFFFF:04X}) {len(value)} bytes of {kind}"

    def _out_of_order(self, rng, c, elements, implicit):
        how = rng.choice(["swap", "swap", "pixels first", "reverse group 0020", "duplicate"])
        before_pixels = [i for i, el in enumerate(elements[:-1]) if el.tag < 0x7FE00010]
        if how == "swap":
            i = rng.choice(before_pixels)
            elements[i], elements[i + 1] = elements[i + 1], elements[i]
            c.detail += f" ({elements[i].tag >> 16:04X},{elements[i].tag & 0xFFFF:04X}) before its predecessor"
        elif how == "pixels first":
            px = find(elements, 0x7FE00010)
            if px is not None:
                elements.remove(px)
                elements.insert(0, px)
            c.detail += " pixel data first"
        elif how == "reverse group 0020":
            idx = [i for i, el in enumerate(elements) if el.tag >> 16 == 0x0020]
            group = [elements[i] for i in idx][::-1]
            for i, el in zip(idx, group):
                elements[i] = el
            c.detail += " group 0020 reversed"
        else:
            i = rng.choice(before_pixels)
            elements.insert(i + 1, dataclasses.replace(elements[i]))
            c.detail += f" ({elements[i].tag >> 16:04X},{elements[i].tag & 0xFFFF:04X}) twice"

    def _pixel_mismatch(self, rng, c, elements, implicit):
        how = rng.choice(["rows", "columns", "pixels cut", "pixels doubled", "bits", "frames", "samples"])
        px = find(elements, 0x7FE00010)
        if how in ("rows", "columns"):
            value = rng.choice([0, 1, 4096, 65535, 513])
            put(elements, El(0x00280010 if how == "rows" else 0x00280011, None if implicit else b"US",
                             struct.pack("<H", value)))
            c.detail += f" {how} = {value}"
        elif how == "pixels cut" and px is not None:
            px.value = px.value[:len(px.value) // rng.choice([2, 3, 512])] or b"\0\0"
            px.value += b"\0" * (len(px.value) % 2)
            c.detail += f" pixel data cut to {len(px.value)} bytes"
        elif how == "pixels doubled" and px is not None:
            px.value = px.value * 2
            c.detail += f" pixel data {len(px.value)} bytes"
        elif how == "bits":
            value = rng.choice([1, 8, 32, 64, 0])
            put(elements, El(0x00280100, None if implicit else b"US", struct.pack("<H", value)))
            c.detail += f" BitsAllocated = {value}"
        elif how == "frames":
            put(elements, El(0x00280008, None if implicit else b"IS", text(b"100")))
            c.detail += " NumberOfFrames = 100"
        else:
            put(elements, El(0x00280002, None if implicit else b"US", struct.pack("<H", 3)))
            c.detail += " SamplesPerPixel = 3"

    # -- protocol-level garbage (an abort is acceptable) ---------------------------------------------

    def _garbage(self, rng, c, elements) -> Case:
        data = encode(elements, False)
        kind = rng.choice(["random bytes", "unknown PDU type", "PDV length past the PDU", "PDV length 0",
                           "data before command", "fragment on another context", "A-ASSOCIATE-RQ again",
                           "PDU claims 1 GiB", "command set with group 0008", "C-STORE-RQ of an invalid SOP class"])
        command = c_store_rq(1, c.sop_class, c.sop_uid)
        if kind == "random bytes":
            g = random.Random(c.index).randbytes(rng.randint(1, 2000))
        elif kind == "unknown PDU type":
            g = struct.pack(">BBI", rng.choice([0x00, 0x08, 0x7F, 0xFF]), 0, 16) + bytes(16)
        elif kind == "PDV length past the PDU":
            g = struct.pack(">BBI", 0x04, 0, 12) + struct.pack(">IBB", 0xFFFF, 1, 0x03) + bytes(6)
        elif kind == "PDV length 0":
            g = struct.pack(">BBI", 0x04, 0, 6) + struct.pack(">IBB", 0, 1, 0x03)
        elif kind == "data before command":
            g = p_data(1, 0x02, data[:4000])
        elif kind == "fragment on another context":
            g = p_data(1, 0x03, command) + p_data(1, 0x00, data[:1000]) + p_data(3, 0x02, data[1000:2000])
        elif kind == "A-ASSOCIATE-RQ again":
            g = struct.pack(">BBIHH", 0x01, 0, 68, 1, 0) + b"ICHNODE".ljust(16) + b"FUZZ".ljust(16) + bytes(32)
        elif kind == "PDU claims 1 GiB":
            g = struct.pack(">BBI", 0x04, 0, 1 << 30) + bytes(64)
        elif kind == "command set with group 0008":
            g = p_data(1, 0x03, struct.pack("<HHI", 0x0008, 0x0016, 2) + b"1\0")
        else:  # the command's Affected SOP Class UID is not its context's, nor any known one
            hostile = rng.choice(HOSTILE_UIDS).replace(b"{m}", self.marker)
            g = p_data(1, 0x03, c_store_rq(1, ui(hostile), c.sop_uid)) + p_data(1, 0x02, data[:2000])
            kind += f" {hostile[:40]!r}"
        c.garbage, c.detail, c.expect = g, kind, "garbage"
        return c


def c_store_rq(message_id: int, sop_class: bytes, sop_uid: bytes) -> bytes:
    def el(elem: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, elem, len(value)) + value

    body = (el(0x0002, sop_class) + el(0x0100, struct.pack("<H", 0x0001)) + el(0x0110, struct.pack("<H", message_id))
            + el(0x0700, b"\0\0") + el(0x0800, struct.pack("<H", 0x0000)) + el(0x1000, sop_uid))
    return el(0x0000, struct.pack("<I", len(body))) + body


def p_data(context_id: int, header: int, value: bytes | memoryview) -> bytes:
    return struct.pack(">BBIIBB", 0x04, 0, len(value) + 6, len(value) + 2, context_id, header) + bytes(value)


def plan(count: int, controls: int, garbage: int, seed: int) -> list[str]:
    """Mutation class of each case, classes evenly spread, order shuffled (deterministic)."""
    classes = [DATASET_CLASSES[i % len(DATASET_CLASSES)] for i in range(count)]
    classes += ["control"] * controls + ["protocol_garbage"] * garbage
    random.Random(seed).shuffle(classes)
    return classes


# ------------------------------------------------------------------------------------------------
# the SCU


@dataclasses.dataclass
class Result:
    index: int
    klass: str
    detail: str
    expect: str
    outcome: str  # status | abort | no response | rejected | closed
    status: int | None = None
    comment: str = ""
    association: int = -1
    sent_at: float = 0.0  # time.time() when its first byte went out
    sop_uid: str = ""
    sent_digest: str = ""  # dicomnode.store.digest of the data set sent, when it was stored


class Sender:
    """pynetdicom negotiates and reads responses; requests are written by hand on the socket."""

    def __init__(self, port: int, aet: str = "FUZZSCU", dimse_timeout: float = 30, garbage_wait: float = 3) -> None:
        from pynetdicom import AE

        self.port = port
        self.garbage_wait = garbage_wait
        self.ae = AE(ae_title=aet)
        self.ae.acse_timeout = 30
        self.ae.dimse_timeout = dimse_timeout
        self.ae.network_timeout = dimse_timeout
        for ts in (EXPLICIT, IMPLICIT, DEFLATED):
            self.ae.add_requested_context(CT_IMAGE, ts)
        self.ae.add_requested_context(VERIFICATION)
        self._ids = iter(range(10**9))
        self._lock = threading.Lock()

    def associate(self):
        with self._lock:
            n = next(self._ids)
        assoc = self.ae.associate("127.0.0.1", self.port, ae_title=NODE_AE, max_pdu=65536)
        if assoc.is_established:
            # pynetdicom's association reactor takes any DIMSE message off the queue unless paused, and its
            # pause flag is also set for an instant in every turn (send_c_store races with it). Paused once
            # here, for the whole association, after at least one full turn of its loop: our responses are ours.
            assoc._reactor_checkpoint.clear()
            time.sleep(0.02)
            while not assoc._is_paused and assoc.is_established:
                time.sleep(0.001)
        return n, assoc

    @staticmethod
    def context(assoc, transfer_syntax: str, sop_class: str = CT_IMAGE) -> int:
        for cx in assoc.accepted_contexts:
            if cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == transfer_syntax:
                return cx.context_id
        raise RuntimeError(f"no accepted context for {sop_class} in {transfer_syntax}")

    def store(self, assoc, n: int, case: Case, message_id: int) -> Result:
        res = Result(case.index, case.klass, case.detail, case.expect, "closed", association=n, sent_at=time.time(),
                     sop_uid=case.sop_uid.rstrip(b"\0 ").decode("latin-1"))
        sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
        if sock is None or not assoc.is_established:
            return res
        ctx = self.context(assoc, case.transfer_syntax, case.context_sop_class)
        limit = (assoc.acceptor.maximum_length or 65536) - 6  # a PDV item's header is 6 bytes
        try:  # the reactor is paused (see associate)
            if case.garbage is not None:
                sock.sendall(case.garbage)
            else:
                pdus = [p_data(ctx, 0x03, c_store_rq(message_id, case.sop_class, case.sop_uid))]
                view = memoryview(case.data)
                offsets = list(range(0, len(view), limit)) or [0]
                for k, at in enumerate(offsets):
                    pdus.append(p_data(ctx, 0x02 if k == len(offsets) - 1 else 0x00, view[at:at + limit]))
                for pdu in pdus:
                    sock.sendall(pdu)
        except OSError:
            pass  # the node closed the connection: its abort is read below
        if case.garbage is not None:
            assoc._reactor_checkpoint.set()  # the reactor notices an abort
            return self._after_garbage(assoc, res)
        t_wait = time.monotonic()
        rsp = assoc.dimse.get_msg(block=True)[1]
        waited = time.monotonic() - t_wait
        if rsp is None:
            assoc._reactor_checkpoint.set()
            deadline = time.monotonic() + 5
            while assoc.is_established and not assoc.is_aborted and time.monotonic() < deadline:
                time.sleep(0.01)
            res.outcome = "abort" if assoc.is_aborted or not assoc.is_established else "no response"
            res.comment = (f"after {waited:.2f} s; requestor: aborted={assoc.is_aborted} "
                           f"released={assoc.is_released} dul alive={assoc.dul.is_alive()}")
            if res.outcome == "no response":
                assoc.abort()
            return res
        res.outcome = "status"
        res.status = int(rsp.Status) if rsp.Status is not None else None
        res.comment = str(getattr(rsp, "ErrorComment", "") or "")
        if int(getattr(rsp, "MessageIDBeingRespondedTo", -1) or 0) != message_id:
            res.outcome = "wrong message id"
        if res.status == 0x0000:
            from dicomnode.store.digest import digest

            res.sent_digest = digest([case.data])
        return res

    def _after_garbage(self, assoc, res: Result) -> Result:
        """Garbage: the node aborts (fine), answers something, or waits for more bytes (we abort)."""
        deadline = time.monotonic() + self.garbage_wait
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.01)
        if not assoc.is_established:
            res.outcome = "abort"
            return res
        _, rsp = assoc.dimse.get_msg(block=False)
        res.outcome = "status" if rsp is not None else "no reaction"
        res.status = int(rsp.Status) if rsp is not None and rsp.Status is not None else None
        assoc.abort()
        return res

    def echo(self) -> int | None:
        assoc = self.ae.associate("127.0.0.1", self.port, ae_title=NODE_AE)
        if not assoc.is_established:
            return None
        try:
            status = assoc.send_c_echo()
            return int(status.Status) if "Status" in status else None
        finally:
            assoc.release()


def fuzz(sender: Sender, gen: Generator, classes: list[str], associations: int, parallel: int,
         progress: Callable[[int], None] | None = None) -> tuple[list[Result], list[dict]]:
    """Send every case; returns the results and one record per association used."""
    data_cases = [i for i, k in enumerate(classes) if k != "protocol_garbage"]
    garbage = [i for i, k in enumerate(classes) if k == "protocol_garbage"]
    shares = [data_cases[a::associations] for a in range(associations)] + [[i] for i in garbage]
    random.Random(len(classes)).shuffle(shares)
    results: list[Result] = []
    records: list[dict] = []
    lock = threading.Lock()
    done = [0]

    def run_share(share: list[int]) -> None:
        todo = list(share)
        while todo:
            n, assoc = sender.associate()
            record = {"association": n, "cases": [], "ended": "", "established": assoc.is_established}
            if not assoc.is_established:
                record["ended"] = "rejected" if assoc.is_rejected else "not established"
                with lock:
                    records.append(record)
                time.sleep(0.2)
                if len([r for r in records if not r["established"]]) > 50:
                    raise RuntimeError("the node keeps refusing associations")
                continue
            message_id = 1
            try:
                while todo:
                    i = todo.pop(0)
                    case = gen.case(i, classes[i])
                    res = sender.store(assoc, n, case, message_id)
                    message_id += 1
                    record["cases"].append(i)
                    with lock:
                        results.append(res)
                        done[0] += 1
                        if progress:
                            progress(done[0])
                    if res.outcome != "status":
                        record["ended"] = f"{res.outcome} after case {i} ({case.klass}: {case.detail})"
                        record["at"] = time.strftime("%H:%M:%S", time.localtime(res.sent_at)) + \
                            f".{int(res.sent_at * 1000) % 1000:03d}"
                        break
            finally:
                if assoc.is_established:
                    assoc.release()
                    record["ended"] = record["ended"] or "released"
                with lock:
                    records.append(record)

    threads_left = list(shares)
    workers = []

    def worker() -> None:
        while True:
            with lock:
                if not threads_left:
                    return
                share = threads_left.pop()
            run_share(share)

    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            worker()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    for _ in range(max(1, parallel)):
        t = threading.Thread(target=guarded, daemon=True)
        t.start()
        workers.append(t)
    for t in workers:
        t.join()
    if errors:
        raise errors[0]
    return sorted(results, key=lambda r: r.index), records


# ------------------------------------------------------------------------------------------------
# the node, Orthanc and the watchers


class ScuLog(logging.Handler):
    """Collects pynetdicom's warnings and errors in the harness process (with the time they happened)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < 1000:
            at = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
            self.records.append(f"{at} {record.levelname} {record.name}: {record.getMessage()[:300]}")

    def summary(self) -> dict:
        return {"count": len(self.records), "first": self.records[:40]}


def tree(root: Path, skip: tuple[Path, ...] = ()) -> set[str]:
    """Every file and directory under ``root`` (relative), except ``skip`` and what lies under them."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if d / n not in skip]
        for n in filenames + dirnames:
            if d / n not in skip:
                out.add(str((d / n).relative_to(root)))
    return out


class WriteWatch(threading.Thread):
    """Samples the files the node (and its children) hold open for writing; keeps those outside ``allowed``."""

    def __init__(self, pid: int, allowed: list[Path], period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.allowed, self.period = pid, [str(a.resolve()) for a in allowed], period
        self.outside: set[str] = set()
        self.samples = 0
        self.halt = threading.Event()

    def pids(self) -> list[int]:
        return process_tree(self.pid)

    def sample(self) -> None:
        for pid in self.pids():
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    flags = int(Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split("flags:")[1].split()[0], 8)
                except (OSError, IndexError, ValueError):
                    continue
                if not target.startswith("/") or target.startswith(("/dev/", "/proc/", "/sys/")):
                    continue
                if flags & (os.O_WRONLY | os.O_RDWR) and not any(target == a or target.startswith(a + "/")
                                                                 for a in self.allowed):
                    self.outside.add(target)
        self.samples += 1

    def run(self) -> None:
        while not self.halt.wait(self.period):
            self.sample()


class Node:
    """``ich-node serve`` in its own run folder (data dir, cwd, HOME, TMPDIR), on free loopback ports."""

    def __init__(self, root: Path, destination: str, quiet_s: float, extra_env: dict | None = None) -> None:
        self.root = root
        self.data_dir, self.cwd = root / "var", root / "cwd"
        self.home, self.tmp = root / "home", root / "tmp"
        for d in (self.cwd, self.home, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self.log = root / "node.log"
        self.port = free_port()
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)  # this checkout's code
        self.env = {**os.environ, "PYTHONPATH": path, "HOME": str(self.home), "TMPDIR": str(self.tmp),
                    "ICH_NODE__STORAGE__MIN_FREE_BYTES": "0", "ICH_NODE__STORAGE__JOURNAL_MB": "16",
                    "ICH_NODE__SCHEDULER__SWEEP_SECONDS": "0.5", "ICH_NODE__SCHEDULER__RETRY_SECONDS": "1",
                    "ICH_NODE__QUEUE__BACKOFF_BASE_S": "1", "ICH_NODE__QUEUE__BACKOFF_MAX_S": "3",
                    "ICH_NODE__QUEUE__MAX_ATTEMPTS": "3", "ICH_NODE__METRICS__ENABLED": "false",
                    "ICH_NODE__LOGGING__LEVEL": "INFO", **(extra_env or {})}
        self.args = [str(EXE), "serve", "--host", "127.0.0.1", "--port", str(self.port), "--ae-title", NODE_AE,
                     "--data-dir", str(self.data_dir), "--destination", destination, "--quiet-seconds", str(quiet_s)]
        self.proc: subprocess.Popen | None = None

    def start(self, sender: Sender, timeout: float = 300) -> "Node":
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the node exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node did not start within {timeout:.0f} s:\n{self.log_tail()}")
            if "ready (models" in self.log.read_text(errors="replace"):
                try:
                    if sender.echo() == 0:
                        return self
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
            time.sleep(0.5)

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            stop(self.proc)


# ------------------------------------------------------------------------------------------------
# checks


def check_index(data_dir: Path, results: list[Result]) -> dict:
    """Every acknowledged instance is indexed with a digest matching its spool file, which holds what was sent."""
    from dicomnode.store.digest import digest, matches

    spool = (data_dir / "spool").resolve()
    stored: dict[str, Result] = {}
    for r in results:
        if r.outcome == "status" and r.status == 0x0000:
            stored[r.sop_uid] = r  # the last acknowledged version of each UID
    problems: list[str] = []
    db = sqlite3.connect(f"file:{data_dir / 'index.sqlite3'}?mode=ro", uri=True, timeout=30)
    try:
        for uid, r in stored.items():
            row = db.execute("SELECT path, digest, size FROM instances WHERE sop_uid = ?", (uid,)).fetchone()
            if row is None:
                problems.append(f"case {r.index} ({r.klass}) {uid}: acknowledged but not in the index")
                continue
            path = (spool / row[0]).resolve()
            if spool not in path.parents:
                problems.append(f"case {r.index}: indexed path {row[0]!r} lies outside the spool")
                continue
            try:
                raw = path.read_bytes()
            except OSError as exc:
                problems.append(f"case {r.index} ({r.klass}): spool file unreadable: {exc}")
                continue
            data = dataset_bytes(raw)
            if data is None or not matches(row[1], [data]):
                problems.append(f"case {r.index} ({r.klass}): digest does not match the spool file")
            elif digest([data]) != r.sent_digest:
                problems.append(f"case {r.index} ({r.klass}): spool file differs from the bytes sent")
            elif row[2] != len(raw):
                problems.append(f"case {r.index} ({r.klass}): indexed size {row[2]} != file size {len(raw)}")
        files = [p for p in spool.rglob("*") if p.is_file()]
        strays = [str(p) for p in files if not re.fullmatch(r"[0-9a-f]{32}/[0-9a-f]{32}/[0-9a-f]{32}\.dcm",
                                                           p.relative_to(spool).as_posix())]
        indexed = db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    finally:
        db.close()
    return {"ok": not problems and not strays, "acknowledged": len(stored), "indexed_total": indexed,
            "spool_files": len(files), "problems": problems[:50], "stray_spool_files": strays[:50]}


def dataset_bytes(raw: bytes) -> memoryview | None:
    """The data set of a spool file (after its (0002,0000)-led file meta group)."""
    if raw[128:132] != b"DICM" or raw[132:138] != b"\x02\x00\x00\x00UL":
        return None
    (group_len,) = struct.unpack_from("<I", raw, 140)
    return memoryview(raw)[144 + group_len:]


def find_marker(marker: str, roots: list[Path]) -> list[str]:
    hits = []
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
            for n in dirnames + filenames:
                if marker in n:
                    hits.append(os.path.join(dirpath, n))
    return hits


def make_valid_study(ct_data: Path, out: Path) -> tuple[str, list[Path]]:
    return copy_study(ct_data / "philips-phantom-5mm", out)


def send_valid_study(port: int, files: list[Path]) -> list[int]:
    import pydicom
    from pynetdicom import AE

    ae = AE(ae_title="VALIDSCU")
    ae.add_requested_context(CT_IMAGE, EXPLICIT)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    if not assoc.is_established:
        raise RuntimeError("the node refused the association for the valid study")
    try:
        statuses = []
        for f in files:
            status = assoc.send_c_store(pydicom.dcmread(f))
            statuses.append(int(status.Status) if "Status" in status else -1)
        return statuses
    finally:
        assoc.release()


# ------------------------------------------------------------------------------------------------
# one run


def summarise(results: list[Result], records: list[dict]) -> dict:
    per_class: dict[str, dict] = {}
    for r in results:
        c = per_class.setdefault(r.klass, {"sent": 0, "outcomes": Counter(), "statuses": Counter()})
        c["sent"] += 1
        c["outcomes"][r.outcome] += 1
        if r.outcome == "status":
            c["statuses"][f"0x{r.status:04X}"] += 1
    for c in per_class.values():
        c["outcomes"], c["statuses"] = dict(c["outcomes"]), dict(sorted(c["statuses"].items()))
    aborted = [rec for rec in records if rec["ended"].startswith("abort")]
    return {
        "per_class": dict(sorted(per_class.items())),
        "associations": {"used": len(records), "established": sum(r["established"] for r in records),
                         "released": sum(r["ended"] == "released" for r in records),
                         "aborted_by_node": len(aborted),
                         "not_established": [r["ended"] for r in records if not r["established"]][:20],
                         "aborts": [f"{r['ended']} at {r.get('at')}" for r in aborted][:100]},
    }


def run(count: int = 1000, associations: int = 40, parallel: int = 2, seed: int = 0, controls: int | None = None,
        garbage: int | None = None, ct_data: Path = CT_DATA, workdir: Path | None = None, keep: bool = False,
        valid_timeout: float = 600, quiet_s: float = 2.0, echo: Callable[[str], None] = print,
        keep_failed: bool = False) -> dict:
    """The whole harness; returns the report (``report["ok"]``: every check passed). The run folder (node
    log, data dir) is removed at the end unless ``keep``, or ``keep_failed`` and a check failed."""
    scu_log = ScuLog()  # what pynetdicom says on our side (the SCU): reported, not printed
    pyn = logging.getLogger("pynetdicom")
    pyn.addHandler(scu_log)
    pyn.propagate = False
    pyn.setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")  # responses echo the hostile UIDs we sent
    for tool in ("Orthanc",):
        if shutil.which(tool) is None and not Path("/usr/sbin/Orthanc").exists():
            raise RuntimeError(f"{tool} is needed (make test installs it)")
    if not (ct_data / "philips-phantom-5mm").is_dir():
        raise RuntimeError(f"real CT data not found in {ct_data}")
    controls = max(1, count // 20) if controls is None else controls
    garbage = max(1, count // 25) if garbage is None else garbage
    root = Path(tempfile.mkdtemp(prefix="ich-fuzz-", dir=workdir))
    marker = f"ichfuzz{random.Random(seed).randrange(16**8):08x}"
    report: dict = {"run_folder": str(root), "config": {"count": count, "controls": controls, "protocol_garbage": garbage,
                               "associations": associations, "parallel": parallel, "seed": seed,
                               "quiet_s": quiet_s, "marker": marker}}
    t_start = time.monotonic()
    orthanc = OrthancServer(root / "orthanc", free_port)
    node = None
    watch = None
    try:
        orthanc.start()
        sources = load_sources(ct_data, root / "harness" / "sources")
        gen = Generator(sources, seed, marker)
        node = Node(root / "node", orthanc.address, quiet_s)
        sender = Sender(node.port)
        t0 = time.monotonic()
        node.start(sender)
        pid = node.proc.pid
        report["node_start_s"] = round(time.monotonic() - t0, 1)
        echo(f"node PID {pid} up in {report['node_start_s']} s; sending {count} mutated data sets, {controls} controls, "
             f"{garbage} protocol-garbage PDUs over {associations} associations ({parallel} at a time)")
        skip = (node.data_dir, node.log, root / "orthanc", root / "harness")  # the node's cwd, HOME, TMPDIR are watched
        before = tree(root, skip)
        watch = WriteWatch(pid, [node.data_dir, node.log, Path(os.devnull)])
        watch.start()
        classes = plan(count, controls, garbage, seed)
        t0 = time.monotonic()
        step = max(1, len(classes) // 10)
        results, records = fuzz(sender, gen, classes, associations, parallel,
                                progress=lambda n: n % step == 0 and echo(f"  {n}/{len(classes)} sent"))
        report["fuzz_s"] = round(time.monotonic() - t0, 1)
        report.update(summarise(results, records))

        checks: dict[str, dict] = {}
        status = None
        try:
            status = sender.echo()
        except Exception as exc:  # noqa: BLE001
            status = f"{type(exc).__name__}: {exc}"
        checks["alive"] = {"ok": node.alive() and node.proc.pid == pid and status == 0, "pid": pid,
                           "running": node.alive(), "c_echo": status}
        bad = [r for r in results if r.klass != "protocol_garbage" and r.outcome != "status"]
        checks["no_abort"] = {"ok": not bad, "data_set_cases_without_status": len(bad),
                              "cases": [f"case {r.index} {r.klass}: {r.outcome} {r.comment} ({r.detail})"
                                        for r in bad][:50]}
        wrong = [r for r in results if (r.expect == "store" and r.status != 0x0000)
                 or (r.expect == "refuse" and r.outcome == "status" and r.status == 0x0000)]
        checks["expectations"] = {"ok": not wrong, "cases": [f"case {r.index} {r.klass}: {r.outcome} "
                                                             f"{r.status if r.status is None else hex(r.status)} "
                                                             f"{r.comment!r} ({r.detail})" for r in wrong][:50]}
        checks["indexed"] = check_index(node.data_dir, results)
        watch.sample()
        after = tree(root, skip)
        new = sorted(after - before)
        hits = find_marker(marker, [root, Path("/tmp")])
        outside = sorted(watch.outside)
        checks["nothing_outside"] = {"ok": not new and not hits and not outside, "new_files": new[:50],
                                     "marker_hits": hits[:50], "open_for_writing_outside": outside[:50],
                                     "fd_samples": watch.samples}

        # a valid study afterwards: stored, analysed, SEG + SR delivered
        t0 = time.monotonic()
        study_uid, files = make_valid_study(ct_data, root / "harness" / "valid")
        statuses = send_valid_study(node.port, files)
        delivered: list[str] = []
        deadline = time.monotonic() + valid_timeout
        while time.monotonic() < deadline:
            delivered = orthanc.study_sop_classes(study_uid)
            if SEG_CLASS in delivered and any(c.startswith(SR_PREFIX) for c in delivered):
                break
            if not node.alive():
                break
            time.sleep(1)
        checks["valid_study"] = {"ok": all(s == 0 for s in statuses) and SEG_CLASS in delivered
                                 and any(c.startswith(SR_PREFIX) for c in delivered),
                                 "slices": len(files), "stored": sum(s == 0 for s in statuses),
                                 "in_orthanc": sorted(Counter("SEG" if c == SEG_CLASS else "SR" if c.startswith(SR_PREFIX)
                                                              else c for c in delivered).items()),
                                 "seconds": round(time.monotonic() - t0, 1)}
        checks["alive_at_end"] = {"ok": node.alive() and node.proc.pid == pid, "pid": pid}
        watch.halt.set()
        watch.sample()
        # the analyses (of the fuzzed studies and the valid one) ran meanwhile: still nothing outside
        later = sorted(tree(root, skip) - after)
        later_hits = sorted(set(find_marker(marker, [root, Path("/tmp")])) - set(hits))
        later_open = sorted(watch.outside - set(outside))
        checks["nothing_outside"]["after_the_analyses"] = {"new_files": later[:50], "marker_hits": later_hits[:50],
                                                           "open_for_writing_outside": later_open[:50]}
        checks["nothing_outside"]["ok"] = checks["nothing_outside"]["ok"] and not later and not later_hits and not later_open
        log_text = node.log.read_text(errors="replace")
        failures = re.findall(r"dicomnode\.worker: job \d+ \(study \w+\) failed: ([\w.]+)", log_text)
        report["node_log"] = {"tracebacks": log_text.count("Traceback (most recent call last)"),
                              "errors": len(re.findall(r" (?:ERROR|CRITICAL) ", log_text)),
                              "refusal_warnings": log_text.count(" refused 0x"),
                              "analysis_attempts_failed": dict(Counter(failures)),
                              "jobs_delivered": len(re.findall(r"dicomnode\.service: job \d+ delivered", log_text))}
        report["checks"] = checks
        report["scu_log"] = scu_log.summary()
        report["ok"] = all(c["ok"] for c in checks.values())
        report["accepted_although_mutated"] = {
            k: v["statuses"].get("0x0000", 0) for k, v in report["per_class"].items() if k not in ("control",)}
        report["total_s"] = round(time.monotonic() - t_start, 1)
        report["mutated_data_sets_sent"] = sum(1 for r in results if r.klass in DATASET_CLASSES)
        return report
    finally:
        if watch is not None:
            watch.halt.set()
        if node is not None:
            node.stop()
            report["node_log_path"] = str(node.log)
        orthanc.stop()
        if keep or (keep_failed and not report.get("ok")):
            echo(f"run folder kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def print_summary(report: dict, echo: Callable[[str], None] = print) -> None:
    echo(f"\n{'class':<22}{'sent':>6}  {'outcomes':<28} statuses")
    for klass, c in report.get("per_class", {}).items():
        outcomes = ", ".join(f"{k} {v}" for k, v in c["outcomes"].items())
        statuses = ", ".join(f"{k} {v}" for k, v in c["statuses"].items())
        echo(f"{klass:<22}{c['sent']:>6}  {outcomes:<28} {statuses}")
    seen = sorted({k for c in report.get("per_class", {}).values() for k in c["statuses"]})
    echo("  " + ", ".join(f"{k} = {STATUS_NAMES.get(int(k, 16), '?')}" for k in seen))
    a = report.get("associations", {})
    echo(f"\nassociations: {a.get('used')} used, {a.get('released')} released, {a.get('aborted_by_node')} aborted by the node")
    for line in a.get("aborts", [])[:15]:
        echo(f"  aborted: {line}")
    echo("")
    for name, c in report.get("checks", {}).items():
        detail = {k: v for k, v in c.items() if k != "ok" and v not in ([], {}, None, "")}
        echo(f"{'PASS' if c['ok'] else 'FAIL'}  {name}: {json.dumps(detail)[:400]}")
    echo(f"\n{'ALL CHECKS PASSED' if report.get('ok') else 'SOME CHECKS FAILED'} "
         f"({report.get('mutated_data_sets_sent')} mutated data sets, {report.get('total_s')} s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1000, help="mutated data sets to send")
    ap.add_argument("--associations", type=int, default=40, help="associations the data sets are spread over")
    ap.add_argument("--parallel", type=int, default=2, help="associations at once")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--controls", type=int, help="unmutated data sets mixed in (default count/20)")
    ap.add_argument("--garbage", type=int, help="protocol-level garbage associations (default count/25)")
    ap.add_argument("--ct-data", type=Path, default=CT_DATA)
    ap.add_argument("--workdir", type=Path, help="where the run folder is made (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the run folder (node log, data dir)")
    ap.add_argument("--keep-failed", action="store_true", help="keep the run folder when a check fails")
    ap.add_argument("--valid-timeout", type=float, default=600, help="seconds for the valid study's SEG + SR")
    ap.add_argument("--quiet", type=float, default=2.0, help="selection.quiet_seconds of the node")
    ap.add_argument("--json", type=Path, help="write the report here")
    opts = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the node and Orthanc on the way out
    report = run(opts.count, opts.associations, opts.parallel, opts.seed, opts.controls, opts.garbage, opts.ct_data,
                 opts.workdir, opts.keep, opts.valid_timeout, opts.quiet, keep_failed=opts.keep_failed)
    print_summary(report)
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        report["command"] = "benchmarks/fuzz_store.py " + " ".join(argv if argv is not None else sys.argv[1:])
        opts.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
