"""Issue 16, part 2: a classifier cohort of a thousand-odd mixed cases, built in parts on a small machine.

    .venv/bin/python benchmarks/classifier_cohort.py --out var/m2big/cohort --cases 1000 --part 100 \
        --seed 2612 [--features v2] [--workers 2] [--minutes 90] [--keep-dicom]

Why parts: one mixed-matrix case is ≈ 30 MB of DICOM and ≈ 7 s of one core (render + features), so a
cohort that gives every (matrix, slice thickness) domain a few dozen expanders does not fit one
sitting or one disk. Each part is written by ``write_cohort(..., first=k * part)`` (the same cases as one
big cohort), **baselines only** (the expansion label is drawn, not measured on the follow-up image;
the classifier reads the baseline and the label), then its features are cut the recipe's way into
one shared ``FeatureCache`` (``OUT/features-cache``) and, unless ``--keep-dicom``, its DICOM is deleted
(masks, manifest and features stay; ``ich-node train classifier --cache`` needs nothing else). A
part already featurised is skipped, so a stopped run goes on where it stopped; ``--minutes M``
starts no part after M minutes. ``OUT/manifest.csv`` lists the finished parts' cases (paths
into ``parts/``), so ``OUT`` is an ordinary cohort for ``ich-node train classifier`` and
``benchmarks/classifier_domains.py`` (which needs the DICOM of its test cases: ``--keep-dicom``).
``--features none`` renders only (DICOM kept, no cache): a cohort that models are run on the node's
way (``classifier_domains.py --all-cases``) needs no cached features.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training import classifier as C  # noqa: E402
from training.synth import SynthOptions, write_cohort  # noqa: E402
from training.synth.cohort import MANIFEST_COLUMNS  # noqa: E402


def synth_options() -> SynthOptions:
    """Session 8's v2 cohort (``ich-node synth --matrix 256,512 --thickness 1,2.5,5 --prevalence 0.3 --rle``)
    without follow-up studies."""
    return SynthOptions(matrix=512, matrix_choices=(256, 512), thickness_mm=(1.0, 2.5, 5.0), prevalence=0.3,
                        dicom_rle=True, write_followup=False)


DONE = "features.done"  # written into a part once its features are cached


def merge(out: Path, parts: list[Path]) -> int:
    """``OUT/manifest.csv``: every finished part's rows, paths made relative to ``OUT``."""
    rows = []
    for part in parts:
        rel = part.relative_to(out).as_posix()
        with open(part / "manifest.csv", newline="") as fh:
            for r in csv.DictReader(fh):
                for col in ("baseline_dir", "baseline_mask", "followup_dir", "followup_mask"):
                    if r.get(col):
                        r[col] = f"{rel}/{r[col]}"
                rows.append(r)
    tmp = out / "manifest.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out / "manifest.csv")
    return len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--part", type=int, default=100, help="cases per part")
    ap.add_argument("--seed", type=int, default=2612)
    ap.add_argument("--features", default="v2",
                    help="feature recipe (pipeline.features.recipe), or 'none' to render only (DICOM kept)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--minutes", type=float, default=None, help="start no new part after this many minutes")
    ap.add_argument("--keep-dicom", action="store_true", help="keep each part's DICOM (needed to run models on it)")
    args = ap.parse_args()

    from pipeline.features.recipe import recipe

    rcp = None if args.features == "none" else recipe(args.features)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cache = None if rcp is None else C.FeatureCache(out / "features-cache")
    opts = synth_options()
    meta = {"seed": args.seed, "cases": args.cases, "part": args.part, "features": rcp.name if rcp else "none",
            "options": opts.to_dict(), "command": " ".join(sys.argv)}
    (out / "build.json").write_text(json.dumps(meta, indent=1, default=list))
    deadline = None if args.minutes is None else time.monotonic() + 60 * args.minutes
    done: list[Path] = []
    for k, first in enumerate(range(0, args.cases, args.part)):
        part = out / "parts" / f"p{k:03d}"
        n = min(args.part, args.cases - first)
        if (part / DONE).is_file():
            done.append(part)
            continue
        if deadline is not None and time.monotonic() >= deadline:
            print(f"--minutes {args.minutes:g} passed: {len(done)} parts done", flush=True)
            break
        t0 = time.time()
        if part.exists() and not (part / "manifest.csv").is_file():
            shutil.rmtree(part)   # a part stopped while rendering: render it again
        if not part.exists():
            write_cohort(part, n, args.seed, opts, workers=args.workers, first=first)
        t1 = time.time()
        if rcp is not None:
            C.extract_base(C.read_cohort(part), cache, rcp.radiomics_params, geometry=rcp.slice_geometry,
                           antialias=rcp.antialias)
        t2 = time.time()
        (part / DONE).write_text(rcp.name if rcp else "none")
        if rcp is not None and not args.keep_dicom:
            for d in (part / "cases").glob("*/baseline"):
                shutil.rmtree(d)
        done.append(part)
        total = merge(out, done)
        print(f"part {k} (cases {first}..{first + n - 1}): synth {t1 - t0:.0f} s, features {t2 - t1:.0f} s; "
              f"cohort now {total} cases", flush=True)
    total = merge(out, done) if done else 0
    print(f"{total} cases in {out / 'manifest.csv'}", flush=True)


if __name__ == "__main__":
    main()
