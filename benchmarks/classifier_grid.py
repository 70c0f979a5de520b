"""Issue 16, part 2: would model 2's protocol choose differently with a wider feature search on a large cohort?

    .venv/bin/python benchmarks/classifier_grid.py --cohort var/m2big/cohort --cache var/m2big/cohort/features-cache \
        --warmup-cohort var/m2big/warmup [--features v2] [--test-fraction 0.3] [--json OUT]

The seed's protocol pre-filters 20 radiomics features and lets SFS keep 3, 5 or 8 (sized for a few hundred
cases). On the same split as ``ich-node train classifier`` (same seed and ``--test-fraction``), the Radiomics
module is fitted with that grid and with wider ones (50 → 5–16, 100 → 8–24); the decision between them
belongs to the training cross-validation AUC, the held-out AUC is printed only to show what it would cost
or gain. Features come from the cache (nothing is extracted if the training run filled it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GRIDS = {"protocol (20 → 3/5/8)": (20, (3, 5, 8)), "50 → 5/8/12/16": (50, (5, 8, 12, 16)),
         "100 → 8/12/16/24": (100, (8, 12, 16, 24))}


def main() -> None:
    from sklearn.metrics import roc_auc_score

    from training import classifier as C
    from training import evaluate_classifier as E

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--warmup-cohort", type=Path, default=None)
    ap.add_argument("--features", default="v2")
    ap.add_argument("--test-fraction", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    prep = E.prepare(args.cohort, args.cache, seed=args.seed, warmup_cohort=args.warmup_cohort,
                     features=args.features, test_fraction=args.test_fraction, backbones=())
    y_tr, y_te = (np.array([c.label for c in s]) for s in (prep.train, prep.test))
    x_tr, x_te = (E.module_matrix(prep, ("radiomics",), s) for s in (prep.train, prep.test))
    out = {"benchmark": "classifier_grid", "issue": "16 part 2", "cohort": str(args.cohort),
           "features": args.features, "train_cases": len(y_tr), "test_cases": len(y_te), "grids": {}}
    for name, (k, grid) in GRIDS.items():
        t0 = time.time()
        fm = C.fit_module("Radiomics", x_tr, y_tr, seed=args.seed, n_features_grid=grid, prefilter_k=k)
        auc = float(roc_auc_score(y_te, fm.probability(x_te)))
        out["grids"][name] = {"train_cv_auc": fm.cv_auc, "test_auc": auc, "best_params": fm.best_params,
                              "selected": fm.selected, "seconds": round(time.time() - t0, 1)}
        print(f"{name:22s} train CV AUC {fm.cv_auc:.3f}  held-out {auc:.3f}  {fm.best_params}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
