"""Property-based fuzzing of the header scan (``dicomnode.receive.header.parse_header``), issue 13 part 5.

Inputs: real CT slices (the 5 mm phantom and the tilted GE head, pixel data cut short) and a synthetic
data set with undefined-length sequences, each in implicit, explicit and deflated little endian, then
mutated: bit flips, byte writes, truncations, insertions, deletions, huge or undefined element lengths
(at real element boundaries), swapped elements (tags out of order) and deeply nested undefined-length
sequences; plus plain random bytes.

Properties:

* ``parse_header`` returns a :class:`Header` or raises :class:`StoreRefused` with a failure status
  (0xC000 / 0xA900) and a comment of at most 64 characters; never any other exception.
* The same bytes split into P-DATA fragments anywhere give the same answer (header or refusal).
* An unmutated data set split anywhere gives the header pydicom reads from it.
* Where both the fast scanner and the pydicom fallback read a mutated data set, they agree on the
  four UIDs (and so on the status).
* ``check_complete`` (the whole structure, walked before the receiver answers): every unmutated source
  is complete; any mutation is complete or refused 0xC000, however it is fragmented; a cut anywhere but
  between two top-level elements is refused; a deflate bomb sent in several fragments is refused within
  one cap for the whole data set (it was one cap per fragment).

``HYPOTHESIS_PROFILE=explore`` runs 20× the examples (random); ``CI`` set: derandomized (tests/conftest.py).
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib

import pydicom
import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from dicomnode.receive import header as H

_SCALE = 20 if os.environ.get("HYPOTHESIS_PROFILE") == "explore" else 1
FAILURE_STATUSES = {H.STATUS_CANNOT_UNDERSTAND, H.STATUS_DATASET_MISMATCH}
TS_ALL = (H.EXPLICIT_LE, H.IMPLICIT_LE, H.DEFLATED_LE)


# -- inputs -------------------------------------------------------------------------------------


def _encode(ds: Dataset, implicit: bool) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, implicit
    write_dataset(buf, ds)
    return buf.getvalue()


def _deflate(raw: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(raw) + c.flush()


def _synthetic() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.1427.99.1"
    ds.Modality = "CT"
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.10.1427.99.2"
    ds.ReferencedImageSequence = Sequence([item])
    ds.ReferencedImageSequence.is_undefined_length = True
    ds.ReferencedImageSequence[0].is_undefined_length_sequence_item = True
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "ID123"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1427.99.3"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1427.99.4"
    ds.InstanceNumber = 7
    ds.Rows, ds.Columns, ds.BitsAllocated = 8, 8, 16
    ds.PixelData = bytes(128)
    return ds


def _elements(raw: bytes, implicit: bool) -> list[tuple[int, int, int, int, int]]:
    """Top-level elements up to (0028,xxxx): (start, end, length offset, length size, tag)."""
    out, pos = [], 0
    while pos < len(raw) and len(out) < 120:
        tag, vr, vpos, length = H._element(raw, pos, implicit)
        if implicit:
            at, size = pos + 4, 4
        elif vr is None or vpos - pos == 12:
            at, size = pos + (4 if vr is None else 8), 4
        else:
            at, size = pos + 6, 2
        end = H._skip_sequence(raw, vpos, implicit or vr == b"UN") if length == H._UNDEFINED else vpos + length
        out.append((pos, end, at, size, tag))
        if tag > 0x00280000:
            break
        pos = end
    return out


class Source:
    """One data set in one transfer syntax: its bytes, element boundaries, and the expected header."""

    def __init__(self, name: str, ds: Dataset, ts: str) -> None:
        self.name, self.ts = name, ts
        self.implicit = ts == H.IMPLICIT_LE
        self.raw = _encode(ds, self.implicit)  # deflated: mutations apply before or after deflating
        self.elements = _elements(self.raw, self.implicit)
        self.expected = (str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID),
                         str(ds.SeriesInstanceUID), str(ds.Modality), int(ds.InstanceNumber))

    def wire(self, raw: bytes) -> bytes:
        return _deflate(raw) if self.ts == H.DEFLATED_LE else raw

    def __repr__(self) -> str:
        return f"<{self.name} {self.ts}>"


@pytest.fixture(scope="module")
def sources(ct_data) -> list[Source]:
    datasets = []
    for folder in ("philips-phantom-5mm", "ge-human-head-tilted"):
        path = [p for p in sorted((ct_data / folder).iterdir()) if p.name != "DIRFILE"][3]
        ds = pydicom.dcmread(path)
        ds.PixelData = ds.PixelData[:2048]  # the scan never reads pixels; keeps each example cheap
        datasets.append((folder, ds))
    datasets.append(("synthetic", _synthetic()))
    return [Source(name, ds, ts) for name, ds in datasets for ts in TS_ALL]


# -- mutations ----------------------------------------------------------------------------------

_HUGE = st.sampled_from([0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFF0, 0x7FFFFFFF, 0x80000000, 0x00100000, 0x10001, 1, 0])
_POS = st.one_of(st.integers(0, 1600), st.integers(0, 1 << 20))  # mostly inside the header
_BYTE_OP = st.one_of(
    st.tuples(st.just("flip"), _POS, st.integers(0, 7)),
    st.tuples(st.just("set"), _POS, st.integers(0, 255)),
    st.tuples(st.just("truncate"), _POS),
    st.tuples(st.just("insert"), _POS, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), _POS, st.integers(1, 16)),
    st.tuples(st.just("u32"), _POS, _HUGE),
    st.tuples(st.just("fill"), _POS, st.sampled_from([0x00, 0xFF, 0x20]), st.integers(1, 64)),
)
_FLAT_ELEMENT_OP = st.one_of(
    st.tuples(st.just("length"), st.integers(0, 200), _HUGE),             # huge/undefined element length
    st.tuples(st.just("swap"), st.integers(0, 200)),                       # tags out of order
    st.tuples(st.just("drop"), st.integers(0, 200)),
)
_ELEMENT_OP = st.one_of(_FLAT_ELEMENT_OP,
                        st.tuples(st.just("nest"), st.integers(1, 3000), st.booleans()))  # nested undefined-
                                                                                         # length SQ, closed or open


def _nested(depth: int, implicit: bool, closed: bool) -> bytes:
    """(0008,0006) LanguageCodeSequence, ``depth`` undefined-length sequences deep, in items."""
    seq = struct.pack("<HHI", 0x0008, 0x0006, H._UNDEFINED) if implicit else \
        struct.pack("<HH2sHI", 0x0008, 0x0006, b"SQ", 0, H._UNDEFINED)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, H._UNDEFINED)
    end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return (seq + item) * depth + (end * depth if closed else b"")


def mutate(src: Source, element_ops, byte_ops, before_deflate: bool) -> bytes:
    raw = bytearray(src.raw)
    els = src.elements
    for op in element_ops:
        if op[0] == "nest":  # in tag order, before the UIDs: only its depth stops the fast scan
            start = next((e[0] for e in els if e[4] > 0x00080006), len(raw))
            raw[start:start] = _nested(op[1], src.implicit, op[2])
            els = _elements_or_same(bytes(raw), src.implicit, els)
            continue
        start, end, at, size, _ = els[op[1] % len(els)]
        if op[0] == "length":
            value = op[2] if size == 4 else op[2] & 0xFFFF
            raw[at:at + size] = value.to_bytes(size, "little")
        elif op[0] == "swap" and end < len(raw):
            nxt = next((e for e in els if e[0] == end), None)
            if nxt is not None:
                raw[start:nxt[1]] = raw[end:nxt[1]] + raw[start:end]
        elif op[0] == "drop":
            del raw[start:end]
        els = _elements_or_same(bytes(raw), src.implicit, els)
    if src.ts == H.DEFLATED_LE and not before_deflate:
        raw = bytearray(_deflate(bytes(raw)))
    for op in byte_ops:
        if not raw:
            break
        pos = op[1] % (len(raw) + (1 if op[0] in ("insert", "truncate") else 0))
        if op[0] == "flip":
            raw[pos] ^= 1 << op[2]
        elif op[0] == "set":
            raw[pos] = op[2]
        elif op[0] == "truncate":
            del raw[pos:]
        elif op[0] == "insert":
            raw[pos:pos] = op[2]
        elif op[0] == "delete":
            del raw[pos:pos + op[2]]
        elif op[0] == "u32":
            chunk = op[2].to_bytes(4, "little")[:len(raw) - pos]
            raw[pos:pos + len(chunk)] = chunk
        elif op[0] == "fill":
            n = min(op[3], len(raw) - pos)
            raw[pos:pos + n] = bytes([op[2]]) * n
    if src.ts == H.DEFLATED_LE and before_deflate:
        raw = bytearray(_deflate(bytes(raw)))
    return bytes(raw)


def _elements_or_same(raw: bytes, implicit: bool, els):
    try:
        return _elements(raw, implicit) or els
    except (H._Unsupported, struct.error):
        return els  # a mutation broke the walk: later element ops reuse the old boundaries


def outcome(stream, ts: str):
    """parse_header's answer as a comparable value; any exception but StoreRefused propagates."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's fallback warns about the garbage it reads
        try:
            return H.parse_header(stream, ts)
        except H.StoreRefused as exc:
            assert exc.status in FAILURE_STATUSES, (hex(exc.status), exc.comment)
            assert 0 < len(exc.comment) <= 64
            return ("refused", exc.status, exc.comment)


def split(data: bytes, cuts: list[int]) -> list[memoryview]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    view = memoryview(data)
    return [view[a:b] for a, b in zip(points, points[1:])] or [view]


# -- properties ---------------------------------------------------------------------------------


@settings(max_examples=400 * _SCALE)
@given(data=st.data())
def test_any_mutation_is_a_header_or_a_refusal_and_fragments_do_not_change_it(sources, data):
    src = data.draw(st.sampled_from(sources), label="source")
    element_ops = data.draw(st.lists(_ELEMENT_OP, max_size=3), label="element ops")
    byte_ops = data.draw(st.lists(_BYTE_OP, max_size=4), label="byte ops")
    assume(element_ops or byte_ops)
    before = data.draw(st.booleans(), label="mutate before deflating") if src.ts == H.DEFLATED_LE else True
    cuts = data.draw(st.lists(st.integers(0, 1 << 20), min_size=1, max_size=4), label="fragment cuts")
    whole = _check_mutation(src, element_ops, byte_ops, before, cuts)
    event("header" if isinstance(whole, H.Header) else f"refused 0x{whole[1]:04X}")


CORNER_CASES = {
    "nested 40 deep (past the fast scan's 32)": ([("nest", 40, True)], []),
    "nested 3000 deep (past pydicom's recursion limit)": ([("nest", 3000, True)], []),
    "nested 200 deep, never closed": ([("nest", 200, False)], []),
    "undefined length on a plain element": ([("length", 3, 0xFFFFFFFF)], []),
    "length far past the end": ([("length", 6, 0xFFFFFFF0)], []),
    "two elements swapped": ([("swap", 4)], []),
    "truncated in the header": ([], [("truncate", 300)]),
    "64 bytes of 0xFF at the start": ([], [("fill", 0, 0xFF, 64)]),
}


@pytest.mark.parametrize("case", list(CORNER_CASES))
def test_corner_cases_in_every_source_and_transfer_syntax(sources, case):
    element_ops, byte_ops = CORNER_CASES[case]
    for src in sources:
        for before in (True, False) if src.ts == H.DEFLATED_LE else (True,):
            _check_mutation(src, element_ops, byte_ops, before, cuts=[1, 100, 700])


def _check_mutation(src: Source, element_ops, byte_ops, before: bool, cuts: list[int]) -> None:
    wire = mutate(src, element_ops, byte_ops, before)
    whole = outcome(wire, src.ts)
    assert isinstance(whole, H.Header) or whole[0] == "refused"
    return whole
    assert outcome(split(wire, cuts), src.ts) == whole, "the answer depends on where the fragments were cut"


@settings(max_examples=300 * _SCALE)
@given(raw=st.binary(max_size=3000), ts=st.sampled_from(TS_ALL), cuts=st.lists(st.integers(0, 3000), max_size=3))
def test_random_bytes_are_refused_cleanly(raw, ts, cuts):
    whole = outcome(raw, ts)
    assert outcome(split(raw, cuts), ts) == whole


@settings(max_examples=150 * _SCALE)
@given(data=st.data())
def test_a_valid_data_set_split_anywhere_gives_pydicoms_header(sources, data):
    src = data.draw(st.sampled_from(sources), label="source")
    wire = src.wire(src.raw)
    n = data.draw(st.integers(1, 6), label="fragments")
    cuts = data.draw(st.lists(st.integers(0, len(wire)), min_size=n - 1, max_size=n - 1), label="cuts")
    got = outcome(split(wire, cuts), src.ts)
    assert isinstance(got, H.Header), got
    assert (got.sop_class, got.sop_uid, got.study_uid, got.series_uid, got.modality, got.instance_number) == src.expected
    assert got == outcome(wire, src.ts)


@settings(max_examples=300 * _SCALE)
@given(data=st.data())
def test_fast_scan_and_pydicom_fallback_agree_on_the_uids(sources, data):
    src = data.draw(st.sampled_from([s for s in sources if s.ts != H.DEFLATED_LE]), label="source")
    element_ops = data.draw(st.lists(_FLAT_ELEMENT_OP, max_size=2), label="element ops")
    byte_ops = data.draw(st.lists(_BYTE_OP, max_size=3), label="byte ops")
    raw = mutate(src, element_ops, byte_ops, True)
    try:
        fast, fast_dicomdir, _ = H._scan(raw, src.implicit)
    except H._Unsupported:
        assume(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            slow, slow_dicomdir = H._via_pydicom(raw, src.implicit)
        except Exception:  # noqa: BLE001 - pydicom gives up where the scan does not: nothing to compare
            assume(False)

    def uids(values: dict, dicomdir: bool):
        try:
            h = H._header(values, dicomdir, None) if _header_takes_pseudonym() else H._header(values, dicomdir)
        except H.StoreRefused as exc:
            return exc.status
        return h.sop_class, h.sop_uid, h.study_uid, h.series_uid

    assert uids({k: H._text(v) for k, v in fast.items()}, fast_dicomdir) == uids(slow, slow_dicomdir)


def _header_takes_pseudonym() -> bool:
    import inspect

    return "pseudonym" in inspect.signature(H._header).parameters


def test_the_explicit_corner_cases_reach_both_scanners(sources):
    """The mutations are not vacuous: nesting past 32 levels leaves the fast scan to pydicom, which
    reads 40 levels and refuses 3000; an unclosed sequence and a huge length are refused."""
    src = next(s for s in sources if s.name == "synthetic" and s.ts == H.EXPLICIT_LE)
    with pytest.raises(H._Unsupported):
        H._scan(mutate(src, [("nest", 40, True)], [], True), False)
    assert isinstance(outcome(mutate(src, [("nest", 40, True)], [], True), src.ts), H.Header)
    for ops in ([("nest", 3000, True)], [("nest", 200, False)]):
        assert outcome(mutate(src, ops, [], True), src.ts)[:2] == ("refused", H.STATUS_CANNOT_UNDERSTAND)


# -- check_complete: the whole structure, walked before the receiver answers --------------------------


def completeness(stream, ts: str):
    try:
        H.check_complete(stream, ts)
    except H.StoreRefused as exc:
        assert exc.status == H.STATUS_CANNOT_UNDERSTAND and 0 < len(exc.comment) <= 64, (hex(exc.status), exc.comment)
        return ("refused", exc.comment)
    return "complete"


def boundaries(raw: bytes, implicit: bool) -> set[int]:
    """Offsets where a top-level element starts (and the end): a cut there leaves a complete data set."""
    out, pos = {0}, 0
    while pos < len(raw):
        tag, vr, vpos, length = H._element(raw, pos, implicit)
        pos = H._skip_sequence(raw, vpos, implicit or vr == b"UN") if length == H._UNDEFINED else vpos + length
        out.add(pos)
    return out


def draw_mutated(data, sources, min_cuts: int = 1) -> tuple:
    """(source, its wire bytes after up to 3 element and 4 byte mutations, fragment cuts)."""
    src = data.draw(st.sampled_from(sources), label="source")
    element_ops = data.draw(st.lists(_ELEMENT_OP, max_size=3), label="element ops")
    byte_ops = data.draw(st.lists(_BYTE_OP, max_size=4), label="byte ops")
    before = data.draw(st.booleans(), label="mutate before deflating") if src.ts == H.DEFLATED_LE else True
    cuts = data.draw(st.lists(st.integers(0, 1 << 20), min_size=min_cuts, max_size=4), label="fragment cuts")
    return src, mutate(src, element_ops, byte_ops, before), cuts


def test_check_complete_accepts_every_unmutated_source(sources):
    for src in sources:
        assert completeness(src.wire(src.raw), src.ts) == "complete", src


@settings(max_examples=300 * _SCALE)
@given(data=st.data())
def test_check_complete_answers_any_mutation_and_ignores_fragment_cuts(sources, data):
    src, wire, cuts = draw_mutated(data, sources)
    whole = completeness(wire, src.ts)
    event(whole if whole == "complete" else "refused")
    assert completeness(split(wire, cuts), src.ts) == whole, "the answer depends on where the fragments were cut"


def completeness_after_header(stream, ts: str):
    """check_complete as the receiver calls it: from where parse_header's walk stopped."""
    try:
        hdr = H.parse_header(stream, ts)
    except H.StoreRefused:
        return None
    try:
        H.check_complete(stream, ts, hdr.checked)
    except H.StoreRefused as exc:
        return ("refused", exc.comment)
    return "complete"


@settings(max_examples=300 * _SCALE)
@given(data=st.data())
def test_check_complete_from_the_header_walk_agrees_with_a_whole_walk(sources, data):
    """The receiver skips what parse_header walked already: the verdict must not change."""
    src, wire, cuts = draw_mutated(data, sources, min_cuts=0)
    stream = split(wire, cuts) if cuts else wire
    got = completeness_after_header(stream, src.ts)
    assume(got is not None)
    event(got if got == "complete" else "refused")
    assert got == completeness(stream, src.ts)


def test_the_header_walk_is_skipped_on_a_real_ct_slice(ct_data):
    """parse_header reports how far it walked, so the receiver's structure check starts there, and
    still refuses the slice cut short."""
    path = sorted((ct_data / "philips-phantom-thin").glob("I*"))[0]
    raw = path.read_bytes()
    body = raw[144 + int.from_bytes(raw[140:144], "little"):]
    ts = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    hdr = H.parse_header([body[:16000], body[16000:]], ts)
    assert 0 < hdr.checked < 16000
    H.check_complete([body[:16000], body[16000:]], ts, hdr.checked)
    with pytest.raises(H.StoreRefused):
        H.check_complete([body[:16000], body[16000:-2]], ts, hdr.checked)


@settings(max_examples=200 * _SCALE)
@given(data=st.data())
def test_check_complete_refuses_a_cut_anywhere_but_between_elements(sources, data):
    src = data.draw(st.sampled_from([s for s in sources if s.ts != H.DEFLATED_LE]), label="source")
    cut = data.draw(st.integers(1, len(src.raw) - 1), label="cut")
    got = completeness(src.raw[:cut], src.ts)
    if cut in boundaries(src.raw, src.implicit):
        assert got == "complete"
    else:
        assert got[0] == "refused", cut


def test_a_deflate_bomb_in_several_fragments_is_refused_within_the_cap():
    import tracemalloc

    part = int(H.MAX_INFLATED * 0.75)  # each fragment inflates to 3/4 of the cap: together, past it
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    fragments = [c.compress(bytes(part)) + c.flush(zlib.Z_FULL_FLUSH), c.compress(bytes(part)) + c.flush()]
    assert sum(map(len, fragments)) < 1 << 20  # under 1 MB on the wire
    tracemalloc.start()
    try:
        with pytest.raises(H.StoreRefused):
            H.check_complete(fragments, H.DEFLATED_LE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * H.MAX_INFLATED + (64 << 20), f"{peak >> 20} MiB held for {sum(map(len, fragments)) >> 10} KiB sent"
