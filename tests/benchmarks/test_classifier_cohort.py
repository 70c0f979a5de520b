"""benchmarks/classifier_cohort.py (issue 16, part 2): a cohort built in parts is one ordinary cohort, and a
stopped build goes on where it stopped; benchmarks/classifier_domains.py applies the registry's gate."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import classifier_cohort as cc  # noqa: E402
from benchmarks import classifier_domains as cd  # noqa: E402
from training import classifier as C  # noqa: E402
from training.synth import SynthOptions  # noqa: E402

TINY = SynthOptions(matrix=128, thickness_mm=(5.0,), tilt_fraction=0.0, prevalence=0.5, write_followup=False)


def _build(out: Path, monkeypatch, *extra: str) -> None:
    monkeypatch.setattr(cc, "synth_options", lambda: TINY)
    monkeypatch.setattr(sys, "argv", ["classifier_cohort.py", "--out", str(out), "--cases", "3", "--part", "2",
                                      "--seed", "31", "--workers", "1", *extra])
    cc.main()


def test_parts_make_one_cohort_with_cached_features_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "big"
    _build(out, monkeypatch)
    cases = C.read_cohort(out)
    assert [c.case_id for c in cases] == ["case00000", "case00001", "case00002"]
    assert all(c.mask_path.is_file() and not c.baseline_dir.exists() for c in cases)   # DICOM dropped by default
    cache = C.FeatureCache(out / "features-cache")
    from pipeline.features.recipe import recipe

    v2 = recipe("v2")
    assert all(cache.has_base(c.case_id, v2.radiomics_version, v2.slice_geometry) for c in cases)
    # the same cases as one cohort written at once: labels from the same per-case seeds
    from training.synth import write_cohort

    write_cohort(tmp_path / "whole", 3, seed=31, options=TINY)
    assert [c.label for c in C.read_cohort(tmp_path / "whole")] == [c.label for c in cases]
    # resume: finished parts are skipped, an unfinished one is done again
    (out / "parts" / "p001" / cc.DONE).unlink()
    before = (out / "parts" / "p000" / "manifest.csv").stat().st_mtime_ns
    _build(out, monkeypatch, "--keep-dicom")
    assert (out / "parts" / "p000" / "manifest.csv").stat().st_mtime_ns == before
    assert (out / "parts" / "p001" / cc.DONE).is_file()
    assert [c.case_id for c in C.read_cohort(out)] == [c.case_id for c in cases]


def test_domains_benchmark_applies_the_registry_gate():
    base = {"auc": 0.80, "brier": 0.15, "auc_ci95": [0.70, 0.90]}
    same = cd.judge(dict(base), base, 300)
    assert same["passed"] and len(same["reasons"]) == 3
    worse = cd.judge({**base, "auc": 0.75}, base, 300)
    assert not worse["passed"] and any("auc 0.7500 FAILS" in r for r in worse["reasons"])
    chance = cd.judge({**base, "auc_ci95": [0.45, 0.95]}, base, 300)
    assert not chance["passed"]


def test_no_part_starts_after_the_time_limit(tmp_path, monkeypatch):
    out = tmp_path / "none"
    _build(out, monkeypatch, "--minutes", "0")
    assert not (out / "manifest.csv").exists() and not (out / "parts").exists()


def test_domain_spread_is_judged_against_one_shared_roc():
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.array([1] * 60 + [0] * 180)
    domains = [(256, 5.0), (512, 1.0), (512, 5.0)] * 80
    shared = y * 2.0 + rng.normal(0, 1.0, y.size)          # one ROC for every domain (AUC ≈ 0.92)
    same = cd.spread_by_chance(y, shared, domains, n=300)
    assert same["permutations"] == 300 and same["p_value"] > 0.05
    broken = shared.copy()
    broken[[i for i, d in enumerate(domains) if d == (512, 1.0)]] = rng.normal(0, 1.0, 80)   # chance in one domain
    diff = cd.spread_by_chance(y, broken, domains, n=300)
    assert diff["observed"] > diff["null_p95"] and diff["p_value"] < 0.01
    scored = cd.score(y, broken, domains)
    assert scored["by_domain"]["512x1mm"]["auc_ci95"][0] < 0.5 < scored["by_domain"]["256x5mm"]["auc_ci95"][0]


def test_domain_spread_needs_two_domains_with_both_classes():
    import numpy as np

    y = np.array([1, 0, 1, 0, 0])
    p = np.array([0.9, 0.1, 0.8, 0.2, 0.3])
    out = cd.spread_by_chance(y, p, [(256, 5.0)] * 4 + [(512, 1.0)], n=50)
    assert out["observed"] is None and out["p_value"] is None and out["permutations"] == 0


def test_render_only_parts_keep_their_dicom_and_cache_nothing(tmp_path, monkeypatch):
    out = tmp_path / "fresh"
    _build(out, monkeypatch, "--features", "none")
    cases = C.read_cohort(out)
    assert len(cases) == 3 and not (out / "features-cache").exists()
    assert all(any(Path(c.baseline_dir).iterdir()) for c in cases)   # DICOM kept for the models to read
    assert {p.read_text() for p in (out / "parts").glob("*/features.done")} == {"none"}


def test_several_candidates_are_named_by_their_directories():
    assert cd.roles([Path("a/model")]) == {"candidate": Path("a/model")}
    assert list(cd.roles([Path("a/model"), Path("b/model_all")])) == ["candidate:model", "candidate:model_all"]
    with pytest.raises(SystemExit):
        cd.roles([Path("a/model"), Path("b/model")])


def test_fixed_feature_diagnostic_fits_the_seed_protocol_on_the_named_features_only(tmp_path, monkeypatch):
    """benchmarks/classifier_fixed_features.py: the seed's SFS + SVM on another model's selected features, saved
    as a model the node runs (recipe v4: smoothed 1 x 1 x 5 mm grid, recorded in its metadata)."""
    import json

    from benchmarks import classifier_fixed_features as ff
    from pipeline.classify import load_classifier

    out = tmp_path / "cohort"
    monkeypatch.setattr(cc, "synth_options", lambda: TINY)
    monkeypatch.setattr(sys, "argv", ["classifier_cohort.py", "--out", str(out), "--cases", "12", "--part", "12",
                                      "--seed", "41", "--workers", "1", "--features", "v4", "--keep-dicom"])
    cc.main()
    names = ["original_firstorder_Entropy", "original_firstorder_InterquartileRange", "original_glcm_SumEntropy",
             "original_gldm_DependenceEntropy"]
    donor = tmp_path / "donor"
    donor.mkdir()
    (donor / "metadata.json").write_text(json.dumps({"extra": {"selected_features": names}}))
    model = tmp_path / "model"
    monkeypatch.setattr(sys, "argv", ["classifier_fixed_features.py", "--cohort", str(out), "--features", "v4",
                                      "--names-from", str(donor), "--out", str(model), "--test-fraction", "0.25"])
    ff.main()
    extra = json.loads((model / "metadata.json").read_text())["extra"]
    assert extra["feature_list"] == names and set(extra["selected_features"]) <= set(names)
    assert extra["radiomics_params"] == "radiomics-v4.yaml" and extra["radiomics_antialias"] is True
    clf = load_classifier(model)
    assert clf.feature_names == names and clf.features._radiomics.antialias
    case = C.read_cohort(out)[0]
    assert 0.0 <= clf.predict(*C.load_case(case)).probability <= 1.0
