"""pipeline.geometry: one set of series-geometry checks for the node's selection and pipeline.volume, and
one table of cannot-assess reasons (pipeline.result.REASONS), issue 17 part 4; the rescale to HU and the
"evenly spaced" rule are judged there too, so the selection refuses (and starts early) what the pipeline
refuses (and stacks without resampling)."""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from hostile_geometry import FIELDS, SCALE, VALUES, with_value

from dicomnode.config import SelectionSection
from dicomnode.select.series import CT_IMAGE, HEADER_TAGS, Verdict, assess_series
from pipeline import geometry
from pipeline.encode.codes import cannot_assess_reason
from pipeline.result import REASONS, CannotAssess
from pipeline.volume import load_series

ROOT = Path(__file__).resolve().parents[2]
# the codes pipeline.geometry decides: selection and pipeline must agree on exactly these
GEOMETRY_CODES = {"unsupported_multiframe", "single_slice", "missing_geometry", "invalid_geometry",
                  "no_frame_of_reference", "mixed_frame_of_reference", "mixed_orientation", "invalid_orientation",
                  "invalid_pixel_spacing", "mixed_pixel_spacing", "mixed_matrix_size", "duplicate_slices",
                  "missing_slices", "invalid_rescale"}


def stack(n=30, dz=5.0, size=8) -> list[Dataset]:
    """A small head NCCT with pixels (``size`` × ``size``), which both the selection and load_series read."""
    out = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CT_IMAGE
        ds.SOPInstanceUID = f"1.2.3.4.{i + 1}"
        ds.SeriesInstanceUID = "1.2.3.4"
        ds.Modality = "CT"
        ds.BodyPartExamined = "HEAD"
        ds.SeriesDescription = "HEAD STD"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ConvolutionKernel = "STANDARD"
        ds.SliceThickness = dz
        ds.PixelSpacing = [0.45, 0.45]
        ds.Rows = ds.Columns = size
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-115, -115, i * dz]
        ds.FrameOfReferenceUID = "1.2.3.9"
        ds.PatientPosition = "HFS"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.full((size, size), 40, dtype=np.int16).tobytes()
        out.append(ds)
    return out


SITE_LIMITS = {"slice_too_thick", "too_few_slices", "insufficient_coverage"}  # the selection's alone
PIXELS = {"undecodable_pixels", "unsupported_pixels"}                          # the pipeline's alone


def selection_code(images, cfg=SelectionSection()) -> str | None:
    """The selection's code, None when it qualifies or only a site limit (not geometry) refuses it."""
    a = assess_series("1.2.3.4", images, cfg)
    assert a.verdict in (Verdict.QUALIFIES, Verdict.CANNOT_ASSESS), a
    return None if a.code in SITE_LIMITS else a.code


def pipeline_code(images) -> str | None:
    """load_series' code, None when it loads or only the pixels (which the selection never reads) fail."""
    try:
        load_series(images)
    except CannotAssess as ca:
        return None if ca.code in PIXELS else ca.code
    return None


# ------------------------------------------------------------------------------------------------ the module


def test_slices_are_ordered_along_the_normal_not_by_input_order():
    images = stack(n=5)[::-1]
    geo = geometry.check_series_geometry(images)
    assert geo.order == [4, 3, 2, 1, 0]
    assert np.allclose(geo.positions, [0, 5, 10, 15, 20])
    assert np.allclose(geo.normal, np.cross(geo.row, geo.col))  # (row, column, normal) right-handed
    assert geo.pixel_spacing == (0.45, 0.45) and (geo.rows, geo.columns) == (8, 8)


def test_feet_first_orientation_still_ascends_along_its_own_normal():
    images = stack(n=4)
    for ds in images:
        ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]       # normal (0, 0, -1)
    geo = geometry.check_consistency(images)
    assert np.allclose(geo.normal, [0, 0, -1]) and geo.order == [3, 2, 1, 0]


def test_defaults_are_the_nodes_selection_defaults():
    assert geometry.MISSING_GAP_FACTOR == SelectionSection().gap_factor


@pytest.mark.parametrize("gaps,factor,found", [
    ([5, 5, 5, 10, 5, 5], 1.5, 3),             # one slice missing
    ([5, 5, 5, 7, 5, 5], 1.5, None),           # 1.4 × is not a missing slice at the default
    ([5, 5, 5, 7, 5, 5], 1.3, 3),              # ... at a stricter site setting it is
    ([4] * 8 + [7] * 8, 1.5, None),            # a protocol switch 4 mm → 7 mm is not a gap
])
def test_missing_slice_gap(gaps, factor, found):
    miss = geometry.missing_slice_gap(np.array(gaps, dtype=float), factor)
    assert (miss[0] if miss else None) == found


@pytest.mark.parametrize("positions,code", [
    ([0, 5, 5.005, 10], "duplicate_slices"),     # closer than DUPLICATE_TOL_MM (0.01)
    ([0, 5, 10, 20, 25, 30], "missing_slices"),
])
def test_check_spacing(positions, code):
    with pytest.raises(CannotAssess) as info:
        geometry.check_spacing(np.array(positions, dtype=float))
    assert info.value.code == code


def test_gap_factor_and_duplicate_tolerance_are_parameters():
    pos = np.array([0, 5, 10, 17, 22, 27], dtype=float)
    geometry.check_spacing(pos)                                  # 1.4 × at the default 1.5
    with pytest.raises(CannotAssess):
        geometry.check_spacing(pos, gap_factor=1.3)
    geometry.check_spacing(np.array([0, 0.005, 5]), duplicate_tol_mm=0.001, gap_factor=1e6)
    geometry.check_spacing(np.array([0, 0.02, 5]), gap_factor=1e6)  # 0.02 mm apart is no duplicate


def test_tolerant_helpers_never_raise():
    assert geometry.floats("abc") is None and geometry.floats([1, 2], 3) is None and geometry.floats("") is None
    assert geometry.slice_normal(["nan"] * 6) is None and geometry.slice_normal([1, 0, 0, 1, 0, 0]) is None
    bad = stack(n=3)
    bad[1].ImagePositionPatient = [1, 2]  # two values
    assert geometry.normal_positions(bad) is None and geometry.normal_positions([]) is None


@pytest.mark.parametrize("slope,intercept,ok", [
    (1, -1024, True), (None, None, True), ("", "", True), (2.5, 0, True), (-1, 0, True),  # absent: identity
    (0, 0, False), ("nan", 0, False), (1, "inf", False), (1e39, 0, False),  # 1e39 overflows float32
    ([1, 2], 0, False),
])
def test_rescale(slope, intercept, ok):
    ds = Dataset()
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if ok:
        assert geometry.rescale(ds) == ((float(slope), float(intercept)) if slope not in (None, "") else (1.0, 0.0))
    else:
        with pytest.raises(CannotAssess, match="invalid_rescale"):
            geometry.check_rescale([Dataset(), ds])


@pytest.mark.parametrize("gaps,even", [
    ([5, 5, 5], True), ([5, 5.04, 4.97], True),     # within 1 % of the median
    ([5, 5.2, 5, 5.2], False),                      # 4 %: resampled, so not "complete" on release either
    ([4] * 5 + [7] * 5, False), ([], False), ([0, 0], False),
])
def test_evenly_spaced(gaps, even):
    assert geometry.evenly_spaced(np.array(gaps, dtype=float)) is even


def test_one_even_spacing_rule_no_private_tolerance():
    """The selection's "complete" and the pipeline's "no resampling" had their own tolerances (10 % vs
    1 %); both now call geometry.evenly_spaced."""
    import dicomnode.select.series as series
    import pipeline.volume as volume

    assert not hasattr(volume, "UNIFORM_REL_TOL")
    assert "tolerance" not in series.geometrically_complete.__code__.co_varnames
    assert geometry.EVEN_SPACING_REL_TOL == 0.01


# ------------------------------------------------------------------------------------------------ one table


def _raised_codes() -> set[str]:
    codes = set()
    for path in list((ROOT / "pipeline").rglob("*.py")) + list((ROOT / "dicomnode" / "select").rglob("*.py")):
        text = path.read_text()
        codes |= set(re.findall(r'CannotAssess\(\s*"(\w+)"', text))
        codes |= set(re.findall(r'Verdict\.CANNOT_ASSESS,\s*"(\w+)"', text))
    return codes


def test_every_code_raised_is_in_the_one_table_with_its_sr_code():
    raised = _raised_codes()
    assert GEOMETRY_CODES <= raised and "slice_too_thick" in raised and "no_brain" in raised
    assert raised <= set(REASONS), raised - set(REASONS)
    for code, (value, meaning) in REASONS.items():
        assert len(value) <= 16 and value.startswith("CA-") and 0 < len(meaning) <= 64
        concept = cannot_assess_reason(code)
        assert (concept.value, concept.meaning) == (value, meaning)
    assert len({v for v, _ in REASONS.values()}) == len(REASONS)  # one SR code per reason
    assert cannot_assess_reason("no_such_code").value == "CA-OTHER"


def test_codes_srs_already_carry_are_kept():
    for code, value in [("missing_slices", "CA-MISSINGSLICES"), ("mixed_geometry", "CA-MIXGEOMETRY"),
                        ("mixed_pixel_spacing", "CA-MIXSPACING"), ("mixed_matrix_size", "CA-MIXMATRIX")]:
        assert REASONS[code][0] == value


# ------------------------------------------------------------------------------------------------ one verdict


def _set(k, kw, value):
    def mutate(images):
        for i in ([k] if isinstance(k, int) else k):
            setattr(images[i], kw, value)
    return mutate


def _pos(k, z):
    return _set(k, "ImagePositionPatient", [-115, -115, z])


def _drop(k):
    def mutate(images):
        del images[k]
    return mutate


def _delete(k, kw):
    def mutate(images):
        delattr(images[k], kw)
    return mutate


def _shift_from(k, mm):
    def mutate(images):
        for i, ds in enumerate(images[k:], start=k):
            ds.ImagePositionPatient = [-115, -115, i * 5.0 + mm]
    return mutate


def _multiframe(images):
    images[2].NumberOfFrames = 2


def _single(images):
    del images[1:]


CASES = {
    "clean": (lambda images: None, None),
    "slice missing": (_drop(12), "missing_slices"),
    "one gap 1.6 x the spacing": (_shift_from(15, 3.0), "missing_slices"),
    "one gap 1.4 x the spacing": (_shift_from(15, 2.0), None),
    "two slices 0.005 mm apart (was: duplicate in selection, missing in pipeline)": (_pos(5, 20.005), "duplicate_slices"),
    "two slices at one position": (_pos(5, 20.0), "duplicate_slices"),
    "pixel spacing 0.45 vs 0.4502 (was: selection refused, pipeline loaded)": (
        _set(3, "PixelSpacing", [0.4502, 0.4502]), None),
    "mixed pixel spacing (was: mixed_geometry in selection)": (_set(3, "PixelSpacing", [0.5, 0.5]),
                                                              "mixed_pixel_spacing"),
    "mixed matrix size (was: mixed_geometry in selection)": (_set(3, "Rows", 4), "mixed_matrix_size"),
    "mixed orientation": (_set(3, "ImageOrientationPatient", [1, 0, 0, 0, 0.9, -0.43589]), "mixed_orientation"),
    "non-orthonormal orientation (was: selection judged it)": (
        _set(range(30), "ImageOrientationPatient", [1, 0, 0, 0.2, 1, 0]), "invalid_orientation"),
    "zero pixel spacing": (_set(range(30), "PixelSpacing", [0, 0]), "invalid_pixel_spacing"),
    "NaN position": (_set(4, "ImagePositionPatient", ["nan", 0, 0]),
                                                         "invalid_geometry"),
    "no Rows (was: selection did not look)": (_delete(6, "Rows"), "missing_geometry"),
    "no position": (_delete(6, "ImagePositionPatient"), "missing_geometry"),
    "no frame of reference": (_delete(6, "FrameOfReferenceUID"), "no_frame_of_reference"),
    "two frames of reference": (_set(6, "FrameOfReferenceUID", "1.2.3.10"), "mixed_frame_of_reference"),
    "multi-frame": (_multiframe, "unsupported_multiframe"),
    "one slice": (_single, "single_slice"),
    "rescale slope NaN (was: selection qualified, pipeline made NaN HU)": (_set(4, "RescaleSlope", "nan"),
                                                                          "invalid_rescale"),
    "rescale slope 0 (was: selection qualified, pipeline read it as 1)": (_set(4, "RescaleSlope", 0),
                                                                         "invalid_rescale"),
    "rescale intercept 1e39 (was: selection qualified, pipeline made inf HU)": (
        _set(range(30), "RescaleIntercept", 1e39), "invalid_rescale"),
    "slopes differ between slices (each slice converted with its own)": (_set(4, "RescaleSlope", 2), None),
    "no rescale at all (identity)": (lambda images: [(delattr(ds, "RescaleSlope"), delattr(ds, "RescaleIntercept"))
                                                     for ds in images], None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_selection_and_pipeline_reach_the_same_verdict(name):
    mutate, code = CASES[name]
    images = stack()
    mutate(images)
    assert selection_code(images) == pipeline_code(images) == code


@pytest.mark.parametrize("jitter", [0.0, 0.003, 0.009, 0.02, 0.05, 0.09])
def test_selection_starts_on_release_exactly_what_the_pipeline_stacks_without_resampling(jitter):
    """Every other gap ``jitter`` × 5 mm longer: not a missing slice, analysable by both; "complete"
    (may start on release) iff the pipeline takes the stack as it is (was: 10 % vs 1 %)."""
    images = stack()
    z = 0.0
    for i, ds in enumerate(images):
        ds.ImagePositionPatient = [-115, -115, z]
        z += 5.0 * (1 + jitter * (i % 2))
    a = assess_series("1.2.3.4", images, SelectionSection())
    loaded = load_series(images)
    assert a.verdict is Verdict.QUALIFIES
    assert a.complete is (not loaded.resampled) is (jitter < 0.01)


def test_a_site_gap_factor_reaches_the_same_verdict_as_the_pipeline_with_that_factor():
    images = stack()
    for i, ds in enumerate(images[15:]):
        ds.ImagePositionPatient = [-115, -115, 14 * 5.0 + 7.5 + i * 5.0]  # one 7.5 mm gap = 1.5 × 5 mm
    assert selection_code(images) is None and pipeline_code(images) is None
    strict = SelectionSection(gap_factor=1.4)
    assert selection_code(images, strict) == "missing_slices"
    with pytest.raises(CannotAssess, match="missing_slices"):
        geometry.check_series_geometry(images, gap_factor=strict.gap_factor)


GEOMETRY_FIELDS = sorted(set(FIELDS) - {"SliceThickness"})  # rescale included: the selection reads it too


@settings(max_examples=25 * SCALE, deadline=None)
@given(field=st.sampled_from(GEOMETRY_FIELDS), value=VALUES,
       slices=st.one_of(st.just("all"), st.sets(st.integers(0, 27), min_size=1, max_size=5)))
@example(field="ImagePositionPatient", value=b"abc\\def\\ghi", slices={10})
@example(field="ImagePositionPatient", value=b"NaN\\NaN\\NaN", slices={3})
@example(field="PixelSpacing", value=b"-0\\-0\\-0", slices="all")
@example(field="ImageOrientationPatient", value=b"1e308\\1e308\\1e308", slices={0})
@example(field="RescaleSlope", value=b"abc", slices={3})
@example(field="RescaleIntercept", value=b"NaN", slices="all")
@example(field="RescaleSlope", value=b"-0", slices={7})
def test_hostile_geometry_gets_one_verdict_from_selection_and_pipeline(phantom_files, field, value, slices):
    """The real phantom, slices given hostile geometry bytes: the selection (header-only reads, as the
    sweep does) and load_series (full reads) name the same geometry code, or neither does."""
    tag, vr = FIELDS[field]
    raws = [with_value(raw, tag, vr, value) if slices == "all" or i in slices else raw
            for i, raw in enumerate(phantom_files)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        headers = [pydicom.dcmread(io.BytesIO(r), stop_before_pixels=True, specific_tags=HEADER_TAGS) for r in raws]
        a = assess_series("1.2.3", headers, SelectionSection())
        if a.verdict not in (Verdict.QUALIFIES, Verdict.CANNOT_ASSESS):
            return  # judged not a head NCCT from its (hostile) orientation: the pipeline never sees it
        chosen = None if a.code in SITE_LIMITS else a.code
        assert chosen == pipeline_code([pydicom.dcmread(io.BytesIO(r)) for r in raws])
