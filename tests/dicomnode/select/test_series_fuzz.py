"""Property-based fuzzing of the series selection with hostile geometry values, issue 13 part 5.

The C-STORE fuzz harness (benchmarks/fuzz_store.py) shows the receiver stores data sets whose geometry is
not numbers (its ``non_numeric_geometry`` class: all answered 0x0000, as they should be: the receiver
reads UIDs, not geometry). What reaches the sweep then is a series of which some slices say
ImagePositionPatient = "abc\\def\\ghi", PixelSpacing = "NaN\\NaN" and so on. The selection must judge
such a series (analyse, cannot assess, ignore), never raise: a raise makes the sweep ignore the whole
study ("selection failed"), and a head CT then gets neither a result nor a "cannot assess" SR.

Inputs: the 5 mm phantom's headers as the sweep reads them (``read_headers`` of the stored files), with
one to all slices given hostile values for ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
SliceThickness, Rows/Columns, RescaleSlope/Intercept (the bytes as a sender would put them on the wire).
"""

from __future__ import annotations

import io
import warnings

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hostile_geometry import FIELDS, SCALE, VALUES, with_value

from dicomnode.config import SelectionSection
from dicomnode.select.series import HEADER_TAGS, SeriesAssessment, assess_series

def read_header(raw: bytes):
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True, specific_tags=HEADER_TAGS)



@pytest.fixture(scope="module")
def phantom_headers(phantom_files):
    return [read_header(raw) for raw in phantom_files]


def test_the_unmutated_phantom_qualifies(phantom_headers):
    assert assess_series("1.2.3", phantom_headers, SelectionSection()).verdict.value == "qualifies"


@settings(max_examples=60 * SCALE)
@given(field=st.sampled_from(sorted(FIELDS)), value=VALUES,
       slices=st.one_of(st.just("all"), st.sets(st.integers(0, 27), min_size=1, max_size=5)))
@example(field="ImagePositionPatient", value=b"abc\\def\\ghi", slices={10})
def test_hostile_geometry_is_judged_never_raises(phantom_files, phantom_headers, field, value, slices):
    tag, vr = FIELDS[field]
    headers = [read_header(with_value(raw, tag, vr, value)) if slices == "all" or i in slices else h
               for i, (raw, h) in enumerate(zip(phantom_files, phantom_headers))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assessment = assess_series("1.2.3", headers, SelectionSection())
    assert isinstance(assessment, SeriesAssessment)
