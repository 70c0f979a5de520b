"""The pre-filter rankings in front of SFS (training.selection)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training import selection as S


def _cohort(n: int = 400, seed: int = 0):
    """Two domains; ``stable`` separates in both, ``one_domain`` strongly in A only, ``flipped`` in opposite
    directions, ``twin`` copies ``stable`` with a little noise, ``noise`` nothing."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    dom = np.where(np.arange(n) < n // 2, "A", "B")
    a = dom == "A"
    stable = y * 0.8 + rng.normal(size=n)
    one_domain = np.where(a, y * 3.0, 0.0) + rng.normal(size=n)
    flipped = np.where(a, y, -y) * 1.5 + rng.normal(size=n)
    X = pd.DataFrame({"stable": stable, "one_domain": one_domain, "flipped": flipped,
                      "twin": stable + rng.normal(scale=0.05, size=n), "noise": rng.normal(size=n),
                      "constant": np.ones(n)})
    return X, y, list(dom)


def test_auc_per_feature_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    X, y, _ = _cohort()
    auc = S.auc_per_feature(X.drop(columns="constant"), y)
    for col in auc.index:
        assert auc[col] == pytest.approx(roc_auc_score(y, X[col]))


def test_the_f_test_prefers_a_feature_strong_in_one_domain_the_worst_domain_ranking_does_not():
    X, y, dom = _cohort()
    f = S.f_test_score(X, y)
    assert f["one_domain"] > f["stable"]          # the protocol's ranking: pooled strength wins
    worst = S.domain_stable_score(X, y, dom)
    assert worst["stable"] > worst["one_domain"]  # separates in both domains, not only in A
    assert worst["flipped"] < 0                   # reverses in one domain: ranked below pure noise
    assert "constant" not in worst.index
    assert S.candidates(X, y, dom, ranking="domain_stable", k=1) in (["stable"], ["twin"])


def test_the_correlation_cap_keeps_one_of_two_twins():
    X, y, dom = _cohort()
    both = S.candidates(X, y, dom, ranking="domain_stable", k=2)
    assert set(both) == {"stable", "twin"}
    capped = S.candidates(X, y, dom, ranking="domain_stable", k=2, max_abs_r=0.8)
    assert len(capped) == 2 and len({"stable", "twin"} & set(capped)) == 1


def test_rankings_refuse_what_they_cannot_rank():
    X, y, dom = _cohort()
    with pytest.raises(ValueError, match="domain"):
        S.candidates(X, y, None, ranking="domain_stable")
    with pytest.raises(ValueError, match="unknown ranking"):
        S.candidates(X, y, dom, ranking="lasso")
    with pytest.raises(ValueError, match="5 cases of each class"):
        S.domain_stable_score(X.iloc[:8], y[:8], dom[:8])
    with pytest.raises(ValueError, match="domain labels"):
        S.domain_stable_score(X, y, dom[:-1])


def test_domain_of_reads_the_cache_meta():
    meta = {"volume_ml": 9.0, "shape": [73, 256, 256], "spacing": [0.865727, 0.865727, 2.5]}
    assert S.domain_of(meta) == (256, 2.5)


@pytest.mark.parametrize("text, expected", [
    ("protocol", S.Prefilter()),
    ("domain_stable-20-r0.8", S.Prefilter("domain_stable", 20, 0.8)),
    ("f_test-50", S.Prefilter("f_test", 50)),
])
def test_prefilter_names_parse_and_round_trip(text, expected):
    p = S.Prefilter.parse(text)
    assert p == expected and p.name == text
    assert S.Prefilter.from_spec(p.spec()) == p
    assert S.Prefilter.from_spec(None) == S.Prefilter()  # models made before it was recorded


@pytest.mark.parametrize("text, match", [("lasso-20", "unknown ranking"), ("domain_stable-1", "at least 2"),
                                         ("domain_stable", "RANKING-K"), ("f_test-20-r1.5", "RANKING-K"),
                                         ("f_test-20-r0.0", "max_abs_r")])
def test_prefilter_refuses_what_it_cannot_mean(text, match):
    with pytest.raises(ValueError, match=match):
        S.Prefilter.parse(text)


def test_fit_module_offers_sfs_only_the_prefilters_columns():
    from training import classifier as C

    X, y, dom = _cohort(200)
    tiny = {"n_features_grid": (2,), "svm_grid": [{"svm__kernel": ["linear"], "svm__C": [1.0]}]}
    pf = S.Prefilter("domain_stable", 3, 0.8)
    fm = C.fit_module("Radiomics", X, y, prefilter=pf, domains=dom, **tiny)
    offered = list(fm.pipeline.feature_names_in_)
    assert offered == S.candidates(X, y, dom, ranking="domain_stable", k=3, max_abs_r=0.8)
    assert offered[0] in ("stable", "twin") and not {"stable", "twin"} <= set(offered)
    assert "flipped" not in offered  # reverses between the domains
    assert set(fm.selected) <= set(offered) and fm.prefilter == pf
    stock = C.fit_module("Radiomics", X, y, prefilter_k=3, **tiny)  # the protocol: every column in, F-test per fold
    assert list(stock.pipeline.feature_names_in_) == list(X.columns) and stock.prefilter == S.Prefilter(k=3)
