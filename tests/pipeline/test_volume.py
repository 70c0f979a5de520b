"""Volume loading: geometry from IPP/IOP only, tilt, uneven spacing, coded refusals, compression."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from pipeline.result import CannotAssess
from pipeline.volume import Volume, load_series, read_images
from tests.conftest import unavailable


@pytest.fixture(scope="module")
def ge(ct_data: Path):
    return load_series(ct_data / "ge-human-head-tilted")


def test_ge_tilted_uneven_series_is_resampled_untilted(ge):
    assert ge.tilted and ge.resampled
    assert len(ge.datasets) == 28
    vol = ge.volume
    d = vol.direction_matrix
    assert np.allclose(d.T @ d, np.eye(3), atol=1e-6)          # orthogonal grid: no shear left
    # slice normal of an 18.5° tilt: (0, sin, cos)
    assert np.allclose(d[:, 2], [0, np.sin(np.radians(18.5)), np.cos(np.radians(18.5))], atol=1e-3)
    assert vol.spacing[2] == pytest.approx(4.0019, abs=1e-3)
    # the grid spans the whole stack along the normal (4 mm part + 7 mm part)
    n = d[:, 2]
    positions = [np.array([float(v) for v in ds.ImagePositionPatient]) @ n for ds in ge.datasets]
    assert (vol.shape[0] - 1) * vol.spacing[2] == pytest.approx(positions[-1] - positions[0], abs=vol.spacing[2])
    assert vol.hu.dtype == np.float32
    assert vol.hu.min() >= -1600 and 1000 < vol.hu.max() < 4000   # slope/intercept applied (bone, air)


def test_slices_sorted_by_position_not_by_instance_number_or_file_name(ct_data: Path, tmp_path: Path):
    src = sorted((ct_data / "philips-phantom-5mm").glob("I*"))
    datasets = [pydicom.dcmread(p) for p in src]
    rng = np.random.default_rng(1)
    for i, ds in enumerate(datasets):
        ds.InstanceNumber = int(rng.integers(1, 1000))       # meaningless numbering
    order = rng.permutation(len(datasets))
    for k, i in enumerate(order):                            # file names in a scrambled order
        datasets[i].save_as(tmp_path / f"{k:03d}.dcm")
    a = load_series(ct_data / "philips-phantom-5mm")
    b = load_series(tmp_path)
    assert np.array_equal(a.volume.hu, b.volume.hu)
    z = [float(ds.ImagePositionPatient[2]) for ds in b.datasets]
    assert z == sorted(z)


def test_phantom_skips_dirfile_and_needs_no_resampling(ct_data: Path):
    s = load_series(ct_data / "philips-phantom-5mm")
    assert len(s.datasets) == 28                 # DIRFILE (a DICOMDIR) skipped
    assert not s.tilted and not s.resampled
    assert s.volume.spacing == pytest.approx((0.451171875, 0.451171875, 5.0))
    mask = np.zeros(s.volume.shape, bool)
    mask[3:9, 100:200, 50:60] = True
    assert np.array_equal(s.mask_to_source(mask), mask)


def test_tilt_mapping_is_exact_nearest_voxel(ge):
    """Each source pixel takes the analysis voxel nearest its own physical centre (checked independently)."""
    vol = ge.volume
    rng = np.random.default_rng(0)
    mask = rng.random(vol.shape) > 0.5
    src = ge.mask_to_source(mask)
    assert src.shape == (28, 512, 512)
    for _ in range(400):
        k, j, i = int(rng.integers(0, 28)), int(rng.integers(0, 512)), int(rng.integers(0, 512))
        ds = ge.datasets[k]
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        sy, sx = (float(v) for v in ds.PixelSpacing)
        point = ipp + i * sx * iop[:3] + j * sy * iop[3:]
        zyx = np.rint(vol.physical_to_index(point[None])[0]).astype(int)
        inside = all(0 <= zyx[a] < vol.shape[a] for a in range(3))
        expected = bool(mask[tuple(zyx)]) if inside else False
        assert src[k, j, i] == expected, (k, j, i)


def test_tilt_mapping_places_a_physical_sphere_on_the_source_slices(ge):
    vol = ge.volume
    center = vol.index_to_physical(np.array([[18.0, 300.0, 256.0]]))[0]
    lo = np.array([18 - 7, 300 - 45, 256 - 45])           # a box that holds the 20 mm sphere
    zz, yy, xx = np.indices((15, 91, 91)) + lo[:, None, None, None]
    pts = vol.index_to_physical(np.stack([zz.ravel(), yy.ravel(), xx.ravel()], axis=1))
    sphere = np.zeros(vol.shape, bool)
    sphere[lo[0] : lo[0] + 15, lo[1] : lo[1] + 91, lo[2] : lo[2] + 91] = (
        np.linalg.norm(pts - center, axis=1) <= 20.0
    ).reshape(15, 91, 91)
    assert not sphere[lo[0]].any() and not sphere[lo[0] + 14].any()
    src = ge.mask_to_source(sphere)
    expected = np.zeros_like(src)
    j, i = np.mgrid[0:512, 0:512]
    for k, ds in enumerate(ge.datasets):
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        p = ipp + (i[..., None] * 0.4882812) * iop[:3] + (j[..., None] * 0.4882812) * iop[3:]
        expected[k] = np.linalg.norm(p - center, axis=-1) <= 20.0
    inter = (src & expected).sum()
    dice = 2 * inter / (src.sum() + expected.sum())
    assert dice > 0.9
    # the volume seen on the source slices (true local spacing) matches the analysis volume
    per_slice = src.reshape(28, -1).sum(axis=1) * ge.source_voxel_volumes_ml()
    assert per_slice.sum() == pytest.approx(sphere.sum() * vol.voxel_volume_ml, rel=0.1)
    assert sphere.sum() * vol.voxel_volume_ml == pytest.approx(4 / 3 * np.pi * 20**3 / 1000, rel=0.05)


def test_volume_sitk_round_trip(ge):
    img = ge.volume.to_sitk()
    back = Volume.from_sitk(img)
    assert np.array_equal(back.hu, ge.volume.hu)
    assert np.allclose(back.spacing, ge.volume.spacing)
    assert np.allclose(back.origin, ge.volume.origin)
    assert np.allclose(back.direction, ge.volume.direction)
    assert ge.volume.voxel_volume_ml == pytest.approx(np.prod(ge.volume.spacing) / 1000)


# ------------------------------------------------------------------------------------- refusals


def _code(datasets) -> str:
    with pytest.raises(CannotAssess) as info:
        load_series(datasets)
    return info.value.code


def _sorted(datasets):
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))


def test_missing_slice_is_refused(phantom_datasets):
    ds = _sorted(phantom_datasets)
    del ds[14]
    assert _code(ds) == "missing_slices"


def test_spacing_change_is_not_a_missing_slice(ct_data: Path):
    load_series(ct_data / "ge-human-head-tilted")   # 4 mm then 7 mm: must load


def test_mixed_orientation_is_refused(phantom_datasets):
    phantom_datasets[5].ImageOrientationPatient = [1, 0, 0, 0, 0.9, -0.43588989]
    assert _code(phantom_datasets) == "mixed_orientation"


def test_mixed_pixel_spacing_is_refused(phantom_datasets):
    phantom_datasets[3].PixelSpacing = [0.5, 0.5]
    assert _code(phantom_datasets) == "mixed_pixel_spacing"


def test_missing_frame_of_reference_is_refused(phantom_datasets):
    for ds in phantom_datasets:
        del ds.FrameOfReferenceUID
    assert _code(phantom_datasets) == "no_frame_of_reference"


def test_single_slice_is_refused(phantom_datasets):
    assert _code(phantom_datasets[:1]) == "single_slice"


def test_missing_geometry_is_refused(phantom_datasets):
    del phantom_datasets[2].ImagePositionPatient
    assert _code(phantom_datasets) == "missing_geometry"


def test_duplicate_positions_are_refused(phantom_datasets):
    phantom_datasets.append(copy.deepcopy(phantom_datasets[4]))
    assert _code(phantom_datasets) == "duplicate_slices"


def test_non_ct_is_refused(phantom_datasets):
    for ds in phantom_datasets:
        ds.Modality = "MR"
    assert _code(phantom_datasets) == "not_ct"


def test_folder_without_images_is_refused(ct_data: Path, tmp_path: Path):
    shutil.copy(ct_data / "philips-phantom-5mm" / "DIRFILE", tmp_path / "DIRFILE")
    (tmp_path / "notes.txt").write_text("not DICOM")
    with pytest.raises(CannotAssess) as info:
        read_images(tmp_path)
    assert info.value.code == "no_images"


# ---------------------------------------------------------------------------------- compression


def test_rle_compressed_series_loads_identically(phantom_dir: Path, tmp_path: Path):
    reference = load_series(phantom_dir)
    for i, ds in enumerate(read_images(phantom_dir)):
        ds.compress(RLELossless)
        ds.save_as(tmp_path / f"{i:03d}.dcm")
    assert {str(pydicom.dcmread(p).file_meta.TransferSyntaxUID) for p in tmp_path.iterdir()} == {RLELossless}
    assert np.array_equal(load_series(tmp_path).volume.hu, reference.volume.hu)


def test_jpeg_lossless_series_from_dcmcjpeg_loads_identically(ge_dir: Path, tmp_path: Path):
    if shutil.which("dcmcjpeg") is None:
        unavailable("dcmtk dcmcjpeg not installed")
    reference = load_series(ge_dir)
    for p in sorted(ge_dir.glob("*.dcm")):
        subprocess.run(["dcmcjpeg", "+e1", str(p), str(tmp_path / p.name)], check=True, timeout=60)  # JPEG lossless SV1
    ts = {str(pydicom.dcmread(p).file_meta.TransferSyntaxUID) for p in tmp_path.iterdir()}
    assert ts == {"1.2.840.10008.1.2.4.70"}
    assert np.array_equal(load_series(tmp_path).volume.hu, reference.volume.hu)


def test_every_source_slice_has_a_grid_plane(ge):
    levels = ge._resampling.levels
    assert np.all(np.rint(levels) <= ge.volume.shape[0] - 1)
    assert np.all(np.abs(levels - np.rint(levels)) <= 0.5)
    full = np.ones(ge.volume.shape, bool)
    assert ge.mask_to_source(full).reshape(28, -1).any(axis=1).all()
