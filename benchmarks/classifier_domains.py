"""Issue 16, part 2: does model 2 hold up across matrix and slice thickness? AUC by domain, calibration.

    .venv/bin/python benchmarks/classifier_domains.py --cohort var/m2v2/cohort \
        --model var/m2v2/model [--baseline models/classifier/1] [--json benchmarks/results/classifier_domains.json]

The test split is the one the candidate model's own report held out (``<model>/report/test_predictions.csv``,
never seen in its training). Every model is run the node's way (``pipeline.classify.load_classifier``,
``predict(volume, mask)`` with the cohort's ground-truth baseline mask), so each cuts its own features
(v1: native grid; v2: 1 mm, mm-cut slices). Printed and written per model: AUC overall and per
(matrix, slice thickness) domain, the worst domain's distance to the best, ECE (10 equal-width bins),
calibration slope, and the registry's promotion gate (``training.retrain.gate``, the rule ``ich-node retrain``
applies) for the candidate against the baseline on these cases. Synthetic data only; with ~100 test cases a domain holds ~10–25 cases, so its AUC
is noisy (the count and positives are printed beside it).
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
sys.path.insert(0, str(REPO))

from pipeline.classify import load_classifier  # noqa: E402
from training import classifier as C  # noqa: E402
from training import stats  # noqa: E402


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None


def score(y: np.ndarray, p: np.ndarray, domains: list[tuple]) -> dict:
    by = {}
    for d in sorted(set(domains)):
        idx = np.array([x == d for x in domains])
        by[f"{d[0]}x{d[1]:g}mm"] = {"cases": int(idx.sum()), "positives": int(y[idx].sum()), "auc": _auc(y[idx], p[idx])}
    aucs = [v["auc"] for v in by.values() if v["auc"] is not None]
    cal = stats.calibration(y, p)
    return {"auc": _auc(y, p), "auc_ci95": list(stats.delong_auc_ci(y, p)[1:]), "by_domain": by,
            "worst_below_best": (max(aucs) - min(aucs)) if aucs else None,
            "ece_10": stats.ece(y, p), "calibration_slope": cal["slope"], "brier": cal["brier"],
            "mean_predicted": cal["mean_predicted"], "observed_rate": cal["observed_rate"]}


def judge(candidate: dict, baseline: dict, cases: int) -> dict:
    """The registry's gate (AUC ≥ baseline − margin, Brier ≤ baseline + margin, AUC CI above chance)."""
    from training.retrain import GatePolicy, gate

    def metrics(m: dict) -> dict:
        return {"auc": m["auc"], "brier": m["brier"], "auc_ci95": m["auc_ci95"], "cases": cases}

    decision = gate("classifier", metrics(candidate), metrics(baseline), GatePolicy())
    return {"passed": decision.passed, "reasons": decision.reasons}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True, help="candidate model dir (its report/ names the test split)")
    ap.add_argument("--baseline", type=Path, default=REPO / "models" / "classifier" / "1")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "classifier_domains.json")
    args = ap.parse_args()

    with open(args.model / "report" / "test_predictions.csv", newline="") as fh:
        test_ids = [r["case_id"] for r in csv.DictReader(fh)]
    with open(args.cohort / "manifest.csv", newline="") as fh:
        rows = {r["case_id"]: r for r in csv.DictReader(fh)}
    cases = {c.case_id: c for c in C.read_cohort(args.cohort)}
    test = [cases[i] for i in test_ids]
    domains = [(int(rows[c.case_id]["matrix"]), float(rows[c.case_id]["slice_thickness_mm"])) for c in test]
    y = np.array([c.label for c in test])

    models = {"baseline": args.baseline, "candidate": args.model}
    out = {"benchmark": "classifier_domains", "issue": "16 part 2", "cohort": str(args.cohort),
           "test_cases": len(test), "test_positives": int(y.sum()), "models": {},
           "note": "synthetic data only; no clinical accuracy is claimed"}
    t0 = time.time()
    for role, path in models.items():
        clf = load_classifier(path)
        extra = clf.metadata.extra or {}
        p = []
        for case in test:
            volume, mask = C.load_case(case)
            p.append(clf.predict(volume, mask).probability)
        p = np.array(p)
        out["models"][role] = {"dir": str(path), "module": extra.get("module"),
                               "radiomics_params": extra.get("radiomics_params"),
                               "cnn_slice_geometry": extra.get("cnn_slice_geometry"), **score(y, p, domains)}
    out["seconds"] = round(time.time() - t0, 1)
    out["gate"] = judge(out["models"]["candidate"], out["models"]["baseline"], len(test))

    for role, m in out["models"].items():
        print(f"{role:9s} {m['dir']}  ({m['module']}, {m['radiomics_params']})")
        print(f"  AUC {m['auc']:.3f} (95% CI {m['auc_ci95'][0]:.3f}-{m['auc_ci95'][1]:.3f})  ECE {m['ece_10']:.3f}  "
              f"slope {m['calibration_slope']:.2f}  mean p {m['mean_predicted']:.3f} vs rate {m['observed_rate']:.3f}")
        for d, v in m["by_domain"].items():
            auc = "  n/a" if v["auc"] is None else f"{v['auc']:.3f}"
            print(f"    {d:12s} n={v['cases']:3d} pos={v['positives']:2d}  AUC {auc}")
        if m["worst_below_best"] is not None:
            print(f"  worst domain below best: {m['worst_below_best']:.3f} (bar: 0.03)")
    print(f"gate ({'passed' if out['gate']['passed'] else 'refused'}): " + "; ".join(out["gate"]["reasons"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"-> {args.json}")


if __name__ == "__main__":
    main()
