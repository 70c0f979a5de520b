"""Issue 16, part 3: site adaptation, measured — how many of its own cases a hospital needs before
retraining model 2 through the node gets close to a model trained on that hospital's true masks.

    .venv/bin/python benchmarks/site_adaptation.py [--cases 200] [--test 80] [--steps 60,90,120]
                     [--seed 1717] [--work var/bench/site_adaptation] [--json benchmarks/results/site_adaptation.json]

"Another hospital" is a cohort from a deliberately different generator configuration
(``training.synth.options.shifted_appearance``: matrix 256/512, 1 / 2.5 / 5 mm, other kernels, noise
textures, slice profiles, soft clot margins, another head mix). Its patients are split once, stratified
by the true label, into a held-out test set and a pool the site "collects". The pool goes the way a
site's data goes through the product, by its command line:

1. baseline + follow-up DICOM studies, no masks, a ``labels.csv`` naming them →
   ``ich-node dataset import`` (model 1, the served version, measures both; the label is the growth rule
   applied to model 1's volumes, as at a real site — not the generator's truth);
2. the first *k* imported cases included, the rest excluded (``DatasetStore.exclude``) →
   ``ich-node retrain --classifier --source node --promote never`` (the served protocol and feature recipe;
   its own gate against the served version on its own validation share), for each *k* in ``--steps``.

Every model is then scored the node's way on the same held-out site cases (``pipeline.classify``'s loader,
features cut from model 1's mask of the baseline, the generator's true label): (a) the shipped model as it
is, (b) each retrained candidate, (c) an oracle fitted by the same protocol on the whole pool with the
site's true masks and true labels. Printed and written: AUC (DeLong 95 % CI), Brier, ECE, the gate's
verdict per step, and the smallest *k* whose AUC is within 0.05 of the oracle's. A last retrain on the
whole pool, whose training share has permuted labels (its validation share keeps the truth), checks that
the gate refuses a worse model.

Synthetic data only: no clinical claim. The test set is small (its CIs are printed): read the curve, not
the third decimal.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.retrain import read_manifest  # noqa: E402
from training.trainers import ClassifierTrainer  # noqa: E402

ICH_NODE = [str(Path(sys.executable).with_name("ich-node"))]  # the console script of this environment
WITHIN = 0.05  # "close to the oracle": the margin


def _order_key(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}|{text}".encode()).hexdigest()


def split_site(rows: list[dict], n_test: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Held-out test (stratified by the true label) and the pool, each in a fixed pseudo-random order."""
    rows = sorted(rows, key=lambda r: _order_key(seed, r["patient_id"]))
    pos = [r for r in rows if int(r["expansion"])]
    test_pos = round(n_test * len(pos) / max(1, len(rows)))
    test = pos[:test_pos] + [r for r in rows if not int(r["expansion"])][: n_test - test_pos]
    ids = {r["case_id"] for r in test}
    return sorted(test, key=lambda r: _order_key(seed, r["patient_id"])), [r for r in rows if r["case_id"] not in ids]


def write_manifest(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = list(rows[0])
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


def model1_test_cohort(site: Path, test: list[dict], segmenter_dir: Path, out: Path) -> Path:
    """The held-out cases with model 1's baseline masks (what the node classifies) and the true label."""
    from pipeline.segment import load_segmenter
    from training.studies import measure

    if (out / "manifest.csv").is_file():
        return out
    seg = load_segmenter(segmenter_dir)
    rows = []
    for r in test:
        mask = out / "masks" / f"{r['case_id']}.nii.gz"
        m = measure(site / r["baseline_dir"], None, mask, segmenter=seg)
        rows.append({"case_id": r["case_id"], "patient_id": r["patient_id"], "baseline_dir": str(site / r["baseline_dir"]),
                     "baseline_mask": str(mask), "expansion": r["expansion"], "matrix": r["matrix"],
                     "slice_thickness_mm": r["slice_thickness_mm"], "model1_ml": f"{m.volume_ml:.3f}",
                     "true_ml": r["baseline_volume_ml"]})
    write_manifest(out / "manifest.csv", rows)
    return out


def model1_volumes(site: Path, test: list[dict], test_dir: Path) -> dict:
    """Issue 16 part 1's measures of model 1 on the held-out site baselines, per slice thickness: its
    volume against the generator's, Dice against the generator's mask (resampled onto the CT's grid, as
    ``training.evaluate_segmenter`` does), clots >= 2 mL missed."""
    from types import SimpleNamespace

    import SimpleITK as sitk

    from training.evaluate_segmenter import CaseResult, agreement_by_thickness, truth_on_grid

    truth = {r["case_id"]: r for r in test}
    results, cases = [], []
    for r in read_manifest(test_dir):
        pred_img = sitk.ReadImage(r["baseline_mask"])
        pred = sitk.GetArrayFromImage(pred_img) > 0
        true = truth_on_grid(site / truth[r["case_id"]]["baseline_mask"], SimpleNamespace(to_sitk=lambda: pred_img))
        both = int(pred.sum() + true.sum())
        dice = 2.0 * int((pred & true).sum()) / both if both else 1.0
        results.append(CaseResult(r["case_id"], float(r["true_ml"]), {"cnn": dice}, {"cnn": float(r["model1_ml"])}, {},
                                  float(r["slice_thickness_mm"])))
        cases.append({"case": r["case_id"], "thickness_mm": float(r["slice_thickness_mm"]), "matrix": int(r["matrix"]),
                      "true_ml": float(r["true_ml"]), "model1_ml": float(r["model1_ml"]), "dice": round(dice, 4)})
    return {"reference": "generator's continuous lesion volume (baseline_volume_ml)",
            "agreement": agreement_by_thickness(results), "cases": cases}


def true_mask_pool(site: Path, pool: list[dict], out: Path) -> Path:
    """The pool with the generator's masks and labels (the oracle's training data)."""
    rows = [{"case_id": r["case_id"], "patient_id": r["patient_id"], "baseline_dir": str(site / r["baseline_dir"]),
             "baseline_mask": str(site / r["baseline_mask"]), "expansion": r["expansion"]} for r in pool]
    write_manifest(out / "manifest.csv", rows)
    return out


def cli(*args: str, data_dir: Path, floors: dict | None = None, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    """``ich-node ARGS --data-dir DATA_DIR``, the way an admin runs it (embedded defaults; ``floors`` are
    [training] data floors for tiny test runs, as ICH_NODE__TRAINING__*). An exit status outside ``ok`` raises."""
    env = {k: v for k, v in os.environ.items() if k != "ICH_NODE_CONFIG" and not k.startswith("ICH_NODE__")}
    env.update({f"ICH_NODE__TRAINING__{k.upper()}": str(v) for k, v in (floors or {}).items()})
    proc = subprocess.run([*ICH_NODE, *args, "--data-dir", str(data_dir)], capture_output=True, text=True,
                          cwd=REPO, env=env)
    if proc.returncode not in ok:
        raise RuntimeError(f"ich-node {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc


def import_pool(site: Path, pool: list[dict], data_dir: Path, labels_from: str = "followup") -> dict[str, str]:
    """``ich-node dataset import`` of the pool (studies only); returns site case id → store case id."""
    from training.dataset import DatasetStore

    store = DatasetStore.for_data_dir(data_dir)
    known = {(c.extra or {}).get("site_case_id"): c.case_id for c in store.cases()}
    if not all(r["case_id"] in known for r in pool):
        labels = data_dir.parent / "site-labels.csv"
        label = (lambda r: {"followup": r["followup_dir"]}) if labels_from == "followup" else (
            lambda r: {"label": r["expansion"]})
        write_manifest(labels, [{"patient_id": r["patient_id"], "baseline": r["baseline_dir"], **label(r),
                                 "case_id": r["case_id"]} for r in pool if r["case_id"] not in known])
        # exit 1: some rows were reported and skipped (printed below)
        proc = cli("dataset", "import", str(site), "--labels", str(labels), data_dir=data_dir, ok=(0, 1))
        print("\n".join(line for line in proc.stdout.splitlines() if "✗" in line or "imported," in line), flush=True)
        known = {(c.extra or {}).get("site_case_id"): c.case_id for c in store.cases()}
    return {r["case_id"]: known[r["case_id"]] for r in pool if r["case_id"] in known}


def include_first(data_dir: Path, order: list[str], k: int) -> None:
    from training.dataset import DatasetStore

    store = DatasetStore.for_data_dir(data_dir)
    keep = set(order[:k])
    for case_id in order:
        store.exclude(case_id, "site_adaptation benchmark: not in this step", excluded=case_id not in keep)


def last_report(data_dir: Path) -> dict:
    runs = sorted((data_dir / "retrain" / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    return json.loads((runs[-1] / "report.json").read_text())


def score(trainer: ClassifierTrainer, model_dir: Path, test_dir: Path, out: Path) -> dict:
    """AUC (DeLong CI), Brier and ECE the retrain gate's way on the held-out site cases."""
    m = trainer.evaluate(model_dir, test_dir, out)
    return {"auc": m["auc"], "auc_ci95": m.get("auc_ci95"), "brier": m["brier"], "ece_10": m.get("ece_10"),
            "cases": m["cases"], "expanders": m["expanders"], "skipped": len(m["skipped"])}


def permuted_labels(data_dir: Path, order: list[str], seed: int, floors: dict) -> int:
    """Shuffle the labels of the included cases the retrain will *train* on (its validation share keeps
    the true labels, so the gate judges the worse model against the truth); returns how many moved."""
    from training.dataset import Case, DatasetStore
    from training.retrain import DataPolicy, in_validation

    store = DatasetStore.for_data_dir(data_dir)
    policy = DataPolicy(**{k: v for k, v in floors.items() if k in ("val_fraction", "split_salt")})
    cases = [c for c in map(store.case, order) if not in_validation(c.patient_hash, policy.val_fraction, policy.split_salt)]
    labels = np.random.default_rng(seed).permutation([c.label for c in cases])
    for c, lab in zip(cases, labels):
        store.upsert_case(Case(**{**c.__dict__, "label": int(lab)}))
    return sum(int(c.label != lab) for c, lab in zip(cases, labels))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=200, help="site patients generated (pool + test)")
    ap.add_argument("--test", type=int, default=80, help="held-out site patients")
    ap.add_argument("--steps", default="60,90,120", help="site cases imported before each retrain")
    ap.add_argument("--seed", type=int, default=1717)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--matrix", default="256,512")
    ap.add_argument("--thickness", default="1,2.5,5")
    ap.add_argument("--labels", choices=("followup", "truth"), default="followup",
                    help="followup: import both studies, label by model 1's growth (default); truth: import the "
                         "baseline with the generator's label (a site labelling from reports; half the model 1 runs)")
    ap.add_argument("--prevalence", type=float, default=0.25, help="expansion share at the site")
    ap.add_argument("--floor", action="append", default=[], metavar="NAME=N",
                    help="a [training] data floor for retrain, e.g. min_val_cases=4 (tiny test configurations only)")
    ap.add_argument("--models", type=Path, default=REPO / "models", help="bundled models (the site's served v1)")
    ap.add_argument("--work", type=Path, default=REPO / "var" / "bench" / "site_adaptation")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "site_adaptation.json")
    args = ap.parse_args(argv)

    from training.synth import write_cohort
    from training.synth.options import shifted_appearance

    t0 = time.monotonic()
    steps = [int(s) for s in args.steps.split(",")]
    matrices = tuple(int(m) for m in args.matrix.split(","))
    opts = shifted_appearance(matrix=max(matrices), matrix_choices=matrices if len(matrices) > 1 else (),
                              thickness_mm=tuple(float(t) for t in args.thickness.split(",")),
                              prevalence=args.prevalence)
    work = args.work
    site = work / f"site-seed{args.seed}-n{args.cases}"
    if not (site / "manifest.csv").is_file():
        print(f"generating the site cohort ({args.cases} patients, shifted appearance) …", flush=True)
        write_cohort(site, args.cases, args.seed, opts, workers=args.workers)
    timings = {"generate_s": round(time.monotonic() - t0, 1)}
    test, pool = split_site(read_manifest(site), args.test, args.seed)
    if max(steps) > len(pool):
        raise SystemExit(f"--steps goes to {max(steps)} but the pool holds {len(pool)} cases")
    shipped_seg, shipped_clf = args.models / "segmenter" / "1", args.models / "classifier" / "1"

    t = time.monotonic()
    test_dir = model1_test_cohort(site, test, shipped_seg, work / "test")
    volumes = model1_volumes(site, test, test_dir)
    a = volumes["agreement"]["all"]
    print(f"model 1 on the {a['n']} held-out baselines: median signed bias {a['median_signed_pct']:+.2f} %, "
          f"mean |dV| {a['mean_abs_ml']:.2f} mL, {a['missed_ge_2ml']} clot(s) >= 2 mL missed", flush=True)
    data_dir = work / "node"
    ids = import_pool(site, pool, data_dir, args.labels)
    order = [ids[r["case_id"]] for r in pool if r["case_id"] in ids]
    timings["model1_s"] = round(time.monotonic() - t, 1)
    print(f"site: {len(test)} held-out, {len(pool)} in the pool ({len(order)} imported); "
          f"model 1 on the test set and import: {timings['model1_s']:.0f} s", flush=True)

    evaluator = ClassifierTrainer(cache_dir=work / "eval-cache")
    t = time.monotonic()
    shipped = score(evaluator, shipped_clf, test_dir, work / "scores" / "shipped")
    print(f"(a) shipped v1, no retraining: AUC {shipped['auc']:.3f}", flush=True)

    oracle_dir = work / "oracle-model"
    if not (oracle_dir / "metadata.json").is_file():
        ClassifierTrainer(served_dir=shipped_clf, cache_dir=work / "oracle-cache").fit(
            true_mask_pool(site, pool, work / "oracle-cohort"), oracle_dir, parent_version="1")
    oracle = score(evaluator, oracle_dir, test_dir, work / "scores" / "oracle")
    print(f"(c) oracle (whole pool, true masks and labels): AUC {oracle['auc']:.3f}", flush=True)

    floors = {k: float(v) if "." in v else int(v) for k, v in (f.split("=") for f in args.floor)}
    curve = []
    for k in steps:
        include_first(data_dir, order, k)
        proc = cli("retrain", "--classifier", "--source", "node", "--promote", "never",
                   data_dir=data_dir, floors=floors, ok=(0, 3))  # 3: refused for lack of data
        # a step past what the import took (cases it refused: no hematoma found) includes all of them
        entry = {"site_cases": k, "included": min(k, len(order)), "exit": proc.returncode}
        if proc.returncode == 3:
            entry["refused"] = last_report(data_dir)["outcomes"][0].get("refused")
            print(f"(b) k={k}: retrain refused: {entry['refused']}", flush=True)
        else:
            o = last_report(data_dir)["outcomes"][0]
            model = data_dir / "models" / "classifier" / o["candidate_version"]
            entry.update(version=o["candidate_version"], gate_passed=o["gate"]["passed"], gate=o["gate"]["reasons"],
                         retrain_validation_auc=o["candidate_metrics"].get("auc"),
                         served_validation_auc=(o["served_metrics"] or {}).get("auc"),
                         test=score(evaluator, model, test_dir, work / "scores" / f"k{k}"))
            print(f"(b) k={k}: AUC {entry['test']['auc']:.3f} on the held-out site cases; gate "
                  f"{'passed' if entry['gate_passed'] else 'refused'}", flush=True)
        curve.append(entry)

    include_first(data_dir, order, max(steps))
    moved = permuted_labels(data_dir, order[: max(steps)], args.seed, floors)
    proc = cli("retrain", "--classifier", "--source", "node", "--promote", "auto", data_dir=data_dir,
               floors=floors, ok=(0, 3))
    sanity = {"exit": proc.returncode, "training_labels_changed": moved}
    if proc.returncode == 0:
        o = last_report(data_dir)["outcomes"][0]
        sanity.update(gate_passed=o["gate"]["passed"], promoted=o["promoted"], gate=o["gate"]["reasons"])
    verdict = ("retrain refused for lack of data (no gate verdict)" if proc.returncode != 0 else
               "gate refused it" if not sanity.get("promoted") else "PROMOTED (the gate failed to refuse it)")
    print(f"permuted training labels: {verdict}", flush=True)
    timings["models_s"] = round(time.monotonic() - t, 1)

    close = [e["site_cases"] for e in curve if e.get("test") and e["test"]["auc"] is not None
             and oracle["auc"] is not None and e["test"]["auc"] >= oracle["auc"] - WITHIN]
    result = {
        "command": "benchmarks/site_adaptation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": "synthetic; not a clinical accuracy claim",
        "site": {"seed": args.seed, "patients": args.cases, "options": opts.to_dict(), "test": len(test),
                 "test_expanders": sum(int(r["expansion"]) for r in test), "pool": len(pool), "imported": len(order),
                 "labels": args.labels},
        "training_floors": floors or "defaults", "model1_on_test": volumes, "shipped": shipped, "oracle": oracle, "curve": curve,
        "cases_to_within_0.05_of_oracle": min(close) if close else None,
        "permuted_labels_gate": sanity, "seconds": {**timings, "total": round(time.monotonic() - t0, 1)},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"cases to get within {WITHIN} of the oracle: {result['cases_to_within_0.05_of_oracle'] or 'not reached'}; "
          f"wrote {args.json}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
