"""Issue 16, part 1: where does model 1 lose hematoma volume — the CNN, the edge refinement or the brain mask?

    .venv/bin/python benchmarks/volume_loss.py --cohort DIR [--cohort DIR ...] [--model models/segmenter/N]
                                               [--cache var/bench/volume_loss] [--json OUT.json]

For every baseline of each cohort (``ich-node synth`` output with its ground-truth masks) the model's
probability map on the CT grid is computed once (cached as ``<cache>/<model key>/<cohort>/<case>.npz``, the
key naming the model directory and a digest of its files: the map,
brain mask and truth), then the true hematoma's volume is split into where it ends up:
kept by the shipped runtime, outside the brain mask (no segmenter sees it), below the CNN's threshold
(the network never called it), or called by the CNN and dropped by the edge refinement. Cases are grouped
by whether the generator drew a hypodensity marker (blend, black hole, swirl, hypodensity). The answer
decides what to change: the threshold or the edge rule cannot recover voxels the CNN gives p < 0.5.
Synthetic data only: no clinical claim.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def decompose(truth: np.ndarray, prob: np.ndarray, brain: np.ndarray, final: np.ndarray, threshold: float,
              voxel_ml: float, negative: np.ndarray | None = None) -> dict:
    """The true hematoma's volume (mL) split by where it went, and the false positives split by whether
    they lie on blood that is not the target (``negative``: intraventricular); all arrays on one grid."""
    truth, brain, final = truth.astype(bool), brain.astype(bool), final.astype(bool)
    called = prob >= threshold
    lost = truth & ~final
    return {
        "true_mask_ml": float(truth.sum() * voxel_ml),
        "predicted_ml": float(final.sum() * voxel_ml),
        "kept_ml": float((truth & final).sum() * voxel_ml),
        "lost_outside_brain_ml": float((lost & ~brain).sum() * voxel_ml),
        "lost_below_threshold_ml": float((lost & brain & ~called).sum() * voxel_ml),
        "lost_by_refinement_ml": float((lost & brain & called).sum() * voxel_ml),
        "false_positive_ml": float((final & ~truth).sum() * voxel_ml),
        "false_positive_on_ivh_ml": float((final & ~truth & negative).sum() * voxel_ml) if negative is not None else 0.0,
    }


def summarise(rows: list[dict]) -> dict:
    """Mean of each part over the cases, beside issue 16's volume measures (``volume_agreement``)."""
    from training.evaluate_segmenter import volume_agreement

    keys = ("true_mask_ml", "predicted_ml", "lost_outside_brain_ml", "lost_below_threshold_ml",
            "lost_by_refinement_ml", "false_positive_ml", "false_positive_on_ivh_ml")
    out = {"n": len(rows)}
    if rows:
        out.update({f"mean_{k}": round(float(np.mean([r[k] for r in rows])), 3) for k in keys})
        out["agreement"] = volume_agreement([r["reference_ml"] for r in rows], [r["predicted_ml"] for r in rows],
                                            [r["dice"] for r in rows])
    return out


def case_maps(seg, series_dir: Path, mask_path: Path, cache: Path):
    from pipeline.brain import extract_brain
    from pipeline.volume import load_series
    from training.evaluate_segmenter import truth_on_grid
    from training.segmenter import NEGATIVE_LABELS, TARGET_LABELS

    volume = load_series(series_dir).volume
    if cache.is_file():
        z = np.load(cache)
        return volume, z["prob"].astype(np.float32), z["brain"], z["truth"], z["negative"]
    brain = extract_brain(volume)
    truth = truth_on_grid(mask_path, volume, TARGET_LABELS)
    negative = truth_on_grid(mask_path, volume, NEGATIVE_LABELS)
    prob = seg.predict_proba(volume, brain)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, prob=prob.astype(np.float16), brain=brain, truth=truth, negative=negative)
    return volume, prob.astype(np.float16).astype(np.float32), brain, truth, negative


def model_key(model_dir: Path) -> str:
    """``<name>-<digest of the directory's files>``: two candidates both called "3" never share cached maps."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        h.update(f.relative_to(model_dir).as_posix().encode() + b"\0" + f.read_bytes())
    return f"{Path(model_dir).name}-{h.hexdigest()[:12]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", type=Path, action="append", required=True)
    ap.add_argument("--model", type=Path, default=None, help="model 1 directory (default: the highest bundled)")
    ap.add_argument("--cache", type=Path, default=REPO / "var" / "bench" / "volume_loss")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.model is None:
        from pipeline.models import ModelPaths

        args.model = ModelPaths.bundled().segmenter

    from pipeline.segment import load_segmenter
    from training.segmenter import dice

    t0 = time.monotonic()
    seg = load_segmenter(args.model)
    cfg = seg.config
    rows = []
    key = model_key(args.model)
    for cohort in args.cohort:
        for r in csv.DictReader((cohort / "manifest.csv").open()):
            volume, prob, brain, truth, negative = case_maps(
                seg, cohort / r["baseline_dir"], cohort / r["baseline_mask"],
                args.cache / key / cohort.name / f"{r['case_id']}.npz")
            final = seg.mask_from_proba(volume, brain.astype(bool), prob)
            row = {"cohort": cohort.name, "case": r["case_id"], "markers": r.get("markers", ""),
                   "hypodense_marker": r.get("marker_hypodensity") == "1",
                   "reference_ml": float(r["baseline_volume_ml"]), "dice": float(dice(final, truth)),
                   "ivh": r.get("ivh") == "1",
                   **decompose(truth, prob, brain, final, cfg.threshold, volume.voxel_volume_ml, negative)}
            rows.append({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
            print(f"{cohort.name} {r['case_id']} {'H' if row['hypodense_marker'] else ' '} true {row['reference_ml']:6.1f} "
                  f"pred {row['predicted_ml']:6.1f} | lost: below threshold {row['lost_below_threshold_ml']:5.2f}  "
                  f"refinement {row['lost_by_refinement_ml']:5.2f}  outside brain {row['lost_outside_brain_ml']:5.2f}", flush=True)
    groups = {"all": rows, "hypodensity_marker": [r for r in rows if r["hypodense_marker"]],
              "no_hypodensity_marker": [r for r in rows if not r["hypodense_marker"]],
              "intraventricular_blood": [r for r in rows if r["ivh"]]}
    summary = {k: summarise(v) for k, v in groups.items()}
    for k, s in summary.items():
        if s["n"]:
            a = s["agreement"]
            print(f"{k:>22}: n={s['n']:2d}  median signed {a['median_signed_pct']:+6.2f} %  mean |dV| {a['mean_abs_ml']:.2f} mL  "
                  f"mean lost below threshold {s['mean_lost_below_threshold_ml']:.2f}, by refinement "
                  f"{s['mean_lost_by_refinement_ml']:.2f}, outside brain {s['mean_lost_outside_brain_ml']:.2f} mL; "
                  f"false positive {s['mean_false_positive_ml']:.2f} (on ventricular blood {s['mean_false_positive_on_ivh_ml']:.2f})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "volume_loss", "issue": "16 part 1", "model": args.model.name,
            "command": "benchmarks/volume_loss.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "cohorts": [c.name for c in args.cohort], "summary": summary, "cases": rows,
            "seconds": round(time.monotonic() - t0, 1), "note": "synthetic data only; no clinical accuracy is claimed"},
            indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
