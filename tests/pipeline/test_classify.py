"""Model 2 runtime: load a classifier directory once, predict probability and risk from volume + mask."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.classify import ClassifierError, Prediction, load_classifier
from pipeline.result import Risk
from pipeline.volume import Volume

from features.phantoms import phantom  # tests/pipeline/features/phantoms.py

SMALL_PARAMS = """# test-only reduced radiomics parameters (same code path, fewer image types)
imageType:
  Original: {}
  Square: {binCount: 16}
featureClass:
  shape:
  firstorder:
  glcm:
setting:
  binWidth: 25
  label: 1
  additionalInfo: false
"""


def _case(i: int):
    rng = np.random.default_rng(i)
    big = i % 2
    r = (9.0 + 6.0 * big + rng.uniform(-2, 2))
    image, mask = phantom(centre=(0.0, 4.0, 0.0), radii=(r, 0.8 * r, 12.0), seed=i)
    return Volume.from_sitk(image), __import__("SimpleITK").GetArrayFromImage(mask), big


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from pipeline.classify import FeatureExtractor
    from training import classifier as C

    root = tmp_path_factory.mktemp("clf")
    params = root / "radiomics-test.yaml"
    params.write_text(SMALL_PARAMS)
    fx = FeatureExtractor(["radiomics"], params, radiomics_workers=1)
    rows, y = [], []
    for i in range(20):
        vol, mask, label = _case(i)
        rows.append(fx.extract(vol, mask))
        y.append(label)
    import pandas as pd

    X = pd.DataFrame(rows)
    fitted = C.fit_module("Radiomics", X, np.array(y), n_features_grid=(2,), prefilter_k=6,
                          svm_grid=[{"svm__kernel": ["linear"], "svm__C": [1.0]}])
    cases = [C.CohortCase(f"p{i}", None, None, y[i]) for i in range(20)]
    return C.save_model(fitted, root / "model" / "7", version="7", groups=("radiomics",), training_cases=cases,
                        cnn_weight_files={}, metrics={"cv_auc_train": fitted.cv_auc}, radiomics_params=params)


def test_predict_probability_and_risk(model_dir):
    clf = load_classifier(model_dir, radiomics_workers=1)
    assert clf.version == "7"
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["kind"] == "classifier" and meta["extra"]["versions"]["scikit-learn"]
    assert meta["training_data"]["fingerprint"] and (model_dir / "radiomics-test.yaml").is_file()
    probs = []
    for i in (101, 102, 103, 104):
        vol, mask, label = _case(i)
        pred = clf.predict(vol, mask)
        assert isinstance(pred, Prediction) and 0.0 <= pred.probability <= 1.0
        assert pred.risk == (Risk.HIGH if pred.probability >= clf.threshold else Risk.LOW)
        probs.append((label, pred.probability))
    # large hematomas were the positives: they must score higher than the small ones here
    assert min(p for lab, p in probs if lab) > max(p for lab, p in probs if not lab)


def test_bad_inputs_are_refused(model_dir):
    clf = load_classifier(model_dir, radiomics_workers=1)
    vol, mask, _ = _case(5)
    with pytest.raises(ValueError, match="empty"):
        clf.predict(vol, np.zeros_like(mask))
    with pytest.raises(ValueError, match="shape"):
        clf.predict(vol, mask[:-1])


def _copy(model_dir, tmp_path):
    import shutil

    dst = tmp_path / "m"
    shutil.copytree(model_dir, dst)
    return dst


def test_corrupt_or_incompatible_model_dirs(model_dir, tmp_path):
    d = _copy(model_dir, tmp_path)
    with open(d / "classifier.joblib", "ab") as f:
        f.write(b"x")
    with pytest.raises(ClassifierError, match="sha256"):
        load_classifier(d)

    d2 = _copy(model_dir, tmp_path / "b")
    meta = json.loads((d2 / "metadata.json").read_text())
    meta["extra"]["versions"]["scikit-learn"] = "0.24.2"
    (d2 / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ClassifierError, match="scikit-learn 0.24.2"):
        load_classifier(d2)

    meta["kind"] = "segmenter"
    (d2 / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ClassifierError, match="not a classifier"):
        load_classifier(d2)
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        load_classifier(tmp_path)


def test_only_the_features_the_model_reads_are_computed_and_the_probability_is_unchanged(model_dir):
    clf = load_classifier(model_dir)
    vol, mask, _ = _case(31)
    everything = clf.features.extract(vol, mask)
    used = clf.used_features
    assert used is not None and used < set(everything)
    part = clf.features.extract(vol, mask, only=used)
    assert set(part) == used
    assert clf.predict(vol, mask).probability == clf.predict_features(everything)
    with pytest.raises(ClassifierError, match="features missing"):
        clf.predict_features({k: v for k, v in part.items() if k != sorted(used)[0]})
