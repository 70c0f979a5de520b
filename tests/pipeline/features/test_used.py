"""Which inputs a fitted model-2 pipeline reads: proven from its steps, or None (compute everything)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.feature_selection import SelectKBest, SequentialFeatureSelector, VarianceThreshold
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from pipeline.features.used import used_inputs

ROOT = Path(__file__).resolve().parents[3]


def _data(n=60, d=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (X[:, 3] + 0.5 * X[:, 7] + 0.3 * rng.normal(size=n) > 0).astype(int)
    X[::7, 5] = np.nan                      # missing values the imputer fills
    names = [f"f{i}" for i in range(d)]
    return pd.DataFrame(X, columns=names), y, names


def _model(ensemble: bool):
    inner = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler()),
                      ("variance", VarianceThreshold(1e-8)), ("prefilter", SelectKBest(k=6)),
                      ("sfs", SequentialFeatureSelector(SVC(kernel="linear"), n_features_to_select=2, cv=2)),
                      ("svm", SVC(kernel="linear"))])
    return Pipeline([("model", CalibratedClassifierCV(inner, cv=2, ensemble=ensemble))])


@pytest.mark.parametrize("ensemble", [False, True])
def test_unused_columns_cannot_change_the_probability(ensemble):
    X, y, names = _data()
    model = _model(ensemble).fit(X, y)
    used = used_inputs(model, names)
    assert used is not None and 2 <= len(used) <= 4 and used <= set(names)
    if ensemble:                              # one fitted pipeline per fold, the union of their picks
        per_fold = [set(c.estimator[:-1].get_feature_names_out(names)) for c in model[-1].calibrated_classifiers_]
        assert used == set().union(*per_fold)
    rng = np.random.default_rng(1)
    scrambled = X.copy()
    for col in set(names) - used:
        scrambled[col] = rng.normal(scale=1e3, size=len(X))
    absent = X.copy()
    absent[list(set(names) - used)] = np.nan
    ref = model.predict_proba(X)
    np.testing.assert_array_equal(model.predict_proba(scrambled), ref)
    np.testing.assert_array_equal(model.predict_proba(absent), ref)
    # and a used column does matter (the check is not vacuous)
    moved = X.copy()
    moved[sorted(used)[0]] += 5.0
    assert not np.array_equal(model.predict_proba(moved), ref)


def test_a_column_dropped_by_the_imputer_shifts_the_names_right():
    X, y, names = _data()
    X["f0"] = np.nan                         # all-NaN at fit: SimpleImputer drops it
    model = Pipeline([("impute", SimpleImputer()), ("select", SelectKBest(k=1)), ("svm", SVC())]).fit(X, y)
    assert used_inputs(model, names) == {"f3"}


@pytest.mark.parametrize("step", [PCA(n_components=3), SimpleImputer(add_indicator=True),
                                  SimpleImputer(missing_values=-1.0)])
def test_steps_that_may_mix_columns_mean_all_features(step):
    X, y, names = _data()
    X = X.fillna(0.0)
    model = Pipeline([("step", step), ("select", SelectKBest(k=2)), ("svm", SVC())]).fit(X, y)
    assert used_inputs(model, names) is None
    assert used_inputs(SVC().fit(X, y), names) is None        # a bare estimator reads everything


def test_bundled_classifier_reads_its_selected_features_only():
    from pipeline.classify import load_classifier

    model_dir = ROOT / "models" / "classifier" / "1"
    clf = load_classifier(model_dir)
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert clf.used_features == set(meta["extra"]["selected_features"])
    assert len(clf.feature_names) == meta["extra"]["n_features_in"] > 10 * len(clf.used_features)


def test_bundled_classifier_gives_the_same_probability_from_its_features_alone():
    import SimpleITK as sitk

    from pipeline.classify import load_classifier
    from pipeline.volume import Volume

    from .phantoms import phantom

    clf = load_classifier(ROOT / "models" / "classifier" / "1", radiomics_workers=1)
    image, mask = phantom(seed=4)
    volume, m = Volume.from_sitk(image), sitk.GetArrayFromImage(mask)
    everything = clf.features.extract(volume, m)
    assert len(everything) == len(clf.feature_names)
    assert clf.predict(volume, m).probability == clf.predict_features(everything)
