"""Hematoma radiomics, identical to stock pyradiomics but ~3x faster.

Stock ``RadiomicsFeatureExtractor.execute`` filters the *whole* CT (wavelet of a 512x512xN volume
costs seconds) and then computes one image type after another. Here each filter runs on the
smallest region that still gives bit-identical values inside the hematoma's bounding box, and the
feature classes of the filtered images run in a small process pool (threads in a daemonic process,
such as the node's analysis child, which may not have children):

- Original, Gradient (1-voxel support) and Wavelet (coif1, 6 taps, periodic) run on the bounding box
  plus ``MARGIN`` voxels; on an axis where that margin would touch the volume's edge the full axis
  is kept, so the wavelet's periodic wrap sees exactly what stock sees.
- Square, SquareRoot, Logarithm, Exponential scale by max|HU| of the *whole* image: stock's own
  filter runs on the box plus one "witness" voxel carrying the whole image's largest |HU|.
- LBP3D uses a global cubic-spline prefilter: it runs stock on the whole image, in the main process
  while the workers compute the other images' features.
- Recipes that resample (v2–v4) hand pyradiomics' resampler only the part of the image its grid can read
  (:func:`resampling_box`; the mask whole, so the grid stays put): ITK's B-spline otherwise prepares the
  whole series first (512 x 512 x 164 at 1 mm: 3.2 → 1.1 s per case for v4).

Every feature value equals stock's (tests/pipeline/features/test_radiomics.py; benchmarks/features.py).
``extract(..., only=names)`` computes just those features (the node asks for what model 2 reads, see
``pipeline.features.used``): filters that yield none of them are not run, the others compute only the
named classes and features, through pyradiomics' public ``enableFeaturesByName``; values unchanged.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import threading
from collections import OrderedDict
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

PARAMS_DIR = Path(__file__).resolve().parent / "params"
DEFAULT_PARAMS = PARAMS_DIR / "radiomics-v1.yaml"
MARGIN = 8  # >= half the coif1 support (6) and the gradient's 1 voxel
RESAMPLE_MARGIN = 40  # source voxels kept beyond the resampler's reach: 0.27**40 ~ 1e-23 (resampling_box)


class LBP3DUnavailable(ImportError):
    """pyradiomics silently drops LBP3D without these; model 2's features would shrink unnoticed."""


def _check_lbp3d() -> None:
    import scipy

    try:
        from scipy.special import sph_harm  # noqa: F401  removed in SciPy 1.17
    except ImportError as exc:
        raise LBP3DUnavailable(
            f"LBP3D radiomics need scipy.special.sph_harm, which SciPy {scipy.__version__} no longer has; "
            "install scipy<1.17 (pyproject pins it)") from exc
    try:
        from trimesh.creation import icosphere  # noqa: F401
    except ImportError as exc:
        raise LBP3DUnavailable("LBP3D radiomics need the 'trimesh' package (pip install 'trimesh>=4,<6')") from exc


_check_lbp3d()  # import-time guard: fail loudly instead of pyradiomics' warning-and-skip


def _quiet() -> None:
    import radiomics

    radiomics.setVerbosity(logging.ERROR)
    logging.getLogger("radiomics").setLevel(logging.ERROR)


#: pyradiomics validates a params file through pykwalify, whose one module-global ruamel ``YAML`` parser
#: is not thread-safe: two threads building extractors at once fail (ComposerError, IndexError …)
_BUILD_LOCK = threading.Lock()


def stock_extractor(params: Path | str = DEFAULT_PARAMS):
    """A stock ``RadiomicsFeatureExtractor`` for ``params`` (the reference our values must equal);
    safe to call from several threads."""
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    _quiet()
    with _BUILD_LOCK:
        return RadiomicsFeatureExtractor(str(params))


# --- worker side (top-level so the process pool can pickle them) -----------------------------------


#: which features a stock extractor computes: None = all the params file enables, else
#: ((class, (feature, ...)), ...) set through pyradiomics' public ``enableFeaturesByName``
Enabled = tuple[tuple[str, tuple[str, ...]], ...] | None

_WORKER_EXTRACTORS: dict[tuple[str, int, Enabled], object] = {}


def _worker_extractor(params: str, enabled: Enabled = None):
    """The stock extractor of this process, or of this thread where threads share a process."""
    key = (params, threading.get_ident(), enabled)
    ex = _WORKER_EXTRACTORS.get(key)
    if ex is None:
        ex = stock_extractor(params)
        if enabled is not None:
            ex.disableAllFeatures()
            ex.enableFeaturesByName(**{cls: list(names) for cls, names in enabled})
        _WORKER_EXTRACTORS[key] = ex
    return ex


def _task_features(params: str, image: sitk.Image, mask: sitk.Image, name: str, kwargs: dict,
                   enabled: Enabled = None) -> dict:
    return dict(_worker_extractor(params, enabled).computeFeatures(image, mask, name, **kwargs))


def _task_shape(params: str, image: sitk.Image, mask: sitk.Image, bbox: tuple, settings: dict,
                enabled: Enabled = None) -> dict:
    return dict(_worker_extractor(params, enabled).computeShape(image, mask, bbox, **settings))


def _warm(params: str) -> int:
    _worker_extractor(params)
    import scipy.stats  # noqa: F401  LBP3D's first call would otherwise pay this import
    return os.getpid()


class _InlineExecutor(Executor):
    def submit(self, fn, /, *args, **kwargs) -> Future:
        fut: Future = Future()
        fut.set_result(fn(*args, **kwargs))
        return fut


_POOLS: dict[int, Executor] = {}  # by worker count; negative: threads (in a daemonic process)


def _pool(workers: int) -> Executor:
    """One process pool per worker count, created once per process (spawn: safe next to TensorFlow)."""
    if workers <= 1:
        return _InlineExecutor()
    if mp.current_process().daemon:
        # daemonic processes (the node's analysis child) may not have children: threads instead. The
        # feature classes spend most of their time in numpy and pyradiomics' C code, which let other
        # threads run (5 mm phantom clot: 4.6 s inline, 3.0 s with 2 threads; same values).
        pool = _POOLS.get(-workers)
        if pool is None:
            pool = _POOLS[-workers] = ThreadPoolExecutor(workers, thread_name_prefix="radiomics")
        return pool
    pool = _POOLS.get(workers)
    if pool is None:
        pool = _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
        atexit.register(pool.shutdown, wait=False, cancel_futures=True)
    return pool


# --- main side --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Box:
    lo: tuple[int, int, int]  # x, y, z (SimpleITK index order), inclusive
    hi: tuple[int, int, int]  # exclusive

    def crop(self, img: sitk.Image) -> sitk.Image:
        (x0, y0, z0), (x1, y1, z1) = self.lo, self.hi
        return img[x0:x1, y0:y1, z0:z1]

    def shift(self, bbox: np.ndarray) -> np.ndarray:
        """A pyradiomics bounding box (xmin, xmax, ymin, ymax, zmin, zmax) relative to this box."""
        return np.array([int(v) - self.lo[i // 2] for i, v in enumerate(bbox)])


def _margin_box(bbox: tuple, size: tuple[int, int, int], margin: int) -> _Box:
    lo, hi = [], []
    for axis in range(3):
        a, b, n = bbox[2 * axis], bbox[2 * axis + 1], size[axis]
        if a - margin < 0 or b + 1 + margin > n:  # would touch the edge: keep the axis whole (periodic wrap)
            lo.append(0), hi.append(n)
        else:
            lo.append(a - margin), hi.append(b + 1 + margin)
    return _Box(tuple(lo), tuple(hi))


#: the image names (first part of a feature name) each image type's pyradiomics filter yields
_IMAGE_NAMES = {
    "Original": lambda n: n == "original", "Square": lambda n: n == "square",
    "SquareRoot": lambda n: n == "squareroot", "Logarithm": lambda n: n == "logarithm",
    "Exponential": lambda n: n == "exponential", "Gradient": lambda n: n == "gradient",
    "Wavelet": lambda n: n.startswith("wavelet"), "LoG": lambda n: n.startswith("log-sigma-"),
    "LBP2D": lambda n: n.startswith("lbp-2D"), "LBP3D": lambda n: n.startswith("lbp-3D-"),
}


class _Wanted:
    """A subset of feature names ("<image>_<class>_<feature>"), as what each filtered image must compute."""

    def __init__(self, names) -> None:
        self.by_image: dict[str, dict[str, list[str]]] = {}
        for name in names:
            parts = str(name).split("_", 2)
            if len(parts) == 3:
                image, cls, feature = parts
                self.by_image.setdefault(image, {}).setdefault(cls, []).append(feature)

    def image_type(self, itype: str) -> bool:
        """Whether filter ``itype`` may yield a wanted image (an unknown type: yes, to be safe)."""
        match = _IMAGE_NAMES.get(itype)
        return match is None or any(match(image) for image in self.by_image)

    def enabled(self, image: str, classes) -> Enabled | bool:
        """What to compute on ``image``: False = nothing, else the ``Enabled`` of its wanted classes."""
        wanted = self.by_image.get(image, {})
        pairs = tuple((cls, tuple(sorted(wanted[cls]))) for cls in classes if cls in wanted)
        return pairs or False


POINT_FILTERS = ("Square", "SquareRoot", "Logarithm", "Exponential")


def _check_same_grid(image: sitk.Image, mask: sitk.Image) -> None:
    same = (image.GetSize() == mask.GetSize()
            and np.allclose(image.GetSpacing(), mask.GetSpacing(), atol=1e-5)
            and np.allclose(image.GetOrigin(), mask.GetOrigin(), atol=1e-4)
            and np.allclose(image.GetDirection(), mask.GetDirection(), atol=1e-6))
    if not same:
        raise ValueError("radiomics: the mask must lie on the image's voxel grid (same size, spacing, origin, "
                         f"direction); got image {image.GetSize()} and mask {mask.GetSize()}")


def _largest_magnitude(image: sitk.Image) -> np.ndarray:
    """The voxel with the largest |value| of the whole image, as a 1-element array of its pixel type."""
    arr = sitk.GetArrayViewFromImage(image).ravel()
    return arr[np.abs(arr).argmax(keepdims=True)].copy()


def _with_witness(crop: sitk.Image, witness: np.ndarray) -> sitk.Image:
    """``crop``'s voxels followed by the whole image's largest-|value| voxel, as a 1-row image.

    The point-wise filters scale by max|x| (and Logarithm by max|log x|, monotone in |x|) of their
    input; with the witness appended, stock's own code on the crop sees the whole image's maximum.
    """
    flat = np.concatenate([sitk.GetArrayViewFromImage(crop).ravel(), witness])
    return sitk.GetImageFromArray(flat.reshape(1, 1, -1))


def _drop_witness(filtered: sitk.Image, crop: sitk.Image) -> sitk.Image:
    arr = sitk.GetArrayViewFromImage(filtered).ravel()[:-1]
    out = sitk.GetImageFromArray(arr.reshape(sitk.GetArrayViewFromImage(crop).shape))
    out.CopyInformation(crop)
    return out


def resampling_box(mask: sitk.Image, spacing, pad: int) -> tuple[slice, slice, slice]:
    """The (x, y, z) part of the image that resampling the mask's region to ``spacing`` can read.

    Why: pyradiomics resamples with a cubic B-spline, and ITK computes the spline's coefficients over the
    *whole* input before interpolating a single point (2.4 s of 3.2 for a 512 x 512 x 164 series). The grid
    it resamples onto comes from the *mask* alone (its box + ``pad`` voxels of the new spacing), so the image
    may be cut down to that grid's reach — 2 new voxels more for the spline's support, and ``RESAMPLE_MARGIN``
    source voxels more, across which the coefficients' dependence on the cut (a recursive filter whose
    influence falls by 0.27 per voxel) shrinks below double precision. Cut with SimpleITK's slicing, the
    image keeps its physical place; the mask is passed whole, so the grid does not move.
    """
    src = np.asarray(mask.GetSpacing(), float)
    dst = np.where(np.asarray(spacing, float) == 0, src, np.asarray(spacing, float))
    where = np.nonzero(sitk.GetArrayViewFromImage(mask))  # (z, y, x)
    reach = np.ceil((pad + 2) * dst / src).astype(int) + RESAMPLE_MARGIN  # (x, y, z)
    size = mask.GetSize()
    lo = [max(int(w.min()) - r, 0) for w, r in zip(where[::-1], reach)]
    hi = [min(int(w.max()) + 1 + r, n) for w, r, n in zip(where[::-1], reach, size)]
    return tuple(slice(a, b) for a, b in zip(lo, hi))  # type: ignore[return-value]


def antialias(image: sitk.Image, mask: sitk.Image, spacing, pad: int) -> sitk.Image:
    """``image`` (as float32) smoothed along every axis that resampling to ``spacing`` (x, y, z mm) coarsens.

    Why: pyradiomics resamples by interpolation, so a 1 mm series put on a 5 mm grid keeps 1 mm slices'
    noise and detail one slice in five, unlike a series acquired at 5 mm. A Gaussian of FWHM
    √(target² − source²) per axis first gives the thin series about the slice profile of a thick one
    (IBSI: anti-aliasing before down-sampling). Axes that are not coarsened are left alone.

    Only the part pyradiomics will read is smoothed — the mask's box + ``pad`` (``padDistance``) voxels of the
    *new* spacing + the Gaussian's and the B-spline's reach — and pasted back into the whole image, so the
    values equal smoothing everything and the resampled grid keeps its place (a cropped image would shift it).
    """
    from scipy import ndimage

    src = np.asarray(image.GetSpacing(), float)
    sigma_mm = np.sqrt(np.clip(np.asarray(spacing, float) ** 2 - src ** 2, 0, None)) / 2.3548  # FWHM -> sigma
    where = np.nonzero(sitk.GetArrayViewFromImage(mask))
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    if len(where[0]) and (sigma_mm > 0).any():
        sigma = (sigma_mm / src)[::-1]  # voxels, (z, y, x)
        reach = np.ceil((pad * np.asarray(spacing, float) + 8 * sigma_mm) / src).astype(int)[::-1] + 3
        lo = np.maximum([w.min() for w in where] - reach, 0)
        hi = np.minimum([w.max() + 1 for w in where] + reach, arr.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        arr[box] = ndimage.gaussian_filter(arr[box], sigma=tuple(sigma), mode="nearest")
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    return out


class RadiomicsExtractor:
    """Radiomics of one labelled region, configured by a versioned parameter YAML.

    ``extract(image, mask)`` returns an ordered ``{name: float}`` equal to stock pyradiomics'
    ``execute`` with the same file. ``workers`` processes compute the feature classes (default: up
    to 2 cores); ``workers=1`` runs everything inline. ``antialias``: smooth first along the axes the
    file's ``resampledPixelSpacing`` coarsens (:func:`antialias`; a recipe's choice, recorded in the
    model's metadata as ``radiomics_antialias``); the values then equal stock's on the smoothed image.
    """

    def __init__(self, params: Path | str = DEFAULT_PARAMS, workers: int | None = None,
                 antialias: bool = False) -> None:
        self.params = str(Path(params).resolve())
        if not Path(self.params).is_file():
            raise FileNotFoundError(f"radiomics parameter file not found: {self.params}")
        self.version = Path(self.params).stem  # e.g. "radiomics-v1"
        self._stock = stock_extractor(self.params)
        self.antialias = antialias
        if antialias and not self._stock.settings.get("resampledPixelSpacing"):
            raise ValueError(f"{self.params}: antialias needs a resampledPixelSpacing to smooth towards")
        self.image_types: dict[str, dict] = dict(self._stock.enabledImagetypes)
        self.workers = workers if workers is not None else max(1, min(2, os.cpu_count() or 1))
        self._threads_warm = False

    def warm_up(self) -> None:
        """Start the worker processes now (imports cost ~1 s each), not on the first case."""
        pool = _pool(self.workers)
        list(pool.map(_warm, [self.params] * self.workers))

    def extract(self, image: sitk.Image, mask: sitk.Image, only=None) -> "OrderedDict[str, float]":
        """``only``: feature names to compute (others, and filters that would yield none of them, are
        skipped; names that are no radiomics feature are ignored); ``None``: every feature of the file."""
        from radiomics import imageoperations as io

        settings = dict(self._stock.settings)
        _check_same_grid(image, mask)
        label = settings.get("label", 1)
        if not (sitk.GetArrayViewFromImage(mask) == label).any():
            raise ValueError(f"radiomics: the mask has no voxels with label {label}")
        near = mask
        if settings.get("interpolator") is not None and settings.get("resampledPixelSpacing") is not None:
            box = resampling_box(mask, settings["resampledPixelSpacing"], settings.get("padDistance", 5))
            image, near = image[box], mask[box]  # the mask stays whole: the resampled grid is placed by it
        if self.antialias:
            image = antialias(image, near, settings["resampledPixelSpacing"], settings.get("padDistance", 5))
        image, mask = self._stock.loadImage(image, mask, None, **settings)
        shape_mask = mask  # stock: shape on the loaded mask unless resegmentShape, the rest re-segmented
        if settings.get("resegmentRange") is not None:
            mask = io.resegmentMask(image, mask, **settings)
            if settings.get("resegmentShape", False):
                shape_mask = mask
        where = np.nonzero(sitk.GetArrayViewFromImage(mask) == label)
        if len(where[0]) == 0:
            raise ValueError(f"radiomics: no hematoma voxel lies in the re-segmentation range "
                             f"{settings.get('resegmentRange')}")
        # numpy's (z, y, x) extent -> pyradiomics' (xmin, xmax, ymin, ymax, zmin, zmax)
        extent = np.array([(int(w.min()), int(w.max())) for w in where[::-1]]).ravel()
        box = _margin_box(extent, image.GetSize(), MARGIN)
        img_m, mask_m = box.crop(image), box.crop(mask)
        bbox_m, corrected = io.checkMask(img_m, mask_m, **settings)  # stock's validation, on the small box
        if bbox_m is None or corrected is not None:
            raise ValueError("radiomics: pyradiomics rejected the mask (too small or not on the image grid)")
        bbox = np.asarray(bbox_m) + np.repeat(box.lo, 2)
        witness = _largest_magnitude(image)

        pool = _pool(self.workers)
        if isinstance(pool, ThreadPoolExecutor) and not self._threads_warm:
            _warm(self.params)  # first imports here, in one thread, before the pool's threads share them
            self._threads_warm = True
        wanted = _Wanted(only) if only is not None else None
        classes = [c for c in self._stock.enabledFeatures if c != "shape"]

        def enabled(image_name: str) -> Enabled | bool:
            return None if wanted is None else wanted.enabled(image_name, classes)

        futures: dict[str, list[Future]] = {}
        shape: Future | None = None
        shape_enabled = None if wanted is None else wanted.enabled("original", ["shape"])
        if "shape" in self._stock.enabledFeatures and shape_enabled is not False:
            # stock crops the shape's mask to the (re-segmented) ROI's bounding box as well
            shape_m = mask_m if shape_mask is mask else box.crop(shape_mask)
            shape = pool.submit(_task_shape, self.params, img_m, shape_m, bbox_m, settings, shape_enabled)
        todo = [t for t in self.image_types if wanted is None or wanted.image_type(t)]
        for itype in todo:
            if itype == "LBP3D":
                continue
            kw = {**settings, **self.image_types[itype]}
            src = _with_witness(img_m, witness) if itype in POINT_FILTERS else img_m
            futures[itype] = []
            for filt, name, fkw in getattr(io, f"get{itype}Image")(src, mask_m, **kw):
                if (what := enabled(name)) is False:
                    continue
                if itype in POINT_FILTERS:
                    filt = _drop_witness(filt, img_m)
                ci, cm = io.cropToTumorMask(filt, mask_m, bbox_m)
                futures[itype].append(pool.submit(_task_features, self.params, ci, cm, name, fkw, what))
        if "LBP3D" in todo:  # whole-image filter: here, while the workers compute features
            kw = {**settings, **self.image_types["LBP3D"]}
            futures["LBP3D"] = []
            for filt, name, fkw in io.getLBP3DImage(image, mask, **kw):
                if (what := enabled(name)) is False:
                    continue
                ci, cm = io.cropToTumorMask(filt, mask, bbox)
                futures["LBP3D"].append(pool.submit(_task_features, self.params, ci, cm, name, fkw, what))

        out: OrderedDict[str, float] = OrderedDict()
        if shape is not None:
            out.update(shape.result())
        for itype in self.image_types:  # stock order: shape, then image types as configured
            for fut in futures.get(itype, []):
                out.update(fut.result())
        return OrderedDict((k, float(v)) for k, v in out.items())

    def extract_volume(self, volume, mask: np.ndarray, only=None) -> "OrderedDict[str, float]":
        """Features of ``mask`` (z, y, x, non-zero = hematoma) on a ``pipeline.volume.Volume``."""
        image = volume.to_sitk()
        m = sitk.GetImageFromArray((np.asarray(mask) > 0).astype(np.uint8))
        m.CopyInformation(image)
        return self.extract(image, m, only=only)


def stock_features(image: sitk.Image, mask: sitk.Image, params: Path | str = DEFAULT_PARAMS) -> "OrderedDict[str, float]":
    """Stock pyradiomics, single-threaded: the reference for tests and the benchmark."""
    res = stock_extractor(params).execute(image, mask)
    return OrderedDict((k, float(v)) for k, v in res.items() if not k.startswith("diagnostics_"))
