"""Model 2 radiomics: every configured image type yields features; values equal stock pyradiomics."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.features import radiomics as R

from .phantoms import phantom

PREFIX = {"Original": "original_", "Wavelet": "wavelet-", "Gradient": "gradient_", "Square": "square_",
          "SquareRoot": "squareroot_", "Logarithm": "logarithm_", "Exponential": "exponential_",
          "LBP3D": "lbp-3D-"}


@pytest.fixture(scope="module")
def extractor():
    ex = R.RadiomicsExtractor(workers=2)  # the real process pool
    ex.warm_up()
    return ex


def test_params_configure_the_seed_image_types_and_classes():
    ex = R.RadiomicsExtractor(workers=1)
    assert set(ex.image_types) == set(PREFIX)
    assert set(ex._stock.enabledFeatures) == {"shape", "firstorder", "glcm", "gldm", "glszm", "glrlm", "ngtdm"}
    assert ex.version == "radiomics-v1"


@pytest.mark.parametrize("where", ["centre", "edge"])
def test_identical_to_stock_and_every_image_type_present(extractor, where):
    # "edge": the hematoma touches the first slice, so the crop keeps that axis whole (periodic wavelet)
    kw = {} if where == "centre" else {"centre": (3.0, 4.0, -27.0), "radii": (12.0, 9.0, 9.0)}
    image, mask = phantom(seed=1, **kw)
    ours = extractor.extract(image, mask)
    stock = R.stock_features(image, mask)
    assert list(ours) == list(stock)                       # same names, same order
    np.testing.assert_array_equal(np.array(list(ours.values())), np.array(list(stock.values())))
    for itype, prefix in PREFIX.items():
        assert any(k.startswith(prefix) for k in ours), f"{itype} yielded no features"
    assert sum(k.startswith("original_") for k in ours) == 107
    assert {k.split("_")[0] for k in ours if k.startswith("lbp-3D-")} == {"lbp-3D-m1", "lbp-3D-m2", "lbp-3D-k"}


def test_lbp3d_guard_names_the_cause(monkeypatch):
    import scipy.special

    monkeypatch.delattr(scipy.special, "sph_harm")
    with pytest.raises(R.LBP3DUnavailable, match="sph_harm.*scipy<1.17"):
        R._check_lbp3d()


def test_mask_off_grid_and_empty_mask_are_refused():
    ex = R.RadiomicsExtractor(workers=1)
    image, mask = phantom()
    moved = sitk.Image(mask)
    moved.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="voxel grid"):
        ex.extract(image, moved)
    empty = sitk.Image(mask.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    with pytest.raises(ValueError, match="no voxels"):
        ex.extract(image, empty)


def test_extractors_built_in_parallel_threads_all_load():
    """The analysis child's radiomics threads each build a stock extractor on first use; pykwalify's
    shared YAML parser broke when two did so at once (a study's features failed, 1 in ~30 suite runs)."""
    from concurrent.futures import ThreadPoolExecutor

    def build(_):
        return sorted(R.stock_extractor(R.DEFAULT_PARAMS).enabledImagetypes)

    with ThreadPoolExecutor(8) as pool:
        built = list(pool.map(build, range(16)))
    assert built == [sorted(PREFIX)] * 16


def _features_in_daemon(q):
    ex = R.RadiomicsExtractor(workers=2)
    feats = ex.extract(*phantom(seed=2))
    q.put((type(R._pool(2)).__name__, list(feats.items())))


def test_daemonic_worker_process_uses_threads_and_stock_values():
    """The node's analysis child is daemonic and may not start a process pool: the feature classes run
    on threads there (issue 15: 1.5 s less per study), values still exactly stock's."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_features_in_daemon, args=(q,), daemon=True)
    proc.start()
    try:
        executor, items = q.get(timeout=180)
    finally:
        proc.join(10)
    stock = R.stock_features(*phantom(seed=2))
    assert executor == "ThreadPoolExecutor"
    assert [k for k, _ in items] == list(stock)
    np.testing.assert_array_equal(np.array([v for _, v in items]), np.array(list(stock.values())))


def test_a_named_subset_is_computed_alone_with_the_same_values(extractor):
    """Model 2 reads a few features (pipeline.features.used): only their filters and classes run, and
    each value equals the full extraction's."""
    image, mask = phantom(seed=3)
    full = extractor.extract(image, mask)
    only = {"original_firstorder_Entropy", "original_glcm_JointEntropy", "original_shape_Sphericity",
            "wavelet-HHL_glszm_GrayLevelNonUniformity", "lbp-3D-k_firstorder_Mean", "not_a_feature"}
    part = extractor.extract(image, mask, only=only)
    assert set(part) == only - {"not_a_feature"}
    for name, value in part.items():
        assert value == full[name], name
    assert extractor.extract(image, mask, only={"squareroot_ngtdm_Busyness"}) == {
        "squareroot_ngtdm_Busyness": full["squareroot_ngtdm_Busyness"]}
    assert extractor.extract(image, mask, only=set()) == {}


V2 = R.PARAMS_DIR / "radiomics-v2.yaml"


@pytest.mark.parametrize("bone", [False, True])
def test_v2_resamples_to_a_1mm_grid_and_still_equals_stock(bone):
    image, mask = phantom(seed=1)
    if bone:  # part of the mask on skull: re-segmented away from every class but shape, as in stock
        arr = sitk.GetArrayFromImage(image)
        m = sitk.GetArrayViewFromImage(mask).astype(bool)
        arr[:, :20][m[:, :20]] = 900.0
        on_bone = sitk.GetImageFromArray(arr)
        on_bone.CopyInformation(image)
        image = on_bone
    ex = R.RadiomicsExtractor(V2, workers=1)
    assert ex.version == "radiomics-v2" and list(ex._stock.settings["resampledPixelSpacing"]) == [1, 1, 1]
    ours = ex.extract(image, mask)
    stock = R.stock_features(image, mask, V2)
    assert list(ours) == list(stock)
    np.testing.assert_array_equal(np.array(list(ours.values())), np.array(list(stock.values())))
    for itype, prefix in PREFIX.items():
        assert any(k.startswith(prefix) for k in ours), f"{itype} produced no v2 features"
    assert ours["original_firstorder_Maximum"] <= 150.0  # the ROI holds no bone


def test_v2_features_agree_across_matrix_and_slice_thickness_where_v1_does_not():
    """The same phantom hematoma on a 256-like grid at 5 mm and a 512-like grid at 1.25 mm: v1's
    features (native grid, 25 HU bins) drift apart with the grid, v2's (1 mm, fixed bins) much less.
    Wavelet sub-bands are left out: iid voxel noise makes their high-pass energy grid-bound in any recipe."""
    grids = [dict(shape=(12, 48, 48), spacing=(0.9, 0.9, 5.0)), dict(shape=(48, 96, 96), spacing=(0.45, 0.45, 1.25))]

    def spread(params) -> tuple[float, float]:
        ex = R.RadiomicsExtractor(params, workers=1)
        a, b = (ex.extract(*phantom(seed=1, **g)) for g in grids)
        names = [n for n in a if not n.startswith("wavelet")]
        x, y = np.array([a[n] for n in names]), np.array([b[n] for n in names])
        rel = np.abs(x - y) / (np.abs(x) + np.abs(y) + 1e-9)
        ngtdm = np.array([r for n, r in zip(names, rel) if "_ngtdm_" in n])
        return float(np.median(rel)), float(np.median(ngtdm))

    v1, v2 = spread(R.DEFAULT_PARAMS), spread(V2)
    assert v2[0] < 0.8 * v1[0], (v1, v2)
    assert v1[1] > 0.5 and v2[1] < 0.2, (v1, v2)  # ngtdm counts voxels: the clearest grid dependence


V3 = R.PARAMS_DIR / "radiomics-v3.yaml"


def _slice_noise(image: sitk.Image, mask: sitk.Image) -> float:
    """Std of the difference between neighbouring slices deep inside the hematoma (its texture varies
    along x only, so what differs from slice to slice is noise)."""
    from scipy import ndimage

    arr = sitk.GetArrayFromImage(image)
    inner = ndimage.binary_erosion(sitk.GetArrayViewFromImage(mask).astype(bool), np.ones((1, 3, 3)), iterations=3)
    both = inner[1:] & inner[:-1]
    return float(np.std((arr[1:] - arr[:-1])[both]))


def test_antialias_smooths_only_the_axes_resampling_coarsens():
    thin = phantom(shape=(48, 96, 96), spacing=(0.45, 0.45, 1.25), seed=2)
    out = R.antialias(*thin, (1, 1, 5), pad=10)
    assert out.GetSpacing() == thin[0].GetSpacing() and out.GetSize() == thin[0].GetSize()
    assert _slice_noise(out, thin[1]) < 0.5 * _slice_noise(*thin)  # 1.25 mm slices smoothed towards 5 mm
    thick = phantom(seed=2)  # 0.9 x 0.9 x 5 mm: z is already there, in-plane 0.9 -> 1 mm barely
    out = R.antialias(*thick, (1, 1, 5), pad=10)
    assert _slice_noise(out, thick[1]) > 0.85 * _slice_noise(*thick)
    with pytest.raises(ValueError, match="resampledPixelSpacing"):
        R.RadiomicsExtractor(R.DEFAULT_PARAMS, workers=1, antialias=True)  # v1 resamples nothing


def test_antialias_crops_only_what_no_feature_sees():
    """Smoothing only the region pyradiomics reads is for speed only: every v3 feature equals stock
    pyradiomics on the whole image smoothed (it keeps padDistance voxels of the *new* 5 mm spacing around
    the mask in z)."""
    from scipy import ndimage

    image, mask = phantom(shape=(72, 96, 96), spacing=(0.45, 0.45, 1.25), centre=(0.0, 4.0, -8.0), seed=5)
    src, dst = np.asarray(image.GetSpacing()), np.array([1.0, 1.0, 5.0])
    sigma = np.sqrt(np.clip(dst ** 2 - src ** 2, 0, None)) / 2.3548 / src
    arr = ndimage.gaussian_filter(sitk.GetArrayFromImage(image).astype(np.float32), sigma=tuple(sigma[::-1]),
                                  mode="nearest")
    whole = sitk.GetImageFromArray(arr)
    whole.CopyInformation(image)
    ours = R.RadiomicsExtractor(V3, workers=1, antialias=True).extract(image, mask)
    stock = R.stock_features(whole, mask, V3)
    assert list(ours) == list(stock)
    np.testing.assert_array_equal(np.array(list(ours.values())), np.array(list(stock.values())))


@pytest.mark.parametrize("params, antialias", [(V2, False), (R.PARAMS_DIR / "radiomics-v4.yaml", True)])
def test_the_image_cut_to_what_resampling_reads_gives_stocks_values(params, antialias):
    """A thin, wide series and a small clot: the image handed to pyradiomics' resampler is cut to the grid's
    reach (resampling_box; ITK's B-spline otherwise prepares the whole volume) and every feature still equals
    stock pyradiomics on the whole (smoothed) image, to the last bit."""
    image, mask = phantom(shape=(140, 256, 256), spacing=(0.45, 0.45, 1.25), centre=(3.0, -2.0, 5.0),
                          radii=(7.0, 6.0, 6.0), seed=6)
    box = R.resampling_box(mask, (1, 1, 5) if antialias else (1, 1, 1), pad=10)
    cut = [b.stop - b.start for b in box]
    assert cut[0] < 256 and cut[1] < 256 and (antialias or cut[2] < 140), cut  # the cut is real
    ours = R.RadiomicsExtractor(params, workers=1, antialias=antialias).extract(image, mask)
    whole = R.antialias(image, mask, (1, 1, 5), 10) if antialias else image
    stock = R.stock_features(whole, mask, params)
    assert list(ours) == list(stock)
    np.testing.assert_array_equal(np.array(list(ours.values())), np.array(list(stock.values())))


@pytest.mark.parametrize("params", [V3, R.PARAMS_DIR / "radiomics-v4.yaml"])
def test_v3_and_v4_equal_stock_on_the_smoothed_image_and_every_image_type_is_present(params):
    image, mask = phantom(shape=(48, 96, 96), spacing=(0.45, 0.45, 1.25), seed=3)
    ex = R.RadiomicsExtractor(params, workers=1, antialias=True)
    assert ex.version == params.stem and list(ex._stock.settings["resampledPixelSpacing"]) == [1, 1, 5]
    ours = ex.extract(image, mask)
    stock = R.stock_features(R.antialias(image, mask, (1, 1, 5), 10), mask, params)
    assert list(ours) == list(stock)
    np.testing.assert_array_equal(np.array(list(ours.values())), np.array(list(stock.values())))
    for itype, prefix in PREFIX.items():
        assert any(k.startswith(prefix) for k in ours), f"{itype} produced no {params.stem} features"


def test_v3_features_of_a_thin_series_agree_with_its_thick_acquisition_better_than_v2():
    """One fine phantom (0.45 x 0.45 x 1.25 mm) and the same anatomy acquired thick: its 2 x 2 x 4 blocks
    averaged (0.9 x 0.9 x 5 mm, as a CT detector integrates a thick slice; noise falls accordingly).
    v2 interpolates the thick series up to 1 mm and compares it with the thin one's noise; v3 brings the
    thin series down to the thick one's grid and profile. First-order and texture features (shape and
    wavelet left out: the masks differ by the block averaging, wavelet high-pass is grid-bound)."""
    fine_img, fine_mask = phantom(shape=(48, 96, 96), spacing=(0.45, 0.45, 1.25), seed=4)
    a = sitk.GetArrayFromImage(fine_img).reshape(12, 4, 48, 2, 48, 2).mean(axis=(1, 3, 5))
    mk = sitk.GetArrayFromImage(fine_mask).reshape(12, 4, 48, 2, 48, 2).mean(axis=(1, 3, 5)) >= 0.5
    thick_img = sitk.GetImageFromArray(a.astype(np.float32))
    thick_img.SetSpacing((0.9, 0.9, 5.0))
    thick_img.SetOrigin(fine_img.GetOrigin())
    thick_mask = sitk.GetImageFromArray(mk.astype(np.uint8))
    thick_mask.CopyInformation(thick_img)

    def spread(params, antialias) -> float:
        ex = R.RadiomicsExtractor(params, workers=1, antialias=antialias)
        f, t = ex.extract(fine_img, fine_mask), ex.extract(thick_img, thick_mask)
        names = [n for n in f if n.startswith(("original_firstorder", "original_gl", "original_ngtdm"))]
        x, y = np.array([f[n] for n in names]), np.array([t[n] for n in names])
        return float(np.median(np.abs(x - y) / (np.abs(x) + np.abs(y) + 1e-9)))

    v2, v3 = spread(V2, False), spread(V3, True)
    assert v3 < 0.5 * v2, (v2, v3)
