"""The seed's Table 2, reproduced on one split, plus what it lacked.

``evaluate(cohort)`` trains the five feature modules (Radiomics, ResNet50, Inception_v3,
Radiomics+Inception_v3, Radiomics+ResNet50) and two baselines (hematoma volume alone; a BAT-like
count of the NCCT markers the manifest records) on the training split and tests them on the same
held-out split (24 expanders / 76 not when the cohort allows). Per module: AUC, precision, recall,
average precision, confusion matrix with 95 % stratified-bootstrap CIs, DeLong tests between modules,
calibration (Brier, slope, intercept, reliability) and a decision curve -> JSON, PNG and HTML.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.features.recipe import Recipe, recipe
from training import classifier as C
from training import stats
from training.selection import Prefilter

log = logging.getLogger(__name__)

BASELINES = ("Volume", "Marker score")


@dataclass
class Prepared:
    cohort: Path
    train: list
    test: list
    tables: dict            # group -> DataFrame indexed by case_id
    meta: pd.DataFrame      # volume_ml + marker_* columns
    warmup_files: dict      # backbone -> warm-up npz path, or pretrained backbone directory
    seed: int
    recipe: Recipe          # how the features were cut (pipeline.features.recipe)
    domains: dict = field(default_factory=dict)  # case_id -> (matrix, slice thickness mm)


def _tag(warm_cases, seed: int, steps: int) -> str:
    h = hashlib.sha256(json.dumps([sorted(c.case_id for c in warm_cases), seed, steps]).encode())
    return h.hexdigest()[:12]


def prepare(cohort: Path | str, cache_dir: Path | str | None = None, *, seed: int = 0, warmup_steps: int = 0,
            warmup_cohort: Path | str | None = None, backbones=("resnet50", "inception_v3"),
            cnn_sizes: dict | None = None, progress=None, features: str = "v1",
            pretrained: Path | str | None = None, test_fraction: float | None = None) -> Prepared:
    """Split, extract (cached) and warm up the CNN backbones; ``features`` names the recipe (v1, v2).

    The backbones warm up on ``warmup_cohort`` (a separate synthetic cohort, so the CNN features do
    not depend on the split) or, without one, on the training split's cases only. ``pretrained``: a
    directory of backbones from ``training.backbone_pretrain`` (``<dir>/<backbone>/``) used as they
    are instead (no warm-up).
    """
    from pipeline.features.backbones import PretrainedWeights, WarmupWeights, read_pretrained_meta
    from training.backbone_warmup import warm_up

    cohort = Path(cohort)
    cache = C.FeatureCache(cache_dir or cohort / "features-cache")
    cases = C.read_cohort(cohort)
    sizes = {**C.CNN_SIZES, **(cnn_sizes or {})}
    used = tuple(sorted(set(sizes[b] for b in backbones)))
    rcp = recipe(features)
    geo = rcp.slice_geometry
    C.extract_base(cases, cache, rcp.radiomics_params, sizes=used, progress=progress, geometry=geo,
                   antialias=rcp.antialias)
    cases = [c for c in cases if cache.has_base(c.case_id, rcp.radiomics_version, geo)]
    train, test = C.split_cohort(cases, seed, test_fraction=test_fraction)
    if pretrained is not None:
        warm_cache, warm_cases = cache, []          # pretrained backbones: nothing to warm up
    elif warmup_cohort is not None:
        warm_cache = C.FeatureCache(cache.root / "warmup-cohort")
        warm_cases = C.read_cohort(warmup_cohort)
        C.extract_slices(warm_cases, warm_cache, used, geo)
        warm_cases = [c for c in warm_cases if warm_cache.has(c.case_id, C.slices_name(geo))]
    else:
        warm_cache, warm_cases = cache, train
    tables = {"radiomics": C.radiomics_table(cases, cache, rcp.radiomics_version)}
    warm = {}
    for name in backbones:
        if pretrained is not None:
            path = Path(pretrained) / name
            meta = read_pretrained_meta(path)
            if int(meta.get("input_size", sizes[name])) != sizes[name]:
                raise ValueError(f"{path} was pretrained at {meta['input_size']} px, the features use {sizes[name]}")
            sha = meta["sha256_all_weights"]
            warm[name] = path
            tables[name] = C.cnn_table(cases, cache, name, PretrainedWeights(path, sha),
                                       f"pre-{sha[:12]}-{sizes[name]}" + C.cut_tag(geo), sizes[name], geometry=geo)
            continue
        tag = _tag(warm_cases, seed, warmup_steps) + f"-{sizes[name]}" + C.cut_tag(geo)
        path = cache.root / "backbones" / f"{name}-{tag}.npz"
        if not path.is_file():
            imgs = np.concatenate([warm_cache.slices(c.case_id, sizes[name], geo) for c in warm_cases])
            labels = np.repeat([c.label for c in warm_cases], imgs.shape[0] // len(warm_cases))
            t0 = time.time()
            warm_up(name, np.repeat(imgs, 3, axis=-1), labels, path, seed=20240101 + seed,
                    steps=warmup_steps, input_size=sizes[name])
            log.info("warm-up %s: %.0f s", name, time.time() - t0)
        warm[name] = path
        tables[name] = C.cnn_table(cases, cache, name, WarmupWeights(path), tag, sizes[name], geometry=geo)
    domains = dict(zip((c.case_id for c in cases), C.case_domains(cases, cache)))
    return Prepared(cohort, train, test, tables, C.meta_table(cases, cache), warm, seed, rcp, domains)


def module_matrix(prep: Prepared, groups, cases) -> pd.DataFrame:
    ids = [c.case_id for c in cases]
    return pd.concat([prep.tables[g].loc[ids] for g in groups], axis=1)


def _fit_baseline(name: str, prep: Prepared):
    """Logistic regression on log volume, or on the marker count; threshold by OOF Youden J."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def x_of(cases):
        m = prep.meta.loc[[c.case_id for c in cases]]
        if name == "Volume":
            return np.log1p(m[["volume_ml"]].to_numpy(float))
        cols = [c for c in m.columns if c.startswith("marker_")]
        return m[cols].to_numpy(float).sum(axis=1, keepdims=True)

    y = np.array([c.label for c in prep.train])
    model = make_pipeline(StandardScaler(), LogisticRegression())
    oof = cross_val_predict(model, x_of(prep.train), y, cv=StratifiedKFold(5, shuffle=True, random_state=prep.seed),
                            method="predict_proba")[:, 1]
    model.fit(x_of(prep.train), y)
    return model.predict_proba(x_of(prep.test))[:, 1], C._youden_threshold(y, oof)


def _metrics(y: np.ndarray, p: np.ndarray, threshold: float, seed: int, n_boot: int) -> dict:
    from sklearn.metrics import average_precision_score, precision_score, recall_score, roc_auc_score

    pred = (p >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())

    def prec(yy, pp):
        return precision_score(yy, (pp >= threshold).astype(int), zero_division=0)

    def rec(yy, pp):
        return recall_score(yy, (pp >= threshold).astype(int), zero_division=0)

    def spec(yy, pp):
        neg = yy == 0
        return float(((pp < threshold) & neg).sum() / max(neg.sum(), 1))

    def brier(yy, pp):
        return float(np.mean((pp - yy) ** 2))

    fns = {"auc": roc_auc_score, "average_precision": average_precision_score, "precision": prec,
           "recall": rec, "specificity": spec, "brier": brier}
    out = {"threshold": threshold, "confusion": {"TP": tp, "FP": fp, "FN": fn, "TN": tn}}
    for key, fn_ in fns.items():
        lo, hi = stats.bootstrap_ci(fn_, y, p, n_boot=n_boot, seed=seed)
        out[key] = {"value": float(fn_(y, p)), "ci95": [lo, hi]}
    auc, lo, hi = stats.delong_auc_ci(y, p)
    out["auc"]["ci95_delong"] = [lo, hi]
    out["calibration"] = stats.calibration(y, p)
    out["reliability"] = stats.reliability(y, p)
    out["decision_curve"] = stats.decision_curve(y, p)
    return out


def evaluate(prep: Prepared, out_dir: Path | str, *, n_boot: int = 2000, modules=None,
             n_features_grid=C.N_FEATURES_GRID, prefilter_k: int = C.PREFILTER_K, svm_grid=None,
             jobs: int = 2, prefilter: Prefilter | None = None) -> dict:
    """Train every module on the training split, test on the held-out split, write the report."""
    from training import report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    y_train = np.array([c.label for c in prep.train])
    y_test = np.array([c.label for c in prep.test])
    probs, results, fitted = {}, {}, {}
    from joblib import Parallel, delayed

    todo = {n: g for n, g in (modules or C.MODULES).items() if all(x in prep.tables for x in g)}
    fits = Parallel(n_jobs=min(jobs, len(todo)) or 1)(  # one module per process: they are independent
        delayed(C.fit_module)(name, module_matrix(prep, groups, prep.train), y_train, seed=prep.seed,
                              n_features_grid=n_features_grid, prefilter_k=prefilter_k, svm_grid=svm_grid,
                              prefilter=prefilter, domains=[prep.domains[c.case_id] for c in prep.train])
        for name, groups in todo.items())
    for (name, groups), fm in zip(todo.items(), fits):
        p = fm.probability(module_matrix(prep, groups, prep.test))
        probs[name] = p
        fitted[name] = fm
        results[name] = {**_metrics(y_test, p, fm.threshold, prep.seed, n_boot), "kind": "fusion",
                         "groups": list(groups), "cv_auc_train": fm.cv_auc, "best_params": fm.best_params,
                         "selected_features": fm.selected, "prefilter": fm.prefilter.name,
                         "fit_seconds": fm.fit_seconds}
        log.info("%s: test AUC %.3f (train CV %.3f)", name, results[name]["auc"]["value"], fm.cv_auc)
    has_markers = any(c.startswith("marker_") for c in prep.meta.columns)
    for name in BASELINES:
        if name == "Marker score" and not has_markers:
            continue
        p, thr = _fit_baseline(name, prep)
        probs[name] = p
        results[name] = {**_metrics(y_test, p, thr, prep.seed, n_boot), "kind": "baseline"}
    names = list(probs)
    delong = {f"{a} vs {b}": stats.delong_test(y_test, probs[a], probs[b])
              for i, a in enumerate(names) for b in names[i + 1:]}
    shipped = max((n for n in fitted), key=lambda n: fitted[n].cv_auc) if fitted else None
    summary = {
        "cohort": str(prep.cohort), "seed": prep.seed,
        "train": {"cases": len(prep.train), "positives": int(y_train.sum())},
        "test": {"cases": len(prep.test), "positives": int(y_test.sum())},
        "modules": results, "delong": delong, "selected_by_train_cv": shipped,
        "note": "Synthetic cohort: these numbers describe the synthetic generator, not clinical accuracy.",
    }
    (out_dir / "evaluation.json").write_text(json.dumps(summary, indent=2, sort_keys=False, default=float))
    pd.DataFrame({"case_id": [c.case_id for c in prep.test], "label": y_test, **probs}).to_csv(
        out_dir / "test_predictions.csv", index=False)
    report.write_report(summary, probs, y_test, out_dir)
    summary["_fitted"] = fitted
    return summary


def train_and_ship(cohort: Path | str, out: Path | str, *, cache_dir: Path | str | None = None, seed: int = 0,
                   warmup_steps: int = 0, warmup_cohort: Path | str | None = None,
                   version: str | None = None, module: str | None = None,
                   n_boot: int = 2000, progress=None, features: str = "v1",
                   test_fraction: float | None = None, prefilter: Prefilter | None = None) -> tuple[Path, dict]:
    """The one command behind a shipped classifier: evaluate all modules, save the chosen one.

    The shipped module is the one with the best *training* cross-validation AUC (or ``module``); its
    evaluation report goes to ``out/report``.
    """
    out = Path(out)
    if (out / "metadata.json").exists():
        raise FileExistsError(f"{out} already holds a model; choose a new version directory")
    prep = prepare(cohort, cache_dir, seed=seed, warmup_steps=warmup_steps, warmup_cohort=warmup_cohort,
                   progress=progress, features=features, test_fraction=test_fraction)
    summary = evaluate(prep, out / "report", n_boot=n_boot, prefilter=prefilter)
    fitted = summary.pop("_fitted")
    name = module or summary["selected_by_train_cv"]
    if name not in fitted:
        raise ValueError(f"module {name!r} was not trained; trained: {sorted(fitted)}")
    m = summary["modules"][name]
    metrics = {"test_auc": m["auc"]["value"], "test_auc_ci95": m["auc"]["ci95"],
               "test_average_precision": m["average_precision"]["value"], "test_brier": m["calibration"]["brier"],
               "test_precision": m["precision"]["value"], "test_recall": m["recall"]["value"],
               "cv_auc_train": m["cv_auc_train"], "test_cases": summary["test"]["cases"],
               "data": "synthetic; not a clinical accuracy claim"}
    C.save_model(fitted[name], out, version=version or (out.name if out.name.isdigit() else "1"),
                 groups=C.MODULES[name], training_cases=prep.train, cnn_weight_files=prep.warmup_files,
                 metrics=metrics, radiomics_params=prep.recipe.radiomics_params,
                 extra={"split_seed": seed, "test_fraction": test_fraction, "warmup_steps": warmup_steps,
                        "feature_recipe": prep.recipe.name, "radiomics_antialias": prep.recipe.antialias,
                        "cnn_slice_geometry": (prep.recipe.slice_geometry.spec()
                                               if prep.recipe.slice_geometry else None),
                        "warmup_cohort": str(warmup_cohort) if warmup_cohort else "training split",
                        "report": "report/report.html"})
    return out, summary
