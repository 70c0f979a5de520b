"""benchmarks/site_adaptation.py (issue 16, part 3): the site's split. The chain itself (import, retrain,
scoring) is ``ich-node dataset import`` / ``retrain`` / ``ClassifierTrainer.evaluate``, each tested in
tests/training; run end to end it costs ≈ 13 s of model 1 per study, more than a suite test may spend
(a 17-patient run took 5.5 min), so it is a benchmark, not a test."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import site_adaptation as sa  # noqa: E402


def test_split_is_stratified_fixed_and_disjoint():
    rows = [{"case_id": f"c{i}", "patient_id": f"p{i}", "expansion": str(int(i % 4 == 0))} for i in range(40)]
    test, pool = sa.split_site(rows, 12, seed=3)
    assert len(test) == 12 and len(pool) == 28
    assert sum(int(r["expansion"]) for r in test) == 3  # 10 of 40 expand: 3 of 12 held out
    assert not {r["case_id"] for r in test} & {r["case_id"] for r in pool}
    assert sa.split_site(list(reversed(rows)), 12, seed=3) == (test, pool)  # order of the manifest does not matter
    assert sa.split_site(rows, 12, seed=4)[0] != test
