"""Issue 16 part 2: which pre-filter in front of SFS? Chosen on a validation cohort, never on the judgement one.

    .venv/bin/python benchmarks/classifier_selection.py --cohort var/m2big/cohort --features v4 \
        --validation var/m2fresh/cohort --baseline-csv benchmarks/results/classifier_domains_fresh600_cases.csv \
        --json benchmarks/results/classifier_selection_v4_fresh600_validation.json

Every variant fits the seed's SFS + SVM + sigmoid calibration (``training.classifier.fit_module``) on the same
training split as ``ich-node train classifier --test-fraction`` and the recipe's cached radiomics; only the
columns SFS is offered differ (``training.selection``: F-test or worst-domain ranking, with or without a
correlation cap), each ranked on the training cases alone. Scored on the validation cohort's features of the
same recipe (computed where not cached by ``training.classifier.extract_base``, the node's feature code): AUC, ECE, per
domain, and the shipped v1's probabilities on the same cases (``--baseline-csv``, the node's way) with a paired
DeLong test and the gate's AUC bar (v1 − 0.02). The validation cohort may choose a variant; it cannot judge it.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

from classifier_domains import score  # noqa: E402
from pipeline.features.recipe import recipe  # noqa: E402
from training import classifier as C  # noqa: E402
from training import selection as S  # noqa: E402
from training import stats  # noqa: E402

# `ich-node train classifier --prefilter NAME`; "protocol" is the seed's (F-test top 20 inside the CV)
VARIANTS = ("protocol", "f_test-20-r0.8", "domain_stable-20", "domain_stable-20-r0.8", "domain_stable-40-r0.8")


def _cases(cohort: Path, cache: C.FeatureCache, rcp) -> list:
    """The cohort's cases with the recipe's features, computed (and cached) where missing."""
    every = C.read_cohort(cohort)
    C.extract_base(every, cache, rcp.radiomics_params, geometry=rcp.slice_geometry, antialias=rcp.antialias)
    cases = [c for c in every if cache.has(c.case_id, f"{rcp.radiomics_version}.json")]
    if len(cases) < len(every):
        sys.exit(f"{len(every) - len(cases)} of {len(every)} cases of {cohort} have no {rcp.radiomics_version} "
                 f"features (empty masks?)")
    return cases


def _fit(name: str, X, y, domains, seed: int) -> dict:
    t0 = time.time()
    fm = C.fit_module("Radiomics", X, y, seed=seed, prefilter=S.Prefilter.parse(name), domains=domains)
    return {"name": name, "fitted": fm, "seconds": round(time.time() - t0, 1)}


def main() -> None:
    from joblib import Parallel, delayed

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", type=Path, required=True, help="training cohort (features cached there)")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--features", default="v4")
    ap.add_argument("--validation", type=Path, required=True, help="validation cohort (features cached in its features-cache)")
    ap.add_argument("--baseline-csv", type=Path, required=True,
                    help="per-case CSV of classifier_domains.py on the validation cohort (p_baseline: shipped v1)")
    ap.add_argument("--variant", action="append", help=f"a --prefilter of ich-node train classifier (default: {', '.join(VARIANTS)})")
    ap.add_argument("--test-fraction", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()

    rcp = recipe(args.features)
    cache = C.FeatureCache(args.cache or args.cohort / "features-cache")
    train, _ = C.split_cohort(_cases(args.cohort, cache, rcp), args.seed,
                              test_fraction=args.test_fraction)
    X = C.radiomics_table(train, cache, rcp.radiomics_version)
    y = np.array([c.label for c in train])
    domains = C.case_domains(train, cache)

    vcache = C.FeatureCache(args.validation / "features-cache")
    val = _cases(args.validation, vcache, rcp)
    Xv = C.radiomics_table(val, vcache, rcp.radiomics_version)[X.columns]
    yv = np.array([c.label for c in val])
    vdomains = C.case_domains(val, vcache)
    with open(args.baseline_csv, newline="") as fh:
        base = {r["case_id"]: float(r["p_baseline"]) for r in csv.DictReader(fh)}
    pv1 = np.array([base[c.case_id] for c in val])
    v1 = score(yv, pv1, vdomains)

    names = args.variant or list(VARIANTS)
    fits = Parallel(n_jobs=min(args.jobs, len(names)))(
        delayed(_fit)(n, X, y, domains, args.seed) for n in names)
    out = {"benchmark": "classifier_selection", "issue": "16 part 2", "command": " ".join(sys.argv),
           "features": rcp.name, "train_cases": len(train), "train_positives": int(y.sum()),
           "validation": str(args.validation), "validation_cases": len(val), "validation_positives": int(yv.sum()),
           "baseline_v1": v1, "variants": {},
           "note": "validation cohort: it chooses among variants, it cannot judge the one chosen; synthetic data"}
    print(f"v1 (shipped) on {args.validation}: AUC {v1['auc']:.3f}  ECE {v1['ece_10']:.3f}  "
          f"worst below best {v1['worst_below_best']:.3f}; gate bar {v1['auc'] - 0.02:.3f}")
    for f in fits:
        fm = f["fitted"]
        p = fm.probability(Xv)
        s = score(yv, p, vdomains)
        s.update({"train_cv_auc": fm.cv_auc, "best_params": fm.best_params, "selected": fm.selected,
                  "offered": list(fm.pipeline.feature_names_in_) if len(fm.pipeline.feature_names_in_) < 100 else None,
                  "fit_seconds": f["seconds"],
                  "delong_vs_v1": stats.delong_test(yv, p, pv1)})
        out["variants"][f["name"]] = s
        dom = " ".join(f"{k} {v['auc']:.3f}" for k, v in s["by_domain"].items())
        print(f"{f['name']:24s} train-CV {fm.cv_auc:.3f}  validation AUC {s['auc']:.3f}  ECE {s['ece_10']:.3f}  "
              f"worst below best {s['worst_below_best']:.3f}  ({f['seconds']:.0f} s)\n    {dom}\n    kept {fm.selected}",
              flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(f"-> {args.json}")


if __name__ == "__main__":
    main()
