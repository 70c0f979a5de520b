"""Diagnostic (issue 16 part 2): the seed's protocol limited to a given feature list — is it the recipe or
the selection?

    .venv/bin/python benchmarks/classifier_fixed_features.py --cohort var/m2big/cohort \
        --cache var/m2big/cohort/features-cache --features v4 --names-from models/classifier/1 \
        --out var/m2big/model_v4_v1set [--test-fraction 0.05]

Fits the seed's SFS + SVM + sigmoid calibration (``training.classifier.fit_module``, split as ``ich-node train
classifier --test-fraction``) on the cohort's cached radiomics of recipe ``--features``, restricted to the
features another model selected (``--names-from``: its ``metadata.json`` ``selected_features``), and saves a
model directory the node (and ``benchmarks/classifier_domains.py``) can run. Why: recipes v2–v4 trained on
the mixed 1,000-case cohort all select other features than the shipped v1 and all land ≈ 0.05 AUC below it on
fresh data; this tells whether v1's advantage is its grid and bins or which features were kept. Not a
shipping path: the feature list comes from outside the training data's own selection.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

from pipeline.features.recipe import recipe  # noqa: E402
from training import classifier as C  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--features", default="v4", help="feature recipe whose cached radiomics are used")
    ap.add_argument("--names-from", type=Path, required=True, help="a model directory: its selected_features")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--test-fraction", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rcp = recipe(args.features)
    names = json.loads((args.names_from / "metadata.json").read_text())["extra"]["selected_features"]
    cache = C.FeatureCache(args.cache or args.cohort / "features-cache")
    every = C.read_cohort(args.cohort)
    cases = [c for c in every if cache.has(c.case_id, f"{rcp.radiomics_version}.json")]
    if len(cases) < len(every):  # a part-filled cache would silently train on fewer cases
        sys.exit(f"{len(every) - len(cases)} of {len(every)} cases of {args.cohort} have no cached "
                 f"{rcp.radiomics_version} features: run `ich-node train classifier --features {rcp.name}` on it first")
    train, _ = C.split_cohort(cases, args.seed, test_fraction=args.test_fraction)
    X = C.radiomics_table(train, cache, rcp.radiomics_version)[names]
    y = np.array([c.label for c in train])
    fitted = C.fit_module("Radiomics", X, y, seed=args.seed)
    C.save_model(fitted, args.out, version="2", groups=("radiomics",), training_cases=train, cnn_weight_files={},
                 metrics={"cv_auc_train": fitted.cv_auc, "data": "synthetic; a diagnostic, not a shipping candidate"},
                 radiomics_params=rcp.radiomics_params,
                 extra={"feature_recipe": rcp.name, "radiomics_antialias": rcp.antialias,
                        "cnn_slice_geometry": rcp.slice_geometry.spec() if rcp.slice_geometry else None,
                        "protocol": f"diagnostic: the seed's SFS + SVM limited to {args.names_from}'s selected features",
                        "feature_list": names})
    print(f"{len(train)} training cases; {len(names)} features offered, kept {fitted.selected}; "
          f"train-CV AUC {fitted.cv_auc:.3f} -> {args.out}")


if __name__ == "__main__":
    main()
