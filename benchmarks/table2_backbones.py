"""Issue 16, part 4: Table 2 with warm-up backbones vs backbones pretrained on synthetic CT slices.

    ich-node evaluate classifier --cohort C --warmup-cohort W --cache K --out A          # warm-up (BatchNorm only)
    ich-node evaluate classifier --cohort C --pretrained-backbones P --cache K --out B   # pretrained (ich-node train backbones)
    .venv/bin/python benchmarks/table2_backbones.py --warmup A --pretrained B [--json OUT.json]

Both reports must come from the same cohort, split and feature cache (the radiomics columns are then
identical, which is checked). Per module: test AUC of each, the difference and DeLong's two-sided p on
the same held-out cases. Synthetic data only: no clinical claim.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def compare(warmup: pd.DataFrame, pretrained: pd.DataFrame) -> dict:
    """Per module shared by both prediction tables: AUCs, difference (pretrained − warm-up), DeLong p."""
    from training import stats

    if list(warmup["case_id"]) != list(pretrained["case_id"]) or list(warmup["label"]) != list(pretrained["label"]):
        raise ValueError("the two reports were scored on different cases: same cohort, split seed and cache needed")
    y = warmup["label"].to_numpy(int)
    out = {}
    for module in [c for c in warmup.columns if c in pretrained.columns and c not in ("case_id", "label")]:
        t = stats.delong_test(y, pretrained[module].to_numpy(float), warmup[module].to_numpy(float))
        out[module] = {"auc_warmup": round(t["auc2"], 4), "auc_pretrained": round(t["auc1"], 4),
                       "diff": round(t["diff"], 4), "delong_p": round(t["p"], 4),
                       "same_predictions": bool(np.allclose(warmup[module], pretrained[module]))}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warmup", type=Path, required=True, help="report folder of the warm-up run")
    ap.add_argument("--pretrained", type=Path, required=True, help="report folder of the pretrained run")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    res = compare(pd.read_csv(args.warmup / "test_predictions.csv"), pd.read_csv(args.pretrained / "test_predictions.csv"))
    print(f"{'module':<24} {'warm-up':>8} {'pretrained':>10} {'diff':>7} {'DeLong p':>9}")
    for m, r in res.items():
        print(f"{m:<24} {r['auc_warmup']:8.3f} {r['auc_pretrained']:10.3f} {r['diff']:+7.3f} {r['delong_p']:9.3f}")
    if args.json:
        reports = {k: json.loads((d / "evaluation.json").read_text()) for k, d in
                   (("warmup", args.warmup), ("pretrained", args.pretrained))}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "table2_backbones", "issue": "16 part 4",
            "command": "benchmarks/table2_backbones.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "comparison": res,
            "reports": {k: {"cohort": r["cohort"], "seed": r["seed"], "train": r["train"], "test": r["test"],
                            "selected_by_train_cv": r["selected_by_train_cv"],
                            "modules": {m: {"auc": v["auc"], "cv_auc_train": v.get("cv_auc_train"),
                                            "brier": v["brier"], "calibration": v["calibration"],
                                            "confusion": v["confusion"], "selected_features": v.get("selected_features")}
                                        for m, v in r["modules"].items()}}
                        for k, r in reports.items()},
            "note": "synthetic data only; no clinical accuracy is claimed"}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
