"""Issue 16, part 1: is model 1's hematoma volume biased on data it was not trained on?

    .venv/bin/python benchmarks/volume_bias.py [--model models/segmenter/N] [--work var/bench/volume_bias]
                                               [--cases 5=30,2.5=6,1=4] [--seed 1616]

Held-out cohorts from a deliberately *different* generator configuration
(``training.synth.options.shifted_appearance``: matrix 256/512, other noise textures, softer and
edge-enhancing kernels, slice profiles with tails, soft clot margins, another real/phantom head mix,
more noise), one cohort per slice thickness (seed + index of the thickness), generated into --work when
missing. Each baseline series goes through the evaluation code of ``ich-node evaluate segmenter``
(the pipeline's loading, brain extraction and the model's own runtime); the reference is the
generator's continuous lesion volume. Prints and writes ``benchmarks/results/volume_bias_vN.json``
(``volume_bias.json`` for version 1, its name before there were two; ``--model`` defaults to the
highest bundled version, the one a new node serves) and the per-case rows beside it (``…_cases.csv``)
(per thickness: median signed % bias, mean |dV|, Bland–Altman, clots >= 2 mL missed; per case) and
``bland_altman_thickness.png`` + ``cases.csv`` under --work; the false-positive volume on the real
normal GE head (found beside the repository) is added. Synthetic data only: no clinical claim.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.evaluate_segmenter import (  # noqa: E402
    CaseResult, agreement_by_thickness, evaluate_segmenter, false_positive_ml, plot_bland_altman_by_thickness,
    write_cases_csv)
from pipeline.models import ModelPaths  # noqa: E402
from training.synth import write_cohort  # noqa: E402
from training.synth.options import shifted_appearance  # noqa: E402


def parse_cases(text: str) -> dict[float, int]:
    out = {}
    for part in text.split(","):
        t, n = part.split("=")
        out[float(t)] = int(n)
    return out


TRAITS = ("head_source", "matrix", "ivh", "marker_hypodensity", "marker_blend")  # manifest columns broken down


def breakdown(results: list[CaseResult], traits: dict[str, dict[str, str]]) -> dict[str, dict]:
    """Mean |ΔV| and mean ΔV (mL) per value of each generator trait: which kind of case carries the error."""
    groups: dict[str, list[float]] = {}
    for r in results:
        for trait, value in traits.get(r.case_id, {}).items():
            if value != "":
                groups.setdefault(f"{trait}={value}", []).append(r.volume_ml["cnn"] - r.true_ml)
    return {k: {"n": len(v), "mean_abs_ml": round(sum(map(abs, v)) / len(v), 3),
                "mean_signed_ml": round(sum(v) / len(v), 3)} for k, v in sorted(groups.items())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="model 1 directory (default: the highest bundled)")
    ap.add_argument("--work", type=Path, default=REPO / "var" / "bench" / "volume_bias")
    ap.add_argument("--cases", default="5=30,2.5=6,1=4", help="thickness=cases, comma-separated")
    ap.add_argument("--seed", type=int, default=1616, help="cohort seed of the first thickness (+1, +2 … for the next)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no-normal-head", action="store_true")
    args = ap.parse_args(argv)
    args.model = args.model or ModelPaths.bundled().segmenter
    if args.out is None:
        name = "volume_bias.json" if args.model.name == "1" else f"volume_bias_v{args.model.name}.json"
        args.out = REPO / "benchmarks" / "results" / name

    t_start = time.monotonic()
    results: list[CaseResult] = []
    traits: dict[str, dict[str, str]] = {}  # case → what the generator drew for it (manifest)
    cohorts = {}
    for i, (thickness, n) in enumerate(parse_cases(args.cases).items()):
        seed = args.seed + i
        cohort = args.work / f"shifted-{thickness:g}mm-seed{seed}-n{n}"
        if not (cohort / "manifest.csv").is_file():
            print(f"generating {cohort.name} …", flush=True)
            write_cohort(cohort, n, seed, shifted_appearance(thickness_mm=(thickness,)), workers=args.workers)
        summary = evaluate_segmenter(cohort, args.model, args.work / "eval" / cohort.name, baseline=False)
        cohorts[f"{thickness:g}mm"] = {"dir": cohort.name, "seed": seed, "cases": n, "fingerprint": summary["fingerprint"]}
        with (cohort / "manifest.csv").open() as fh:
            for row in csv.DictReader(fh):
                traits[f"{thickness:g}mm/{row['case_id']}"] = {k: row.get(k, "") for k in TRAITS}
        with (args.work / "eval" / cohort.name / "cases.csv").open() as fh:
            for row in csv.DictReader(fh):
                results.append(CaseResult(f"{thickness:g}mm/{row['case_id']}", float(row["true_ml"]),
                                          {"cnn": float(row["cnn_dice"])}, {"cnn": float(row["cnn_ml"])}, {},
                                          thickness))
    agreement = agreement_by_thickness(results)
    by_trait = breakdown(results, traits)
    normal = None
    if not args.no_normal_head:
        from training.synth.realhead import real_head_dir
        from pipeline.segment import load_segmenter

        head = real_head_dir()
        normal = {"series": head.name, "false_positive_ml": false_positive_ml(head, {"cnn": load_segmenter(args.model)})["cnn"]}
    plot_bland_altman_by_thickness(results, args.work / "bland_altman_thickness.png",
                                   f"{args.model.name}: volume on held-out shifted-appearance synthetic cases")
    write_cases_csv(results, ["cnn"], args.work / "cases.csv")
    out = {"benchmark": "volume_bias", "issue": "16 part 1", "model": str(args.model.relative_to(REPO) if args.model.is_absolute() and REPO in args.model.parents else args.model),
           "generator": "training.synth.options.shifted_appearance", "cohorts": cohorts,
           "reference": "generator's continuous lesion volume (baseline_volume_ml)", "agreement": agreement,
           "normal_head": normal, "by_trait": by_trait, "seconds": round(time.monotonic() - t_start, 1),
           "cases": [{"case": r.case_id, "thickness_mm": r.thickness_mm, "true_ml": r.true_ml,
                      "pred_ml": r.volume_ml["cnn"], "dice": r.dice["cnn"], **traits.get(r.case_id, {})}
                     for r in results],
           "note": "synthetic data only; no clinical accuracy is claimed"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    with args.out.with_name(args.out.stem + "_cases.csv").open("w", newline="") as fh:  # the raw rows, beside it
        w = csv.DictWriter(fh, fieldnames=list(out["cases"][0]))
        w.writeheader()
        w.writerows(out["cases"])
    for key, a in agreement.items():
        print(f"{key:>6}: n={a['n']:3d}  median signed {a['median_signed_pct']:+6.2f} %  mean dV {a['mean_signed_ml']:+6.2f} mL  "
              f"mean |dV| {a['mean_abs_ml']:5.2f} mL  under {a['under_estimated']}/{a['n']}  missed>=2mL {a['missed_ge_2ml']}")
    for key, g in by_trait.items():
        print(f"{key:>22}: n={g['n']:3d}  mean |dV| {g['mean_abs_ml']:5.2f} mL  mean dV {g['mean_signed_ml']:+6.2f} mL")
    if normal:
        print(f"normal head {normal['series']}: {normal['false_positive_ml']:.2f} mL false positive")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
