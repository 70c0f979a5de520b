"""Which radiomics features SFS may choose from: the pre-filter in front of model 2's selection.

The seed's protocol ranks ≈ 1,600 radiomics features by a univariate F-test over all training cases and
hands the top 20 to sequential forward selection (SFS), only to keep SFS affordable. On a cohort that
mixes matrices and slice thicknesses that ranking favours features whose separation is strong in some
domains and absent in others (session 18: the entropy family that carries the signal on every domain
never reached SFS). The rankings here are computed on the training cases alone:

- ``f_test``: the protocol's ranking (F statistic over all cases);
- ``domain_stable``: each feature's *worst* domain — the smallest separation, |AUC − 0.5| in the direction
  of its pooled effect, over the (matrix, slice thickness) domains of the training cases — so a feature is
  offered only if it separates on every acquisition the node will see;
- ``pick``: walks a ranking and skips a feature correlated above ``max_abs_r`` with one already picked
  (SFS then sees 20 different things, not one family 20 times).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

RANKINGS = ("f_test", "domain_stable")


@dataclass(frozen=True)
class Prefilter:
    """What SFS is offered: the ``k`` best by ``ranking``, optionally at most ``max_abs_r`` correlated.

    ``Prefilter()`` is the seed's protocol (F-test top 20, inside the cross-validation's pipeline). Any
    other is ranked once on all training cases before the grid search, so its train-CV AUC is optimistic
    (the held-out and validation figures are not)."""

    ranking: str = "f_test"
    k: int = 20
    max_abs_r: float | None = None

    def __post_init__(self) -> None:
        if self.ranking not in RANKINGS:
            raise ValueError(f"unknown ranking {self.ranking!r}; known: {', '.join(RANKINGS)}")
        if self.k < 2:
            raise ValueError(f"a pre-filter must offer SFS at least 2 features, not {self.k}")
        if self.max_abs_r is not None and not 0.0 < self.max_abs_r < 1.0:
            raise ValueError(f"max_abs_r must lie in (0, 1), not {self.max_abs_r}")

    @property
    def is_protocol(self) -> bool:
        """True when the pipeline's own SelectKBest does it (inside each CV fold)."""
        return self.ranking == "f_test" and self.max_abs_r is None

    @property
    def name(self) -> str:
        if self == Prefilter():
            return "protocol"
        return f"{self.ranking}-{self.k}" + (f"-r{self.max_abs_r:g}" if self.max_abs_r is not None else "")

    @classmethod
    def parse(cls, text: str) -> Prefilter:
        """``protocol`` or ``RANKING-K[-rR]``, e.g. ``domain_stable-20-r0.8``."""
        if text == "protocol":
            return cls()
        m = re.fullmatch(r"([a-z_]+)-(\d+)(?:-r(0?\.\d+))?", text)
        if not m:
            raise ValueError(f"pre-filter {text!r}: expected 'protocol' or RANKING-K[-rR] "
                             f"(RANKING one of {', '.join(RANKINGS)}), e.g. domain_stable-20-r0.8")
        return cls(m[1], int(m[2]), float(m[3]) if m[3] else None)

    def offer(self, X: pd.DataFrame, y: np.ndarray, domains: Sequence[Hashable] | None) -> list[str] | None:
        """The columns SFS may choose from (None: all, the pipeline's SelectKBest picks per fold)."""
        if self.is_protocol:
            return None
        return candidates(X, y, domains, ranking=self.ranking, k=self.k, max_abs_r=self.max_abs_r)

    def spec(self) -> dict:
        return {"ranking": self.ranking, "k": self.k, "max_abs_r": self.max_abs_r}

    @classmethod
    def from_spec(cls, spec: dict | None) -> Prefilter:
        """A model's recorded pre-filter; models made before it was recorded used the protocol's."""
        return cls(**spec) if spec else cls()


def _clean(X: pd.DataFrame) -> pd.DataFrame:
    """Median-imputed, constant columns dropped (what the pipeline does before its pre-filter)."""
    X = X.apply(pd.to_numeric, errors="coerce").astype(float)
    X = X.fillna(X.median())
    return X.loc[:, X.std(ddof=0) > 1e-8]


def auc_per_feature(X: pd.DataFrame, y: np.ndarray) -> pd.Series:
    """Mann–Whitney AUC of every column for ``y`` (ties counted half), vectorised by ranks."""
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=int)
    n1, n0 = int(y.sum()), int((1 - y).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError("both classes are needed to rank features")
    ranks = rankdata(X.to_numpy(), axis=0)
    u = ranks[y == 1].sum(axis=0) - n1 * (n1 + 1) / 2
    return pd.Series(u / (n1 * n0), index=X.columns)


def f_test_score(X: pd.DataFrame, y: np.ndarray) -> pd.Series:
    from sklearn.feature_selection import f_classif

    X = _clean(X)
    f, _ = f_classif(X.to_numpy(), np.asarray(y, dtype=int))
    return pd.Series(np.nan_to_num(f), index=X.columns)


def domain_stable_score(X: pd.DataFrame, y: np.ndarray, domains: Sequence[Hashable],
                        min_per_class: int = 5) -> pd.Series:
    """Per feature, the worst domain's separation along the pooled direction (negative: reverses there).

    Domains with fewer than ``min_per_class`` cases of either class are left out (their AUC is noise)."""
    X = _clean(X)
    y = np.asarray(y, dtype=int)
    domains = np.asarray([str(d) for d in domains])
    if len(domains) != len(y):
        raise ValueError(f"{len(domains)} domain labels for {len(y)} cases")
    direction = np.sign(auc_per_feature(X, y) - 0.5).replace(0, 1)
    worst = pd.Series(np.inf, index=X.columns)
    used = 0
    for d in np.unique(domains):
        sel = domains == d
        if min(y[sel].sum(), (1 - y[sel]).sum()) < min_per_class:
            continue
        worst = np.minimum(worst, (auc_per_feature(X[sel], y[sel]) - 0.5) * direction)
        used += 1
    if used == 0:
        raise ValueError(f"no domain has {min_per_class} cases of each class")
    return worst


def pick(X: pd.DataFrame, score: pd.Series, k: int, max_abs_r: float | None = None) -> list[str]:
    """The ``k`` best-scored columns, skipping one correlated above ``max_abs_r`` with a column kept."""
    order = score.sort_values(ascending=False, kind="stable").index
    if max_abs_r is None:
        return list(order[:k])
    Z = _clean(X)[order]
    Z = (Z - Z.mean()) / Z.std(ddof=0)
    kept: list[str] = []
    for name in order:
        if kept and np.max(np.abs(Z[kept].to_numpy().T @ Z[name].to_numpy()) / len(Z)) > max_abs_r:
            continue
        kept.append(name)
        if len(kept) == k:
            break
    return kept


def candidates(X: pd.DataFrame, y: np.ndarray, domains: Sequence[Hashable] | None, *, ranking: str = "f_test",
               k: int = 20, max_abs_r: float | None = None) -> list[str]:
    """The columns SFS is offered, ranked on these (training) cases only."""
    if ranking == "f_test":
        score = f_test_score(X, y)
    elif ranking == "domain_stable":
        if domains is None:
            raise ValueError("the domain_stable ranking needs each case's (matrix, slice thickness)")
        score = domain_stable_score(X, y, domains)
    else:
        raise ValueError(f"unknown ranking {ranking!r}; known: {', '.join(RANKINGS)}")
    return pick(X, score, k, max_abs_r)


def domain_of(meta: dict) -> tuple[int, float]:
    """(matrix, slice thickness in mm) from a feature cache's ``meta.json`` (shape z, y, x; spacing x, y, z)."""
    return int(meta["shape"][2]), round(float(meta["spacing"][2]), 1)
