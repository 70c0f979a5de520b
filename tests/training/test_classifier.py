"""Model 2 training and evaluation on a tiny synthetic DICOM cohort (real code paths, tiny grids)."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pytest

from training import classifier as C
from training import evaluate_classifier as E
from training import stats
from training.selection import Prefilter

TINY = {"n_features_grid": (2,), "prefilter_k": 4, "svm_grid": [{"svm__kernel": ["linear"], "svm__C": [1.0]}]}
SIZES = {"resnet50": 32, "inception_v3": 75}  # smallest inputs of the real architectures


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from training.synth.cohort import write_cohort
    from training.synth.options import SynthOptions

    out = tmp_path_factory.mktemp("cohort")
    write_cohort(out, 16, seed=3, options=SynthOptions(matrix=64, thickness_mm=(5.0,), tilt_fraction=0.0,
                                                      prevalence=0.5))
    return out


@pytest.fixture(scope="module")
def prepared(cohort):
    return E.prepare(cohort, seed=0, cnn_sizes=SIZES)


def test_split_is_stratified_and_disjoint(cohort):
    cases = C.read_cohort(cohort)
    train, test = C.split_cohort(cases, seed=0)
    assert not {c.case_id for c in train} & {c.case_id for c in test}
    assert len(train) + len(test) == len(cases)
    assert 0 < sum(c.label for c in test) < len(test)
    many = [C.CohortCase(f"c{i}", None, None, int(i < 60)) for i in range(240)]
    tr, te = C.split_cohort(many, seed=1)
    assert len(te) == 100 and sum(c.label for c in te) == 24  # the seed's test set
    tr, te = C.split_cohort(many, seed=1, test_fraction=0.3)   # a large cohort judged per domain
    assert len(te) == 72 and sum(c.label for c in te) == 18 and len(tr) == 168
    assert not {c.case_id for c in tr} & {c.case_id for c in te}
    with pytest.raises(ValueError, match="test_fraction"):
        C.split_cohort(many, test_fraction=1.0)


def test_evaluation_writes_table2_json_plots_html(prepared, tmp_path):
    summary = E.evaluate(prepared, tmp_path, n_boot=100, **TINY)
    data = json.loads((tmp_path / "evaluation.json").read_text())
    assert set(data["modules"]) == set(C.MODULES) | {"Volume", "Marker score"}
    for m in data["modules"].values():
        assert 0.0 <= m["auc"]["value"] <= 1.0 and len(m["auc"]["ci95"]) == 2
        assert set(m["confusion"]) == {"TP", "FP", "FN", "TN"}
        assert sum(m["confusion"].values()) == data["test"]["cases"]
        assert {"brier", "slope", "intercept"} <= set(m["calibration"])
        assert len(m["decision_curve"]["model"]) == len(m["decision_curve"]["thresholds"])
    assert "Radiomics vs Radiomics+ResNet50" in data["delong"]
    for name in ("report.html", "roc.png", "pr.png", "calibration.png", "decision_curve.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert "Table 2" in (tmp_path / "report.html").read_text()
    assert summary["selected_by_train_cv"] in C.MODULES


def test_fit_save_load_predict_matches_training_features(prepared, tmp_path):
    from pipeline.classify import load_classifier

    groups = C.MODULES["Radiomics+ResNet50"]
    X = E.module_matrix(prepared, groups, prepared.train)
    y = np.array([c.label for c in prepared.train])
    fitted = C.fit_module("Radiomics+ResNet50", X, y, **TINY)
    p = fitted.pipeline.predict_proba(X)
    assert p.shape == (len(y), 2) and np.allclose(p.sum(axis=1), 1) and 0 <= fitted.threshold <= 1
    assert len(fitted.selected) == 2 and fitted.oof_probability.shape == (len(y),)

    out = C.save_model(fitted, tmp_path / "1", version="1", groups=groups, training_cases=prepared.train,
                       cnn_weight_files=prepared.warmup_files, metrics={}, extra={"cnn_input_sizes": SIZES})
    again = joblib.load(out / "classifier.joblib")  # persisted Pipeline round trip
    np.testing.assert_array_equal(again.predict_proba(X), p)
    assert list(again.feature_names_in_) == list(X.columns)

    clf = load_classifier(out)  # the node's path: features from the volume and mask
    case = prepared.test[0]
    volume, mask = C.load_case(case)
    pred = clf.predict(volume, mask)
    cached = fitted.pipeline.predict_proba(E.module_matrix(prepared, groups, [case]))[0, 1]
    assert pred.probability == pytest.approx(cached, abs=1e-9)


def test_delong_and_calibration_statistics():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.3).astype(int)
    p1 = np.clip(0.3 + 0.3 * y + rng.normal(0, 0.2, 300), 0.01, 0.99)
    p2 = rng.random(300)
    auc, lo, hi = stats.delong_auc_ci(y, p1)
    assert auc == pytest.approx(roc_auc_score(y, p1)) and lo < auc < hi
    assert stats.delong_test(y, p1, p1)["p"] == 1.0
    assert stats.delong_test(y, p1, p2)["p"] < 0.001
    truth = rng.random(5000)
    outcome = (rng.random(5000) < truth).astype(int)
    cal = stats.calibration(outcome, truth)
    assert cal["slope"] == pytest.approx(1.0, abs=0.15) and abs(cal["intercept"]) < 0.15
    dc = stats.decision_curve(outcome, truth, [0.5])
    assert dc["model"][0] > dc["treat_all"][0]


@pytest.mark.parametrize("features", ["v2", "v3"])
def test_v2_recipe_is_cut_the_same_way_in_training_runtime_and_retraining(cohort, tmp_path, features):
    """Resolution-independent features (issue 16): training caches v2 (v3) radiomics and mm-cut key
    slices, the saved model records them (v3: smoothed before resampling), the node's loader computes
    the same values from the volume, and the retraining protocol of a served model uses the same recipe."""
    from pipeline.classify import load_classifier
    from training.trainers import ClassifierTrainer

    prep = E.prepare(cohort, tmp_path / "cache", seed=0, cnn_sizes=SIZES, features=features)
    assert prep.recipe.name == features and any(c.startswith("original_ngtdm") for c in prep.tables["radiomics"])
    assert prep.recipe.antialias == (features == "v3")
    case_dir = tmp_path / "cache" / C.safe_key(prep.train[0].case_id)
    assert (case_dir / f"radiomics-{features}.json").is_file() and (case_dir / "slices-fov240-off15.npz").is_file()
    assert not (case_dir / "slices.npz").exists()  # v1's cut is not what v2 reads

    groups = C.MODULES["Radiomics+ResNet50"]
    X = E.module_matrix(prep, groups, prep.train)
    y = np.array([c.label for c in prep.train])
    pf = Prefilter("f_test", 4, 0.95)  # a pre-filter other than the protocol's is recorded and repeated
    fitted = C.fit_module("Radiomics+ResNet50", X, y, prefilter=pf, **{**TINY, "prefilter_k": 99})
    assert len(fitted.pipeline.feature_names_in_) == 4 and fitted.prefilter == pf
    out = C.save_model(fitted, tmp_path / "2", version="2", groups=groups, training_cases=prep.train,
                       cnn_weight_files=prep.warmup_files, metrics={}, radiomics_params=prep.recipe.radiomics_params,
                       extra={"cnn_input_sizes": SIZES, "cnn_slice_geometry": prep.recipe.slice_geometry.spec(),
                              "radiomics_antialias": prep.recipe.antialias})
    meta = json.loads((out / "metadata.json").read_text())["extra"]
    assert meta["radiomics_params"] == f"radiomics-{features}.yaml" and meta["cnn_slice_geometry"]["offset_mm"] == 15.0

    clf = load_classifier(out)
    assert clf.features._radiomics.antialias == prep.recipe.antialias
    case = prep.test[0]
    volume, mask = C.load_case(case)
    pred = clf.predict(volume, mask)
    cached = fitted.probability(E.module_matrix(prep, groups, [case]))[0]
    assert pred.probability == pytest.approx(cached, abs=1e-9)

    proto = ClassifierTrainer(served_dir=out).protocol()
    assert proto["radiomics_params"].name == f"radiomics-{features}.yaml"
    assert proto["cnn_slice_geometry"] == prep.recipe.slice_geometry.spec()
    assert proto["radiomics_antialias"] == prep.recipe.antialias
    assert meta["prefilter"] == pf.spec() and proto["prefilter"] == pf


def test_table2_can_use_pretrained_backbones_instead_of_the_warmup(cohort, prepared, tmp_path):
    """Issue 16 part 4: `evaluate classifier --pretrained-backbones DIR` feeds the modules the features of
    whole pretrained backbones (here: keras' own initialisation saved the pretrained way), cached apart
    from the warm-up's, and refuses a backbone pretrained at another input size."""
    from pipeline.features import backbones

    pre = tmp_path / "pretrained"
    for name, size in SIZES.items():
        bb = backbones.get_backbone(name)
        model = backbones.build_seeded(bb, seed=7, input_size=size)
        backbones.save_pretrained(model, bb, pre / name)
    prep = E.prepare(cohort, seed=0, cnn_sizes=SIZES, pretrained=pre)
    assert prep.warmup_files == {n: pre / n for n in SIZES}
    for name in SIZES:
        assert prep.tables[name].shape == prepared.tables[name].shape
        assert not np.allclose(prep.tables[name].to_numpy(), prepared.tables[name].to_numpy())
    assert prep.tables["radiomics"].equals(prepared.tables["radiomics"])
    with pytest.raises(ValueError, match="pretrained at 32 px"):
        E.prepare(cohort, seed=0, cnn_sizes={"resnet50": 48, "inception_v3": 75}, pretrained=pre)
