"""Property-based fuzzing of series loading with hostile geometry values, issue 13 part 5.

The node stores data sets whose geometry or rescale values are not numbers (benchmarks/fuzz_store.py,
class ``non_numeric_geometry``: answered 0x0000, as the receiver does not read them). The analysis then
loads the series: ``load_series`` must either load it or refuse it with :class:`CannotAssess` (the node
sends a coded "cannot assess" SR). Any other exception fails the job on every attempt: the study gets
no result and no SR at all.

Inputs: the 5 mm phantom (the files as stored), one to all slices given hostile values for
ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness, Rows/Columns,
RescaleSlope/Intercept.
"""

from __future__ import annotations

import io
import warnings

from hypothesis import example, given, settings
from hypothesis import strategies as st

from hostile_geometry import FIELDS, SCALE, VALUES, with_value

from pipeline.result import CannotAssess
from pipeline.volume import load_series

def read(raw: bytes):
    import pydicom

    return pydicom.dcmread(io.BytesIO(raw))



def test_the_unmutated_phantom_loads(phantom_files):
    assert len(load_series([read(raw) for raw in phantom_files]).datasets) == 28


@settings(max_examples=25 * SCALE)
@given(field=st.sampled_from(sorted(FIELDS)), value=VALUES,
       slices=st.one_of(st.just("all"), st.sets(st.integers(0, 27), min_size=1, max_size=5)))
@example(field="ImagePositionPatient", value=b"abc\\def\\ghi", slices={10})
@example(field="RescaleSlope", value=b"abc", slices={3})
def test_hostile_geometry_loads_or_is_refused_with_a_code(phantom_files, field, value, slices):
    tag, vr = FIELDS[field]
    datasets = [read(with_value(raw, tag, vr, value) if slices == "all" or i in slices else raw)
                for i, raw in enumerate(phantom_files)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            load_series(datasets)
        except CannotAssess:
            pass
