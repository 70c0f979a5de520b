"""Selection: qualifying head NCCT, thinnest wins; cannot-assess codes; non-head ignored."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicomnode.config import SelectionSection
from dicomnode.select.series import CT_IMAGE, Verdict, assess_series
from dicomnode.select.study import choose, read_headers

CFG = SelectionSection()


def series(n=30, dz=5.0, thickness=None, **over) -> list[Dataset]:
    out = []
    for i in range(n):
        ds = Dataset()
        ds.SOPClassUID = CT_IMAGE
        ds.Modality = "CT"
        ds.BodyPartExamined = "HEAD"
        ds.SeriesDescription = "HEAD STD"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ConvolutionKernel = "STANDARD"
        ds.SliceThickness = thickness if thickness is not None else dz
        ds.PixelSpacing = [0.45, 0.45]
        ds.Rows = ds.Columns = 512
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-115, -115, i * dz]
        ds.FrameOfReferenceUID = "1.2.3.9"
        ds.PatientPosition = "HFS"
        for k, v in over.items():
            if v is None:
                delattr(ds, k) if k in ds else None
            else:
                setattr(ds, k, v)
        out.append(ds)
    return out


def verdict(hdrs, cfg=CFG):
    return assess_series("1.2.3.4", hdrs, cfg)


def test_qualifying_head_ncct():
    a = verdict(series())
    assert a.verdict is Verdict.QUALIFIES and a.n_slices == 30 and a.coverage_mm == pytest.approx(150)
    assert a.complete  # evenly spaced, nothing says a slice is missing: may start on release


def test_images_in_acquisition_tells_a_series_cut_short():
    assert verdict(series(ImagesInAcquisition=30)).complete
    short = verdict(series(ImagesInAcquisition=34))  # the last 4 slices are still on their way
    assert short.verdict is Verdict.QUALIFIES and not short.complete


def test_uneven_spacing_is_analysable_but_not_complete_on_release():
    """4 mm posterior fossa, then 6 mm: not a missing slice (analysed), but not evenly spaced either,
    so the count cannot confirm completeness and the quiet period decides."""
    hdrs = series(n=30, dz=4.0)
    for i, ds in enumerate(hdrs[10:], start=1):
        ds.ImagePositionPatient = [-115, -115, 36 + i * 6.0]
    a = verdict(hdrs)
    assert a.verdict is Verdict.QUALIFIES and not a.complete


def test_a_few_percent_of_uneven_spacing_is_not_complete_on_release():
    """Gaps 5.0 / 5.2 mm: the pipeline resamples such a stack (pipeline.geometry.evenly_spaced, 1 %), so
    the selection does not call it evenly spaced either (it had its own 10 %) and the quiet period decides."""
    hdrs = series()
    for i, ds in enumerate(hdrs):
        ds.ImagePositionPatient = [-115, -115, i * 5.1 + (0.1 if i % 2 else 0.0)]
    a = verdict(hdrs)
    assert a.verdict is Verdict.QUALIFIES and not a.complete


def test_choose_carries_completeness():
    assert choose("1.2", [verdict(series())]).complete
    assert not choose("1.2", [verdict(series(ImagesInAcquisition=31))]).complete


@pytest.mark.parametrize("over,code", [
    (dict(Modality="MR"), "not_ct"),
    (dict(BodyPartExamined="CHEST"), "not_head"),
    (dict(BodyPartExamined=None, SeriesDescription="ABDOMEN PELVIS", ReconstructionDiameter=400), "not_head"),
])
def test_not_head_ct(over, code):
    a = verdict(series(**over))
    assert a.verdict is Verdict.NOT_HEAD_CT and a.code == code


def test_head_by_anatomy_without_labels():
    a = verdict(series(BodyPartExamined=None, SeriesDescription=None, ReconstructionDiameter=230))
    assert a.verdict is Verdict.QUALIFIES and "anatomy" in a.reason


@pytest.mark.parametrize("over,code", [
    (dict(ContrastBolusAgent="Iomeprol"), "contrast"),
    (dict(SeriesDescription="CTA HEAD"), "contrast"),
    (dict(ConvolutionKernel="BONE"), "sharp_kernel"),
    (dict(ConvolutionKernel="H70h"), "sharp_kernel"),
    (dict(ImageType=["DERIVED", "SECONDARY", "MPR"]), "derived"),
    (dict(ImageOrientationPatient=[1, 0, 0, 0, 0, -1]), "not_axial"),
])
def test_excluded(over, code):
    a = verdict(series(**over))
    assert a.verdict is Verdict.EXCLUDED and a.code == code


def test_non_contrast_words_do_not_exclude():
    assert verdict(series(ContrastBolusAgent="NONE")).verdict is Verdict.QUALIFIES


def test_cannot_assess_codes():
    hs = series()
    del hs[12]
    assert verdict(hs).code == "missing_slices"
    assert verdict(series(FrameOfReferenceUID=None)).code == "no_frame_of_reference"
    assert verdict(series(n=1)).code == "single_slice"
    assert verdict(series(n=40, dz=7.0)).code == "slice_too_thick"
    assert verdict(series(n=5)).code == "too_few_slices"
    assert verdict(series(n=12, dz=2.0)).code == "insufficient_coverage"
    hs = series()
    hs[3].ImageOrientationPatient = [1, 0, 0, 0, 0.9, -0.43589]
    assert verdict(hs).code == "mixed_orientation"
    hs = series()
    hs[3].PixelSpacing = [0.5, 0.5]
    assert verdict(hs).code == "mixed_pixel_spacing"  # the pipeline's code (was "mixed_geometry" here)
    hs = series()
    hs[3].Rows = 256
    assert verdict(hs).code == "mixed_matrix_size"
    assert all(verdict(h).verdict is Verdict.CANNOT_ASSESS for h in (series(n=1), series(n=5)))


@pytest.mark.parametrize("over", [dict(RescaleSlope=0, RescaleIntercept=-1024),
                                  dict(RescaleSlope="nan", RescaleIntercept=-1024),
                                  dict(RescaleSlope=1, RescaleIntercept=1e39),
                                  dict(RescaleSlope=[1, 1], RescaleIntercept=0)])
def test_unusable_rescale_cannot_be_assessed_as_the_pipeline_refuses_it(over):
    a = verdict(series(**over))
    assert a.verdict is Verdict.CANNOT_ASSESS and a.code == "invalid_rescale"


def test_absent_or_per_slice_rescale_qualifies():
    assert verdict(series()).verdict is Verdict.QUALIFIES  # absent: stored values are HU, as the pipeline reads them
    hs = series(RescaleSlope=1, RescaleIntercept=-1024)
    hs[4].RescaleSlope, hs[4].RescaleIntercept = 0.5, -1000
    assert verdict(hs).verdict is Verdict.QUALIFIES


def test_the_sweeps_header_read_sees_the_rescale(tmp_path):
    """read_headers (HEADER_TAGS) must carry RescaleSlope/Intercept, or the check never sees them."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    paths = []
    for i, ds in enumerate(series(RescaleSlope=1, RescaleIntercept=-1024)):
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPInstanceUID = f"1.2.3.4.{i + 1}"
        if i == 7:
            ds.RescaleSlope = 0
        paths.append(tmp_path / f"{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    headers = read_headers(paths)
    assert all("RescaleSlope" in h for h in headers)
    assert verdict(headers).code == "invalid_rescale"


def test_spacing_change_is_not_a_missing_slice():
    hs = series(n=14, dz=4.0) + [s for s in series(n=14, dz=4.0)]
    for i, ds in enumerate(hs[14:]):
        ds.ImagePositionPatient = [-115, -115, 13 * 4.0 + 4 + i * 4.0]
    assert verdict(hs).verdict is Verdict.QUALIFIES


def test_choose_thinnest_then_cannot_assess_then_ignore():
    thin = assess_series("thin", series(n=140, dz=1.0), CFG)
    thick = assess_series("thick", series(n=28, dz=5.0), CFG)
    bad = assess_series("bad", series(n=1), CFG)
    chest = assess_series("chest", series(BodyPartExamined="CHEST"), CFG)
    d = choose("1.2", [thick, bad, thin, chest])
    assert (d.action, d.series_uid) == ("analyze", "thin")
    d = choose("1.2", [bad, chest])
    assert (d.action, d.series_uid, d.code) == ("cannot_assess", "bad", "single_slice")
    d = choose("1.2", [chest])
    assert d.action == "ignore" and "not_head" in d.reason


def test_real_series(ct_data):
    def real(name):
        files = [p for p in sorted((ct_data / name).iterdir()) if p.name != "DIRFILE"]
        return assess_series(name, read_headers(files), CFG)

    assert real("philips-phantom-5mm").verdict is Verdict.QUALIFIES
    ge = real("ge-human-head-tilted")  # tilted, 4 mm then 7 mm: a head CT, too thick at the 5 mm default
    assert ge.verdict is Verdict.CANNOT_ASSESS and ge.code == "slice_too_thick"
    relaxed = SelectionSection(max_slice_thickness_mm=7)
    files = [p for p in sorted((ct_data / "ge-human-head-tilted").iterdir())]
    assert assess_series("ge", read_headers(files), relaxed).verdict is Verdict.QUALIFIES
