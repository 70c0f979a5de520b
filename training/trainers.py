"""Adapters from ``training.retrain.Trainer`` to the two model families' own training code.

Each adapter repeats the protocol the served (default) model was made with, so a retrain changes the
data, not the method: model 1 through ``training.segmenter`` / ``training.evaluate_segmenter``, model 2
through the building blocks of ``training.classifier`` and the node's own runtime
(``pipeline.classify.load_classifier``) for judging.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .registry import atomic_write_text
from .retrain import RetrainRefused, label_of, read_manifest

def _served_protocol(served_dir: Path | None) -> dict:
    """The training configuration the served model was made with (``metrics.json`` → ``train_config``)."""
    if served_dir is None or not (Path(served_dir) / "metrics.json").is_file():
        return {}
    try:
        return dict(json.loads((Path(served_dir) / "metrics.json").read_text()).get("train_config") or {})
    except (json.JSONDecodeError, AttributeError):
        return {}


@dataclass
class SegmenterTrainer:
    """Model 1 through ``training.segmenter`` / ``training.evaluate_segmenter`` (the default's protocol).

    ``overrides`` change the protocol (tests use tiny ones); otherwise the served model's own
    ``train_config`` is reused, so a retrain repeats how the default was made.
    """

    overrides: dict = field(default_factory=dict)
    cache_dir: Path | None = None
    served_dir: Path | None = None
    kind: str = "segmenter"

    def fit(self, train_dir: Path, out_dir: Path, *, parent_version: str | None) -> Path:
        from pipeline.segment.preprocess import PreprocessConfig
        from training.segmenter import TrainConfig, train_segmenter

        known = set(TrainConfig.__dataclass_fields__)
        cfg = {k: v for k, v in {**_served_protocol(self.served_dir), **self.overrides}.items() if k in known}
        if not isinstance(cfg.get("preprocess"), PreprocessConfig):
            cfg.pop("preprocess", None)
            if self.served_dir is not None and (Path(self.served_dir) / "preprocess.json").is_file():
                cfg["preprocess"] = PreprocessConfig.read(self.served_dir)  # same grid and window as served
        train_segmenter(train_dir, out_dir, TrainConfig(**cfg), parent_version=parent_version,
                        cache_dir=self.cache_dir, progress=None)
        return Path(out_dir)

    def evaluate(self, model_dir: Path | None, val_dir: Path, out_dir: Path) -> dict:
        from training.evaluate_segmenter import evaluate_segmenter

        s = evaluate_segmenter(val_dir, model_dir, out_dir, baseline=False, progress=None)
        m = s["models"]["cnn"]
        return {"median_dice": m["dice"]["median"], "mean_dice": m["dice"]["mean"],
                "volume_mae_ml": m["volume"]["mean_abs_error_ml"], "volume_bias_ml": m["volume"]["bias_ml"],
                "cases": s["cases"]}



@dataclass
class ClassifierTrainer:
    """Model 2 through ``training.classifier`` (the seed's protocol), judged on the validation cases.

    Evaluation loads a model version exactly as the node does (``pipeline.classify.load_classifier``),
    computes its features on each validation baseline with the cohort's mask, and scores AUC and Brier.
    Features are cached per (feature configuration, case, mask), so the candidate and the served version
    share the work when they use the same features.
    """

    overrides: dict = field(default_factory=dict)
    cache_dir: Path | None = None
    served_dir: Path | None = None
    kind: str = "classifier"

    def protocol(self) -> dict:
        """The served model's module, feature groups, radiomics parameters and (frozen) backbone weights.

        Retraining refits the seed's selection + SVM + calibration on new cases; the warm-up backbones
        stay those of the served version (small site data should not retrain a CNN).
        """
        from pipeline.models import ModelMetadata
        from training.selection import Prefilter

        proto = {"module": "Radiomics", "groups": ("radiomics",), "radiomics_params": None, "cnn_weights": {},
                 "cnn_input_sizes": {}, "cnn_slice_geometry": None, "radiomics_antialias": False, "seed": 0,
                 "prefilter": Prefilter()}
        if self.served_dir is not None:
            extra = ModelMetadata.read(self.served_dir).extra or {}
            proto.update(module=extra.get("module", proto["module"]), groups=tuple(extra.get("groups", proto["groups"])),
                         cnn_input_sizes=extra.get("cnn_input_sizes") or {},
                         cnn_slice_geometry=extra.get("cnn_slice_geometry"),  # the same cut as the served model
                         radiomics_antialias=bool(extra.get("radiomics_antialias", False)),
                         prefilter=Prefilter.from_spec(extra.get("prefilter")))  # what SFS was offered
            if extra.get("radiomics_params"):
                proto["radiomics_params"] = Path(self.served_dir) / extra["radiomics_params"]
            for name, spec in (extra.get("cnn_weights") or {}).items():
                if spec.get("kind") != "warmup":
                    raise RetrainRefused(f"served classifier uses {spec.get('kind')} weights for {name}; "
                                         f"retraining reuses warm-up backbones only")
                proto["cnn_weights"][name] = (Path(self.served_dir) / spec["file"], spec["sha256"])
        proto.update(self.overrides)
        return proto

    def _table(self, cases, cache, proto):
        import pandas as pd

        from pipeline.features import backbones, cnn
        from training import classifier as clf

        from pipeline.features.radiomics import DEFAULT_PARAMS

        sizes = tuple(proto["cnn_input_sizes"].get(g) or clf.CNN_SIZES[g] for g in proto["groups"] if g != "radiomics")
        geometry = cnn.SliceGeometry.from_spec(proto["cnn_slice_geometry"])
        clf.extract_base(cases, cache, proto["radiomics_params"], sizes=sizes, geometry=geometry,
                         antialias=proto["radiomics_antialias"])
        version = Path(proto["radiomics_params"] or DEFAULT_PARAMS).stem
        cases = [c for c in cases if cache.has(c.case_id, f"{version}.json")]
        parts = []
        for group in proto["groups"]:
            if group == "radiomics":
                parts.append(clf.radiomics_table(cases, cache, version))
            else:
                path, sha = proto["cnn_weights"][group]
                parts.append(clf.cnn_table(cases, cache, group, backbones.WarmupWeights(path), sha[:12],
                                           proto["cnn_input_sizes"].get(group), geometry=geometry))
        return cases, pd.concat(parts, axis=1)

    def _cache(self, train_dir: Path):
        from training import classifier as clf

        rows = read_manifest(train_dir)
        source = rows[0].get("source_cohort", str(train_dir)) if rows else str(train_dir)
        key = hashlib.sha256(source.encode()).hexdigest()[:16]
        root = Path(self.cache_dir) if self.cache_dir else Path(train_dir) / ".cache"
        return clf.FeatureCache(root / key)

    def fit(self, train_dir: Path, out_dir: Path, *, parent_version: str | None) -> Path:
        import numpy as np

        from training import classifier as clf

        proto = self.protocol()
        cache = self._cache(train_dir)
        cases, X = self._table(clf.read_cohort(train_dir), cache, proto)
        y = np.array([c.label for c in cases])
        grid = {"n_features_grid": tuple(proto["n_features_grid"])} if proto.get("n_features_grid") else {}
        fitted = clf.fit_module(proto["module"], X, y, seed=proto["seed"], prefilter=proto["prefilter"],
                                domains=clf.case_domains(cases, cache), **grid)
        clf.save_model(fitted, out_dir, version="0", groups=tuple(proto["groups"]), training_cases=cases,
                       cnn_weight_files={n: p for n, (p, _s) in proto["cnn_weights"].items()},
                       metrics={"cv_auc_train": fitted.cv_auc}, radiomics_params=proto["radiomics_params"],
                       parent_version=parent_version,
                       extra={"protocol": "retrain (training.retrain)", "cnn_slice_geometry": proto["cnn_slice_geometry"],
                              "radiomics_antialias": proto["radiomics_antialias"]})
        return Path(out_dir)

    def evaluate(self, model_dir: Path | None, val_dir: Path, out_dir: Path) -> dict:
        import numpy as np
        from sklearn.metrics import brier_score_loss, roc_auc_score

        from pipeline.classify import load_classifier

        if model_dir is None:
            return {}
        model = load_classifier(model_dir)
        rows = read_manifest(val_dir)
        y, p, skipped = [], [], []
        for row in rows:
            try:
                feats = self._features_inference_path(model, row)
            except Exception as exc:  # noqa: BLE001 - a case the pipeline cannot read is reported
                skipped.append(f"{row['case_id']}: {exc}")
                continue
            y.append(label_of(row))
            p.append(model.predict_features(feats))
        from training.stats import calibration, delong_auc_ci, ece

        y_arr, p_arr = np.asarray(y), np.asarray(p)
        both = 0 < y_arr.sum() < len(y)
        out = {"cases": len(y), "expanders": int(y_arr.sum()), "skipped": skipped,
               "brier": float(brier_score_loss(y_arr, p_arr)) if len(y) else None,
               "auc": float(roc_auc_score(y_arr, p_arr)) if both else None}
        if both:  # for the report: how uncertain the gate's point estimates are on this validation set
            out["auc_ci95"] = list(delong_auc_ci(y_arr, p_arr)[1:])
            cal = calibration(y_arr, p_arr)
            out["calibration_slope"], out["calibration_intercept"] = cal["slope"], cal["intercept"]
        if len(y):
            out["ece_10"] = ece(y_arr, p_arr)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(out_dir) / "predictions.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["case_id", "expansion", "probability"])
            kept = [r for r in rows if not any(s.startswith(r["case_id"] + ":") for s in skipped)]
            w.writerows([r["case_id"], yy, f"{pp:.6f}"] for r, yy, pp in zip(kept, y, p))
        atomic_write_text(Path(out_dir) / "metrics.json", json.dumps(out, indent=2) + "\n")
        return out

    def _features_inference_path(self, model, row: dict) -> dict:
        from training import classifier as clf

        extra = model.metadata.extra or {}
        params = model.model_dir / extra["radiomics_params"] if extra.get("radiomics_params") else None
        params_sha = hashlib.sha256(params.read_bytes()).hexdigest() if params and params.is_file() else None
        config_key = json.dumps({"groups": extra.get("groups"), "params": params_sha,
                                 "weights": extra.get("cnn_weights"), "slices": extra.get("cnn_slice_geometry")},
                                sort_keys=True, default=str)
        mask_path = Path(row["baseline_mask"])
        st = mask_path.stat()
        key = hashlib.sha256(f"{config_key}|{row['baseline_dir']}|{mask_path}|{st.st_size}|{st.st_mtime_ns}"
                             .encode()).hexdigest()[:24]
        cache = Path(self.cache_dir) / "features" / f"{key}.json" if self.cache_dir else None
        if cache is not None and cache.is_file():
            return json.loads(cache.read_text())
        volume, mask = clf.load_case(clf.CohortCase(row["case_id"], Path(row["baseline_dir"]), mask_path, 0))
        feats = dict(model.features.extract(volume, mask))
        if cache is not None:
            atomic_write_text(cache, json.dumps(feats))
        return feats
