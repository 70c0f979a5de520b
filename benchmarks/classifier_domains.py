"""Issue 16, part 2: does model 2 hold up across matrix and slice thickness? AUC by domain, calibration.

    .venv/bin/python benchmarks/classifier_domains.py --cohort var/m2v2/cohort \
        --model var/m2v2/model [--model ANOTHER ...] [--baseline models/classifier/1] [--all-cases] \
        [--json benchmarks/results/classifier_domains.json]

The test split is the one the candidate model's own report held out (``<model>/report/test_predictions.csv``,
never seen in its training), or with ``--all-cases`` every case of a cohort generated later. Every model
is run the node's way (``pipeline.classify.load_classifier``,
``predict(volume, mask)`` with the cohort's ground-truth baseline mask), so each cuts its own features
(v1: native grid; v2: 1 mm, mm-cut slices). Printed and written per model: AUC overall and per
(matrix, slice thickness) domain, the worst domain's distance to the best, ECE (10 equal-width bins),
calibration slope, each model's median seconds per case, and the registry's promotion gate
(``training.retrain.gate``, the rule ``ich-node retrain`` applies) for each candidate against the baseline on
these cases. Synthetic data only; with ~100 test cases a
domain holds ~10–25 cases, so its AUC is noisy (the count and positives are printed beside it).
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


def _domain(d: tuple) -> str:
    return f"{d[0]}x{d[1]:g}mm"


def _spread(y: np.ndarray, p: np.ndarray, groups: np.ndarray) -> float | None:
    aucs = [a for g in np.unique(groups) if (a := _auc(y[groups == g], p[groups == g])) is not None]
    return (max(aucs) - min(aucs)) if len(aucs) > 1 else None


def spread_by_chance(y: np.ndarray, p: np.ndarray, domains: list[tuple], n: int = 2000, seed: int = 0) -> dict:
    """How far apart the domains' AUCs fall when they share one ROC: the cases' domains are shuffled
    within each class (every domain keeps its cases and expanders), ``n`` times. Why: with a few dozen
    cases per domain the best-minus-worst spread is mostly noise; this says how much of it."""
    groups = np.array([_domain(d) for d in domains])
    observed = _spread(y, p, groups)
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(n):
        g = groups.copy()
        for cls in (0, 1):
            idx = np.flatnonzero(y == cls)
            g[idx] = g[rng.permutation(idx)]
        if (s := _spread(y, p, g)) is not None:
            null.append(s)
    null_arr = np.array(null)
    if observed is None or not len(null_arr):   # fewer than two domains with both classes
        return {"observed": observed, "null_median": None, "null_p95": None, "p_value": None, "permutations": 0}
    return {"observed": observed, "null_median": float(np.median(null_arr)), "null_p95": float(np.quantile(null_arr, 0.95)),
            "p_value": float((1 + (null_arr >= observed).sum()) / (1 + len(null_arr))),
            "permutations": len(null_arr)}


def score(y: np.ndarray, p: np.ndarray, domains: list[tuple]) -> dict:
    by = {}
    for d in sorted(set(domains)):
        idx = np.array([x == d for x in domains])
        auc = _auc(y[idx], p[idx])
        ci = list(stats.delong_auc_ci(y[idx], p[idx])[1:]) if auc is not None else None
        by[_domain(d)] = {"cases": int(idx.sum()), "positives": int(y[idx].sum()), "auc": auc, "auc_ci95": ci}
    aucs = [v["auc"] for v in by.values() if v["auc"] is not None]
    cal = stats.calibration(y, p)
    return {"auc": _auc(y, p), "auc_ci95": list(stats.delong_auc_ci(y, p)[1:]), "by_domain": by,
            "worst_below_best": (max(aucs) - min(aucs)) if aucs else None,
            "spread_by_chance": spread_by_chance(y, p, domains),
            "ece_10": stats.ece(y, p), "calibration_slope": cal["slope"], "brier": cal["brier"],
            "mean_predicted": cal["mean_predicted"], "observed_rate": cal["observed_rate"]}


def judge(candidate: dict, baseline: dict, cases: int) -> dict:
    """The registry's gate (AUC ≥ baseline − margin, Brier ≤ baseline + margin, AUC CI above chance)."""
    from training.retrain import GatePolicy, gate

    def metrics(m: dict) -> dict:
        return {"auc": m["auc"], "brier": m["brier"], "auc_ci95": m["auc_ci95"], "cases": cases}

    decision = gate("classifier", metrics(candidate), metrics(baseline), GatePolicy())
    return {"passed": decision.passed, "reasons": decision.reasons}


def _predict(case, loaded: dict) -> dict[str, tuple[float, float]]:
    """One case through every model, the node's way (the case's DICOM and ground-truth mask):
    {role: (probability, seconds)}."""
    volume, mask = C.load_case(case)
    out = {}
    for role, clf in loaded.items():
        t = time.perf_counter()
        out[role] = (clf.predict(volume, mask).probability, time.perf_counter() - t)
    return out


def roles(candidates: list[Path]) -> dict[str, Path]:
    """``candidate`` for one model; ``candidate:<dir name>`` for each of several (names must differ)."""
    if len(candidates) == 1:
        return {"candidate": candidates[0]}
    named = {f"candidate:{p.name}": p for p in candidates}
    if len(named) != len(candidates):
        raise SystemExit("--model directories must have different names")
    return named


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True, action="append",
                    help="candidate model dir (its report/ names the test split); repeat to judge several "
                         "candidates on the same cases (without --all-cases: the first one's test split)")
    ap.add_argument("--baseline", type=Path, default=REPO / "models" / "classifier" / "1")
    ap.add_argument("--all-cases", action="store_true",
                    help="score every case of COHORT (a fresh cohort neither model trained on), not the candidate's test split")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "classifier_domains.json")
    args = ap.parse_args()

    with open(args.cohort / "manifest.csv", newline="") as fh:
        rows = {r["case_id"]: r for r in csv.DictReader(fh)}
    cases = {c.case_id: c for c in C.read_cohort(args.cohort)}
    if args.all_cases:   # a cohort neither model has seen: every case is held out
        test_ids = list(cases)
    else:
        with open(args.model[0] / "report" / "test_predictions.csv", newline="") as fh:
            test_ids = [r["case_id"] for r in csv.DictReader(fh)]
    test = [cases[i] for i in test_ids]
    domains = [(int(rows[c.case_id]["matrix"]), float(rows[c.case_id]["slice_thickness_mm"])) for c in test]
    y = np.array([c.label for c in test])

    candidates = roles(args.model)
    models = {"baseline": args.baseline, **candidates}
    out = {"benchmark": "classifier_domains", "issue": "16 part 2", "cohort": str(args.cohort),
           "command": " ".join(sys.argv), "test_cases": len(test), "test_positives": int(y.sum()), "models": {},
           "note": "synthetic data only; no clinical accuracy is claimed"}
    t0 = time.time()
    loaded = {role: load_classifier(path) for role, path in models.items()}
    per_case = []   # one case at a time: radiomics spreads each over the cores (a case pool over it deadlocked)
    for i, case in enumerate(test, 1):
        per_case.append(_predict(case, loaded))
        if i % 50 == 0 or i == len(test):
            print(f"{i}/{len(test)} cases scored, {time.time() - t0:.0f} s", flush=True)
    probs = {role: np.array([pc[role][0] for pc in per_case]) for role in models}
    seconds = {role: float(np.median([pc[role][1] for pc in per_case])) for role in models}
    for role, path in models.items():
        extra = loaded[role].metadata.extra or {}
        out["models"][role] = {"dir": str(path), "module": extra.get("module"),
                               "radiomics_params": extra.get("radiomics_params"),
                               "cnn_slice_geometry": extra.get("cnn_slice_geometry"),
                               "median_seconds_per_case": round(seconds[role], 3), **score(y, probs[role], domains)}
    out["seconds"] = round(time.time() - t0, 1)
    gates = {r: judge(out["models"][r], out["models"]["baseline"], len(test)) for r in candidates}
    delong = {r: stats.delong_test(y, probs[r], probs["baseline"]) for r in candidates}
    if len(candidates) == 1:   # the layout of the results committed before several candidates were possible
        out["gate"], out["candidate_vs_baseline_delong"] = gates["candidate"], delong["candidate"]
    else:
        out["gates"], out["candidates_vs_baseline_delong"] = gates, delong

    for role, m in out["models"].items():
        print(f"{role:9s} {m['dir']}  ({m['module']}, {m['radiomics_params']}; "
              f"{m['median_seconds_per_case']:.2f} s per case, median)")
        print(f"  AUC {m['auc']:.3f} (95% CI {m['auc_ci95'][0]:.3f}-{m['auc_ci95'][1]:.3f})  ECE {m['ece_10']:.3f}  "
              f"slope {m['calibration_slope']:.2f}  mean p {m['mean_predicted']:.3f} vs rate {m['observed_rate']:.3f}")
        for d, v in m["by_domain"].items():
            auc = "  n/a" if v["auc"] is None else f"{v['auc']:.3f} ({v['auc_ci95'][0]:.2f}-{v['auc_ci95'][1]:.2f})"
            print(f"    {d:12s} n={v['cases']:3d} pos={v['positives']:2d}  AUC {auc}")
        ch = m["spread_by_chance"]
        if m["worst_below_best"] is not None and ch["p_value"] is not None:
            print(f"  worst domain below best: {m['worst_below_best']:.3f} (bar: 0.03); one shared ROC gives "
                  f"{ch['null_median']:.3f} (95th percentile {ch['null_p95']:.3f}), p = {ch['p_value']:.3f}")
    for role, g in gates.items():
        print(f"gate for {role} ({'passed' if g['passed'] else 'refused'}): " + "; ".join(g["reasons"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    per_case_csv = args.json.with_name(f"{args.json.stem}_cases.csv")
    with open(per_case_csv, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "matrix", "slice_thickness_mm", "expansion", *(f"p_{r}" for r in probs)])
        for i, c in enumerate(test):
            w.writerow([c.case_id, *domains[i], int(y[i]), *(f"{probs[r][i]:.6f}" for r in probs)])
    print(f"-> {args.json}, {per_case_csv}")


if __name__ == "__main__":
    main()
