"""Model 2 runtime: hematoma-expansion probability from the baseline CT and its hematoma mask.

A classifier model directory (``models/classifier/<version>/``) holds:

- ``metadata.json``: ``pipeline.models.ModelMetadata`` (kind "classifier"); ``extra`` names the
  feature groups, the decision threshold, the weights files and the sha256 of ``classifier.joblib``;
- ``classifier.joblib``: one fitted scikit-learn ``Pipeline`` (impute, standardise, select, SVM,
  sigmoid calibration) trained by ``training.classifier``;
- the radiomics parameter YAML and, for CNN groups, the backbone weights (warm-up BatchNorm files,
  or the sha256 of site-provided ImageNet files looked up in ``imagenet_dir``), and where the CNN's key
  slices are cut (``extra.cnn_slice_geometry``: a fixed field of view and slice offset in mm; absent in
  v1 models, which cut ±3 native slices of the whole matrix).

``load_classifier(dir)`` verifies and loads everything once; ``predict(volume, mask)`` is then a pure
function of its inputs.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from pipeline.features.cnn import SliceGeometry
from pipeline.features.backbones import sha256_file as _sha256
from pipeline.features.used import used_inputs
from pipeline.models import ModelMetadata
from pipeline.result import Risk

GROUPS = ("radiomics", "resnet50", "inception_v3")
PIPELINE_FILE = "classifier.joblib"


class ClassifierError(ValueError):
    """A classifier model directory that cannot be used (corrupt, incompatible, incomplete)."""


@dataclass(frozen=True)
class Prediction:
    probability: float     # calibrated P(expansion)
    risk: Risk             # HIGH when probability >= threshold
    threshold: float
    model_version: str


def cnn_weights_from_spec(name: str, spec: dict, model_dir: Path, imagenet_dir: Path | None):
    """The weights source a model directory recorded for backbone ``name``."""
    from pipeline.features import backbones

    if spec["kind"] == "warmup":
        path = Path(model_dir) / spec["file"]
        if not path.is_file():
            raise ClassifierError(f"{model_dir}: warm-up weights {spec['file']} missing")
        if _sha256(path) != spec["sha256"]:
            raise ClassifierError(f"{path}: sha256 differs from metadata.json (corrupt or replaced)")
        return backbones.WarmupWeights(path)
    if spec["kind"] == "imagenet":
        if imagenet_dir is None:
            raise ClassifierError(f"classifier needs ImageNet weights for {name} ({spec['file']}) but no "
                                  "ImageNet weights directory is configured")
        return backbones.ImagenetWeights(Path(imagenet_dir) / spec["file"], spec["sha256"])
    raise ClassifierError(f"unknown weights kind {spec['kind']!r} for {name}")


class FeatureExtractor:
    """Computes the feature groups a classifier needs, with models loaded once."""

    def __init__(self, groups: list[str], radiomics_params: Path | None = None,
                 cnn_weights: dict | None = None, cnn_input_sizes: dict | None = None,
                 radiomics_workers: int | None = None, cnn_geometry: SliceGeometry | None = None,
                 radiomics_antialias: bool = False) -> None:
        unknown = set(groups) - set(GROUPS)
        if unknown:
            raise ClassifierError(f"unknown feature groups {sorted(unknown)}; known: {GROUPS}")
        self.groups = list(groups)
        self._radiomics = None
        self._cnn: dict = {}
        if "radiomics" in groups:
            from pipeline.features.radiomics import DEFAULT_PARAMS, RadiomicsExtractor

            self._radiomics = RadiomicsExtractor(radiomics_params or DEFAULT_PARAMS, workers=radiomics_workers,
                                                 antialias=radiomics_antialias)
        for name in groups:
            if name == "radiomics":
                continue
            from pipeline.features.cnn import CnnFeatureExtractor

            if not cnn_weights or name not in cnn_weights:
                raise ClassifierError(f"no weights configured for backbone {name}")
            self._cnn[name] = CnnFeatureExtractor(name, cnn_weights[name], (cnn_input_sizes or {}).get(name),
                                                  cnn_geometry)

    def radiomics(self, volume, mask: np.ndarray, only=None) -> "OrderedDict[str, float]":
        return self._radiomics.extract_volume(volume, mask, only=only)

    def cnn(self, name: str):
        return self._cnn[name]

    def extract(self, volume, mask: np.ndarray, only: frozenset[str] | None = None) -> "OrderedDict[str, float]":
        """Every feature of the groups, or (``only``) just those names: a group none of whose features
        is named is not computed at all, radiomics computes only the filters and classes named."""
        out: OrderedDict[str, float] = OrderedDict()
        cnn_names = {name: set(ex.feature_names) for name, ex in self._cnn.items()}
        for group in self.groups:
            if group == "radiomics":
                rest = None if only is None else only.difference(*cnn_names.values())
                if rest is None or rest:
                    out.update(self.radiomics(volume, mask, only=rest))
            elif only is None or not only.isdisjoint(cnn_names[group]):
                out.update(self._cnn[group].features(volume.hu, mask, volume.spacing))
        return out


class ExpansionClassifier:
    """A loaded model-2 version; ``predict(volume, mask)`` -> ``Prediction``."""

    def __init__(self, model_dir: Path, metadata: ModelMetadata, pipeline, features: FeatureExtractor,
                 threshold: float) -> None:
        self.model_dir = Path(model_dir)
        self.metadata = metadata
        self.version = metadata.version
        self.name = metadata.name
        self.pipeline = pipeline
        self.features = features
        self.threshold = float(threshold)
        self.feature_names = list(pipeline.feature_names_in_)

    @cached_property
    def used_features(self) -> frozenset[str] | None:
        """The inputs the fitted steps read (8 of 1,595 for v1); None = all (pipeline.features.used)."""
        return used_inputs(self.pipeline, self.feature_names)

    def predict_features(self, features: dict) -> float:
        """P(expansion) from a feature row; features the pipeline provably ignores may be absent."""
        import pandas as pd

        needed = self.feature_names if self.used_features is None else self.used_features
        missing = [n for n in needed if n not in features]
        if missing:
            raise ClassifierError(f"{len(missing)} features missing, e.g. {missing[:3]}")
        # NaN for an ignored column: its imputer fills it and a selector drops it (never reaches the SVM)
        row = pd.DataFrame([[features.get(n, np.nan) for n in self.feature_names]], columns=self.feature_names)
        return float(self.pipeline.predict_proba(row)[0, 1])

    def predict(self, volume, mask: np.ndarray) -> Prediction:
        mask = np.asarray(mask)
        if mask.shape != volume.hu.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the volume's {volume.hu.shape}")
        if not mask.any():
            raise ValueError("cannot predict expansion: the hematoma mask is empty")
        p = self.predict_features(self.features.extract(volume, mask, only=self.used_features))
        return Prediction(p, Risk.HIGH if p >= self.threshold else Risk.LOW, self.threshold, self.version)


def check_versions(recorded: dict) -> None:
    """Refuse a pipeline pickled by a different scikit-learn minor version (unpickling is not portable)."""
    import sklearn

    want = str(recorded.get("scikit-learn", ""))
    if want.split(".")[:2] != sklearn.__version__.split(".")[:2]:
        raise ClassifierError(f"classifier was trained with scikit-learn {want}, this is {sklearn.__version__}; "
                              "retrain it (ich-node train classifier) or install that version")


def load_classifier(model_dir: Path | str, imagenet_dir: Path | str | None = None,
                    radiomics_workers: int | None = None) -> ExpansionClassifier:
    """Verify and load a classifier model directory (do it once per process)."""
    import joblib

    model_dir = Path(model_dir)
    meta = ModelMetadata.read(model_dir)
    if meta.kind != "classifier":
        raise ClassifierError(f"{model_dir} holds a {meta.kind!r} model, not a classifier")
    extra = meta.extra or {}
    for key in ("groups", "threshold", "joblib_sha256", "versions"):
        if key not in extra:
            raise ClassifierError(f"{model_dir}/metadata.json lacks {key!r}")
    path = model_dir / PIPELINE_FILE
    if not path.is_file():
        raise ClassifierError(f"{model_dir}: {PIPELINE_FILE} missing")
    if _sha256(path) != extra["joblib_sha256"]:
        raise ClassifierError(f"{path}: sha256 differs from metadata.json (corrupt or replaced)")
    check_versions(extra["versions"])
    pipeline = joblib.load(path)
    weights = {name: cnn_weights_from_spec(name, spec, model_dir, Path(imagenet_dir) if imagenet_dir else None)
               for name, spec in (extra.get("cnn_weights") or {}).items()}
    params = model_dir / extra["radiomics_params"] if extra.get("radiomics_params") else None
    features = FeatureExtractor(extra["groups"], params, weights, extra.get("cnn_input_sizes"), radiomics_workers,
                                SliceGeometry.from_spec(extra.get("cnn_slice_geometry")),
                                bool(extra.get("radiomics_antialias", False)))
    return ExpansionClassifier(model_dir, meta, pipeline, features, extra["threshold"])


def describe(model_dir: Path | str) -> str:
    """One-line summary for the CLI."""
    meta = ModelMetadata.read(Path(model_dir))
    return json.dumps({"version": meta.version, "module": (meta.extra or {}).get("module"),
                       "metrics": meta.metrics}, sort_keys=True)
