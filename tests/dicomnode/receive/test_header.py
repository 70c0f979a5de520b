"""Fast header scan: same answers as pydicom, failures as DIMSE statuses, fallback on odd input."""

from __future__ import annotations

import io
import zlib

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from dicomnode.receive import header as H
from dicomnode.pseudonym import Pseudonymizer

PZ = Pseudonymizer.ephemeral()


def encode(ds: Dataset, implicit: bool) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, implicit
    write_dataset(buf, ds)
    return buf.getvalue()


def sample() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.Modality = "CT"
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "9.9.9"
    ds.ReferencedImageSequence = Sequence([item])
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "ID123"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.InstanceNumber = 7
    ds.Rows = 2
    return ds


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("undefined_length", [False, True])
def test_scan_matches_values(implicit, undefined_length):
    ds = sample()
    ds.ReferencedImageSequence.is_undefined_length = undefined_length
    ds.ReferencedImageSequence[0].is_undefined_length_sequence_item = undefined_length
    raw = encode(ds, implicit)
    values, dicomdir, _ = H._scan(raw, implicit)
    assert not dicomdir and values["SOPInstanceUID"].rstrip(b"\0") == b"1.2.3.4.5"
    h = H.parse_header(raw, H.IMPLICIT_LE if implicit else H.EXPLICIT_LE, PZ)
    assert (h.sop_uid, h.study_uid, h.series_uid, h.modality, h.instance_number) == ("1.2.3.4.5", "1.2.3", "1.2.3.4", "CT", 7)
    assert h.patient_hash == PZ("ID123")
    assert H.parse_header(raw, H.IMPLICIT_LE if implicit else H.EXPLICIT_LE).patient_hash is None  # no key, no name


def test_deflated():
    raw = encode(sample(), False)
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = c.compress(raw) + c.flush()
    assert H.parse_header(deflated, H.DEFLATED_LE).sop_uid == "1.2.3.4.5"
    with pytest.raises(H.StoreRefused) as ei:
        H.parse_header(b"not deflate at all", H.DEFLATED_LE)
    assert ei.value.status == H.STATUS_CANNOT_UNDERSTAND


def test_real_files_agree_with_pydicom(ct_data):
    for name in ("philips-phantom-5mm", "ge-human-head-tilted"):
        for p in sorted((ct_data / name).iterdir())[:5]:
            if p.name == "DIRFILE":
                continue
            raw = p.read_bytes()
            fp = io.BytesIO(raw)
            fp.seek(132)
            meta = pydicom.filereader._read_file_meta_info(fp)
            h = H.parse_header(raw[fp.tell():], str(meta.TransferSyntaxUID), PZ)
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            assert (h.sop_uid, h.series_uid, h.study_uid, h.sop_class) == (
                ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.SOPClassUID)
            assert h.instance_number == int(ds.InstanceNumber)
            assert h.patient_hash == PZ(ds.PatientID, ds.get("IssuerOfPatientID"))


@pytest.mark.parametrize("implicit", [False, True])
def test_fragments_give_the_same_header_wherever_they_are_split(implicit):
    """The header is read from the first P-DATA fragment when it lies inside it, else from all."""
    ds = sample()
    ds.PixelData = bytes(4000)
    ds.Columns, ds.BitsAllocated = 1000, 16
    raw = encode(ds, implicit)
    ts = H.IMPLICIT_LE if implicit else H.EXPLICIT_LE
    whole = H.parse_header(raw, ts)
    assert whole.instance_number == 7
    for cut in (1, 9, 100, 170, len(raw) - 4000, len(raw) - 1):  # inside the header … inside the pixels
        assert H.parse_header([raw[:cut], memoryview(raw)[cut:]], ts) == whole, cut
    assert H.parse_header([raw[:20], raw[20:200], raw[200:]], ts) == whole


def test_failures_are_statuses(ct_data):
    dirfile = (ct_data / "philips-phantom-5mm" / "DIRFILE").read_bytes()
    fp = io.BytesIO(dirfile)
    fp.seek(132)
    pydicom.filereader._read_file_meta_info(fp)
    with pytest.raises(H.StoreRefused) as ei:
        H.parse_header(dirfile[fp.tell():], H.EXPLICIT_LE)
    assert ei.value.status == H.STATUS_DATASET_MISMATCH
    raw = encode(sample(), False)
    for bad in (raw[:40], b"\xff" * 1000, b""):
        with pytest.raises(H.StoreRefused) as ei:
            H.parse_header(bad, H.EXPLICIT_LE)
        assert ei.value.status == H.STATUS_CANNOT_UNDERSTAND
    ds = sample()
    ds.SeriesInstanceUID = "../../x"
    with pytest.raises(H.StoreRefused, match="SeriesInstanceUID"):
        H.parse_header(encode(ds, False), H.EXPLICIT_LE)
