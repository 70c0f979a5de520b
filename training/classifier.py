"""Train model 2 (the seed's protocol): fused features -> SFS -> SVM, calibrated, thresholded.

- Cohort: a synthetic (or imported) cohort directory with ``manifest.csv``; training uses the
  *ground-truth* baseline masks (at inference the node passes model 1's mask).
- Features per case are cached (``FeatureCache``) so evaluation and retraining reuse them.
- ``fit_module``: impute -> standardise -> drop constant -> univariate pre-filter (top ``PREFILTER_K``,
  to keep SFS affordable on thousands of features) -> sequential forward selection (linear SVM,
  stratified 2-fold) -> SVM. The number of selected features and SVM kernel/C/gamma are chosen by
  grid search under stratified 2-fold CV on the training set; then sigmoid calibration
  (``CalibratedClassifierCV``, 3-fold, ``ensemble=False``) and a threshold maximising Youden's J on
  the out-of-fold calibrated probabilities of the training set only.
- ``save_model`` writes one ``Pipeline`` (joblib) and ``metadata.json`` (``ModelMetadata``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from .selection import Prefilter, domain_of

log = logging.getLogger(__name__)

PREFILTER_K = 20
N_FEATURES_GRID = (3, 5, 8)
CALIBRATION_FOLDS = 3
CV_MIN_PER_CLASS = 4  # the nested stratified 2-fold CV (grid search around SFS) needs 2 per class per inner fold
SVM_GRID = [
    {"svm__kernel": ["linear"], "svm__C": [0.01, 0.1, 1.0]},
    {"svm__kernel": ["rbf"], "svm__C": [0.1, 1.0, 10.0], "svm__gamma": ["scale", 0.01, 0.1]},
]
MODULES: dict[str, tuple[str, ...]] = {   # the seed's Table 2 rows
    "Radiomics": ("radiomics",),
    "ResNet50": ("resnet50",),
    "Inception_v3": ("inception_v3",),
    "Radiomics+Inception_v3": ("radiomics", "inception_v3"),
    "Radiomics+ResNet50": ("radiomics", "resnet50"),
}
CNN_SIZES = {"resnet50": 224, "inception_v3": 299}
HEMATOMA_LABEL = 1  # synthetic masks: 1 = intracerebral hematoma (what model 1 segments), 2 = intraventricular blood


# --- cohort -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CohortCase:
    case_id: str
    baseline_dir: Path
    mask_path: Path
    label: int
    markers: dict = field(default_factory=dict)


def read_cohort(cohort_dir: Path | str) -> list[CohortCase]:
    cohort_dir = Path(cohort_dir)
    manifest = cohort_dir / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{cohort_dir} is not a cohort: manifest.csv missing")
    df = pd.read_csv(manifest)
    need = {"case_id", "baseline_dir", "baseline_mask", "expansion"}
    missing = need - set(df.columns)
    if missing:
        raise ValueError(f"{manifest}: columns missing: {sorted(missing)}")
    marker_cols = [c for c in df.columns if c.startswith("marker_")]
    return [CohortCase(str(r.case_id), cohort_dir / str(r.baseline_dir), cohort_dir / str(r.baseline_mask),
                       int(r.expansion), {c: int(getattr(r, c)) for c in marker_cols})
            for r in df.itertuples(index=False)]


def safe_key(case_id: str) -> str:
    """A file-name-safe key for a case id (never a path built from raw ids)."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", case_id):
        return case_id
    return "h" + hashlib.sha256(case_id.encode()).hexdigest()[:20]


def load_case(case: CohortCase):
    """Baseline volume (via the node's own loader) and the ground-truth hematoma mask (label 1) on its grid."""
    import SimpleITK as sitk

    from pipeline.volume import load_series

    volume = load_series(case.baseline_dir).volume
    mask = sitk.ReadImage(str(case.mask_path))
    on_grid = sitk.Resample(mask, volume.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return volume, (sitk.GetArrayFromImage(on_grid) == HEMATOMA_LABEL).astype(np.uint8)


def split_cohort(cases: list[CohortCase], seed: int = 0, test_pos: int = 24, test_neg: int = 76,
                 test_fraction: float | None = None):
    """The seed's test set (24 expanders / 76 not) when the cohort allows, else 25 % stratified;
    ``test_fraction``: that share of each class instead (a large cohort judged per domain needs more
    than 100 test cases)."""
    rng = np.random.default_rng(seed)
    pos = [c for c in cases if c.label == 1]
    neg = [c for c in cases if c.label == 0]
    if test_fraction is not None:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
        test_pos, test_neg = max(1, round(test_fraction * len(pos))), max(1, round(test_fraction * len(neg)))
    elif len(pos) < 2 * test_pos or len(neg) < 2 * test_neg:
        test_pos, test_neg = max(1, len(pos) // 4), max(1, len(neg) // 4)
    test_ids = {c.case_id for c in rng.permutation(np.array(pos, dtype=object))[:test_pos]}
    test_ids |= {c.case_id for c in rng.permutation(np.array(neg, dtype=object))[:test_neg]}
    return [c for c in cases if c.case_id not in test_ids], [c for c in cases if c.case_id in test_ids]


def cases_fingerprint(cases: list[CohortCase]) -> str:
    """sha256 over the training cases' ids, labels and mask bytes: which data a model saw."""
    h = hashlib.sha256()
    for c in sorted(cases, key=lambda c: c.case_id):
        h.update(f"{c.case_id}:{c.label};".encode())
        if c.mask_path is not None and Path(c.mask_path).is_file():
            h.update(hashlib.sha256(Path(c.mask_path).read_bytes()).digest())
    return h.hexdigest()


# --- feature cache ----------------------------------------------------------------------------------

def cut_tag(geometry=None) -> str:
    """The cache-name suffix of one way of cutting the key slices (``pipeline.features.cnn.SliceGeometry``;
    None: v1, no suffix): features cut another way are other features."""
    return "" if geometry is None else f"-{geometry.tag}"


def slices_name(geometry=None) -> str:
    """The cached key slices of one way of cutting them."""
    return f"slices{cut_tag(geometry)}.npz"


class FeatureCache:
    """Per-case features on disk: ``<root>/<case key>/{radiomics-v1.json, meta.json, slices.npz, <cnn>.npy}``
    (v2 recipes add ``radiomics-v2.json`` and ``slices-<geometry>.npz`` beside them)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def dir(self, case_id: str) -> Path:
        d = self.root / safe_key(case_id)
        d.mkdir(exist_ok=True)
        return d

    def has(self, case_id: str, *names: str) -> bool:
        d = self.root / safe_key(case_id)
        return all((d / n).is_file() for n in names)

    def has_base(self, case_id: str, radiomics_version: str, geometry=None) -> bool:
        return self.has(case_id, f"{radiomics_version}.json", "meta.json", slices_name(geometry))

    def write_json(self, case_id: str, name: str, data: dict) -> None:
        path = self.dir(case_id) / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    def read_json(self, case_id: str, name: str) -> dict:
        return json.loads((self.root / safe_key(case_id) / name).read_text())

    def slices(self, case_id: str, size: int, geometry=None) -> np.ndarray:
        with np.load(self.root / safe_key(case_id) / slices_name(geometry)) as z:
            return z[f"s{size}"]


def _key_slices(volume, mask, sizes, geometry) -> dict[str, np.ndarray]:
    from pipeline.features import cnn

    return {f"s{s}": cnn.slice_images(volume.hu, mask, s, volume.spacing, geometry)[..., :1] for s in sizes}


def extract_base(cases: list[CohortCase], cache: FeatureCache, radiomics_params: Path | None = None,
                 sizes=tuple(CNN_SIZES.values()), progress=None, geometry=None, antialias: bool = False) -> None:
    """Radiomics, hematoma volume and the windowed CNN key slices (cut by ``geometry``; None: v1) of every
    case (cached; a case whose radiomics are cached only gets the slices it lacks)."""
    from pipeline.features.radiomics import DEFAULT_PARAMS, RadiomicsExtractor

    extractor = RadiomicsExtractor(radiomics_params or DEFAULT_PARAMS, antialias=antialias)
    todo = [c for c in cases if not cache.has_base(c.case_id, extractor.version, geometry)]
    cached = {c.case_id for c in todo if cache.has(c.case_id, f"{extractor.version}.json")}  # slices missing only
    if len(cached) < len(todo):
        extractor.warm_up()
    for i, case in enumerate(todo):
        t0 = time.time()
        volume, mask = load_case(case)
        if not mask.any():
            log.warning("case %s: empty mask on the loaded grid; skipped", safe_key(case.case_id))
            continue
        feats = None if case.case_id in cached else extractor.extract_volume(volume, mask)
        np.savez_compressed(cache.dir(case.case_id) / slices_name(geometry), **_key_slices(volume, mask, sizes, geometry))
        cache.write_json(case.case_id, "meta.json", {"volume_ml": float(mask.sum() * volume.voxel_volume_ml),
                                                     "shape": list(volume.shape), "spacing": list(volume.spacing)})
        if feats is not None:
            cache.write_json(case.case_id, f"{extractor.version}.json", feats)  # last: marks the case complete
        if progress:
            progress(i + 1, len(todo), time.time() - t0)


def extract_slices(cases: list[CohortCase], cache: FeatureCache, sizes=tuple(CNN_SIZES.values()),
                   geometry=None) -> None:
    """Only the windowed CNN key slices (for backbone warm-up cohorts); cached."""
    for case in cases:
        if cache.has(case.case_id, slices_name(geometry)):
            continue
        volume, mask = load_case(case)
        if not mask.any():
            continue
        np.savez_compressed(cache.dir(case.case_id) / slices_name(geometry), **_key_slices(volume, mask, sizes, geometry))


def cnn_table(cases: list[CohortCase], cache: FeatureCache, name: str, weights, tag: str,
              input_size: int | None = None, batch: int = 8, geometry=None) -> pd.DataFrame:
    """CNN features of the cached key slices (cut by ``geometry``), cached per weights ``tag``."""
    from pipeline.features.cnn import CnnFeatureExtractor

    ext = None
    rows = []
    for case in cases:
        path = cache.dir(case.case_id) / f"{name}-{tag}{cut_tag(geometry)}.npy"
        if not path.is_file():
            ext = ext or CnnFeatureExtractor(name, weights, input_size, geometry)
            imgs = np.repeat(cache.slices(case.case_id, ext.input_size, geometry), 3, axis=-1)
            np.save(path, ext.embed(imgs).ravel())
        rows.append(np.load(path))
    dim = rows[0].size // 3
    names = [f"{name}_s{d:+d}_{i}" for d in (-3, 0, 3) for i in range(dim)]
    return pd.DataFrame(np.vstack(rows), index=[c.case_id for c in cases], columns=names)


def radiomics_table(cases: list[CohortCase], cache: FeatureCache, version: str = "radiomics-v1") -> pd.DataFrame:
    rows = [cache.read_json(c.case_id, f"{version}.json") for c in cases]
    return pd.DataFrame(rows, index=[c.case_id for c in cases])


def case_domains(cases: list[CohortCase], cache: FeatureCache) -> list[tuple[int, float]]:
    """Each case's (matrix, slice thickness in mm), as its cached features saw it."""
    return [domain_of(cache.read_json(c.case_id, "meta.json")) for c in cases]


def meta_table(cases: list[CohortCase], cache: FeatureCache) -> pd.DataFrame:
    df = pd.DataFrame([cache.read_json(c.case_id, "meta.json") for c in cases], index=[c.case_id for c in cases])
    markers = pd.DataFrame([c.markers for c in cases], index=df.index)
    return pd.concat([df[["volume_ml"]], markers], axis=1)


# --- the classifier ---------------------------------------------------------------------------------

def make_search(seed: int = 0, n_features_grid=N_FEATURES_GRID, prefilter_k: int = PREFILTER_K,
                memory: str | None = None, svm_grid=None):
    """Grid search (stratified 2-fold) over SFS size and SVM kernel/C/gamma."""
    from sklearn.feature_selection import SelectKBest, SequentialFeatureSelector, VarianceThreshold, f_classif
    from sklearn.impute import SimpleImputer
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    sfs = SequentialFeatureSelector(
        SVC(kernel="linear", C=0.1, class_weight="balanced"), n_features_to_select=n_features_grid[0],
        direction="forward", scoring="roc_auc", cv=StratifiedKFold(2, shuffle=True, random_state=seed))
    pipe = Pipeline([
        ("impute", SimpleImputer(strategy="median")),
        ("scale", StandardScaler()),
        ("variance", VarianceThreshold(1e-8)),
        ("prefilter", SelectKBest(f_classif, k=prefilter_k)),
        ("sfs", sfs),
        ("svm", SVC(class_weight="balanced")),
    ], memory=memory)
    grid = [{**g, "sfs__n_features_to_select": list(n_features_grid)} for g in (svm_grid or SVM_GRID)]
    return GridSearchCV(pipe, grid, scoring="roc_auc", cv=StratifiedKFold(2, shuffle=True, random_state=seed),
                        refit=False, n_jobs=1, error_score="raise")


@dataclass
class FittedModule:
    name: str
    pipeline: object              # the persisted sklearn Pipeline (calibrated)
    threshold: float
    best_params: dict
    cv_auc: float                 # grid search's mean stratified-2-fold AUC on the training set
    oof_probability: np.ndarray   # out-of-fold calibrated probabilities on the training set
    selected: list[str]
    fit_seconds: float
    prefilter: Prefilter = field(default_factory=Prefilter)

    def probability(self, X: pd.DataFrame) -> np.ndarray:
        """P(expansion) per row of a feature table holding (at least) the columns the model was fitted on."""
        return self.pipeline.predict_proba(X[list(self.pipeline.feature_names_in_)])[:, 1]


def _youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, p)
    j = tpr - fpr
    best = int(np.argmax(j[1:]) + 1) if len(j) > 1 else 0  # skip roc_curve's +inf threshold
    return float(min(max(thr[best], 0.0), 1.0))


def fit_module(name: str, X: pd.DataFrame, y: np.ndarray, seed: int = 0, n_features_grid=N_FEATURES_GRID,
               prefilter_k: int = PREFILTER_K, svm_grid=None, prefilter: Prefilter | None = None,
               domains=None) -> FittedModule:
    """The seed's protocol on one feature set; everything chosen on the training data only.

    ``prefilter`` (default: the protocol's F-test top ``prefilter_k``) decides which columns SFS is
    offered; ``domains`` (each case's matrix and slice thickness) is what a ``domain_stable`` one ranks by."""
    import tempfile

    from sklearn.base import clone
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import Pipeline

    t0 = time.time()
    y = np.asarray(y, dtype=int)
    prefilter = prefilter or Prefilter(k=prefilter_k)
    offered = prefilter.offer(X, y, domains)
    if offered is not None:
        X = X[offered]
    k = min(prefilter.k, X.shape[1])
    grid_n = tuple(n for n in n_features_grid if n < k) or (max(1, k - 1),)
    with tempfile.TemporaryDirectory(prefix="ich-sfs-") as cachedir:
        search = make_search(seed, grid_n, k, memory=cachedir, svm_grid=svm_grid)
        search.fit(X, y)
    best = clone(search.estimator).set_params(**search.best_params_)
    best.set_params(memory=None)
    folds = StratifiedKFold(max(2, min(CALIBRATION_FOLDS, int(np.bincount(y).min()))), shuffle=True,
                            random_state=seed + 1)
    calibrated = CalibratedClassifierCV(best, method="sigmoid", cv=folds, ensemble=False)
    pipeline = Pipeline([("model", calibrated)])
    pipeline.fit(X, y)
    # out-of-fold probabilities: the same folds' decision values through the fitted sigmoid
    from sklearn.model_selection import cross_val_predict

    decision = cross_val_predict(clone(best), X, y, cv=folds, method="decision_function")
    calibrator = calibrated.calibrated_classifiers_[0].calibrators[0]
    oof = np.clip(calibrator.predict(decision), 0.0, 1.0)
    fitted_inner = calibrated.calibrated_classifiers_[0].estimator
    names = np.asarray(X.columns)
    keep = fitted_inner.named_steps["variance"].get_support()
    keep_idx = np.flatnonzero(keep)[fitted_inner.named_steps["prefilter"].get_support()]
    selected = list(names[keep_idx[fitted_inner.named_steps["sfs"].get_support()]])
    return FittedModule(name, pipeline, _youden_threshold(y, oof), dict(search.best_params_),
                        float(search.best_score_), oof, selected, round(time.time() - t0, 1), prefilter)


def library_versions() -> dict:
    import platform

    import keras
    import radiomics
    import scipy
    import sklearn

    return {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "scikit-learn": sklearn.__version__, "pyradiomics": radiomics.__version__, "keras": keras.__version__}


def save_model(fitted: FittedModule, out_dir: Path, *, version: str, groups: tuple[str, ...],
               training_cases: list[CohortCase], cnn_weight_files: dict[str, Path], metrics: dict,
               radiomics_params: Path | None = None, parent_version: str | None = None,
               extra: dict | None = None) -> Path:
    """Write a classifier model directory that ``pipeline.classify.load_classifier`` reads."""
    import joblib

    from pipeline.classify import PIPELINE_FILE
    from pipeline.features.backbones import sha256_file as _sha256
    from pipeline.features.radiomics import DEFAULT_PARAMS
    from pipeline.models import ModelMetadata

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(fitted.pipeline, out_dir / PIPELINE_FILE, compress=3)
    params_name = None
    if "radiomics" in groups:
        src = Path(radiomics_params or DEFAULT_PARAMS)
        params_name = src.name
        shutil.copyfile(src, out_dir / params_name)
    cnn_weights = {}
    for name in groups:
        if name == "radiomics":
            continue
        src = Path(cnn_weight_files[name])
        dst = out_dir / f"{name}-warmup.npz"
        shutil.copyfile(src, dst)
        cnn_weights[name] = {"kind": "warmup", "file": dst.name, "sha256": _sha256(dst)}
    meta = ModelMetadata(
        kind="classifier", version=str(version), name=f"ich-expansion-{fitted.name.lower()}",
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        training_data={"source": "synthetic", "fingerprint": cases_fingerprint(training_cases),
                       "cases": len(training_cases), "positives": int(sum(c.label for c in training_cases)),
                       "masks": "ground-truth baseline masks"},
        metrics=metrics, code_version=_code_version(), parent_version=parent_version,
        extra={"module": fitted.name, "groups": list(groups), "threshold": fitted.threshold,
               "threshold_rule": "max Youden J on out-of-fold calibrated training probabilities",
               "joblib_sha256": _sha256(out_dir / PIPELINE_FILE), "versions": library_versions(),
               "radiomics_params": params_name, "cnn_weights": cnn_weights,
               "cnn_input_sizes": {g: CNN_SIZES[g] for g in groups if g in CNN_SIZES},
               "best_params": fitted.best_params, "cv_auc_train": fitted.cv_auc,
               "selected_features": fitted.selected, "n_features_in": len(fitted.pipeline.feature_names_in_),
               "prefilter": fitted.prefilter.spec(),
               **(extra or {})})
    meta.write(out_dir)
    return out_dir


def _code_version() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
