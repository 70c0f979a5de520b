"""Write a whole cohort: DICOM studies, ground-truth masks, ``manifest.csv`` and ``cohort.json``.

Cases are independent (seeded by ``case_seed(seed, index)``), so the output does not depend on
the number of worker processes, and a cohort of N cases is a prefix of a cohort of N+M (``first``
starts a cohort further on: parts written separately concatenate into that same cohort).
"""

from __future__ import annotations

import csv
import json
import os
import platform
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .case import SynthCase, case_seed, generate_case
from .dicom import uid, write_series
from .options import MARKERS, SynthOptions

GENERATOR_VERSION = "1.0"

MANIFEST_COLUMNS = [
    "case_id", "patient_id", "head_source", "location", "ivh", "slice_thickness_mm", "tilt_deg", "matrix",
    "baseline_dir", "followup_dir", "baseline_mask", "followup_mask",
    "baseline_study_uid", "baseline_series_uid", "followup_study_uid", "followup_series_uid", "interval_h",
    "baseline_volume_ml", "followup_volume_ml", "growth_ml", "growth_pct", "expansion",
    "markers", *[f"marker_{m}" for m in MARKERS], "seed",
    "followup_tilt_deg", "pixel_mm", "baseline_n_slices", "followup_n_slices",
    "baseline_mask_volume_ml", "followup_mask_volume_ml", "baseline_datetime", "followup_datetime",
]


def _write_mask(path: Path, series) -> float:
    import SimpleITK as sitk

    sitk.WriteImage(series.mask_image(), str(path), useCompression=True)
    return float((series.mask == 1).sum() * np.prod(series.mask_grid.spacing) / 1000.0)


def write_case(out_dir: Path, case: SynthCase, cohort_seed: int, index: int, rle: bool = False) -> dict:
    """Write one case under ``out_dir/cases/<case_id>`` and return its manifest row."""
    cdir = out_dir / "cases" / case.case_id
    root = f"{cohort_seed}/{index}"
    row: dict = {}
    name = f"SYNTH^{case.case_id.upper()}"
    for which, series, number in (("baseline", case.baseline, 2), ("followup", case.followup, 2)):
        if series is None:   # SynthOptions(write_followup=False): labels only, no follow-up study
            continue
        study_uid, series_uid = uid(root, which, "study"), uid(root, which, "series")
        write_series(cdir / which, series, patient_id=case.patient_id, patient_name=name, sex=case.patient_sex,
                     age=case.patient_age, study_uid=study_uid, series_uid=series_uid,
                     frame_uid=uid(root, which, "for"), study_id="1" if which == "baseline" else "2",
                     accession=f"A{case_seed(cohort_seed, index) % 10**7:07d}{0 if which == 'baseline' else 1}",
                     series_number=number, uid_root=f"{root}/{which}", rle=rle)
        mvol = _write_mask(cdir / f"{which}_mask.nii.gz", series)
        row.update({f"{which}_dir": f"cases/{case.case_id}/{which}", f"{which}_mask": f"cases/{case.case_id}/{which}_mask.nii.gz",
                    f"{which}_study_uid": study_uid, f"{which}_series_uid": series_uid,
                    f"{which}_n_slices": series.acq.n_slices, f"{which}_mask_volume_ml": round(mvol, 3),
                    f"{which}_datetime": series.acquired.isoformat(timespec="seconds")})
    row.update(manifest_labels(case))
    if case.extra.get("appearance"):   # only for the wider appearance model (a default cohort is unchanged)
        (cdir / "appearance.json").write_text(json.dumps(
            {"baseline": case.extra["appearance"][0], "followup": case.extra["appearance"][1],
             "noise_hu": case.extra["noise_hu"]}, indent=1))
    return row


def manifest_labels(case: SynthCase) -> dict:
    """The label/metadata columns of a case (everything but paths and UIDs)."""
    b = case.baseline
    return {
        "case_id": case.case_id, "patient_id": case.patient_id, "head_source": case.head_source,
        "location": case.location, "ivh": int(case.ivh), "slice_thickness_mm": b.acq.thickness_mm,
        "tilt_deg": round(b.acq.tilt_deg, 2), "matrix": b.acq.matrix, "interval_h": round(case.interval_h, 2),
        "baseline_volume_ml": round(case.baseline_volume_ml, 3), "followup_volume_ml": round(case.followup_volume_ml, 3),
        "growth_ml": round(case.growth_ml, 3), "growth_pct": round(case.growth_pct, 2), "expansion": int(case.expansion),
        "markers": ";".join(case.marker_names), **{f"marker_{m}": int(case.markers[m]) for m in MARKERS},
        "seed": case.seed, "followup_tilt_deg": round(case.followup.acq.tilt_deg, 2) if case.followup else "",
        "pixel_mm": round(b.acq.pixel_mm, 5),
    }


def _job(args) -> dict:
    out_dir, seed, index, opts_dict, previews = args
    opts = SynthOptions.from_dict(opts_dict)
    cs = case_seed(seed, index)
    case = generate_case(cs, opts, case_id=f"case{index:05d}")
    if index < previews:
        from .preview import save_preview

        save_preview(case, Path(out_dir) / "previews" / f"{case.case_id}.png")
    return write_case(Path(out_dir), case, seed, index, rle=opts.dicom_rle)


def write_cohort(out_dir: str | os.PathLike, n_cases: int, seed: int = 0, options: SynthOptions | None = None, *,
                 workers: int = 1, progress: Callable[[int], None] | None = None, previews: int = 0,
                 first: int = 0) -> Path:
    """Generate cases ``first`` .. ``first + n_cases - 1`` into ``out_dir``; returns the manifest path.

    ``progress(k)`` is called after each finished case (the CLI feeds a progress bar with it);
    the first ``previews`` cases also get a PNG contact sheet in ``out_dir/previews``.
    ``options.write_followup=False`` writes baselines only (the expansion label is drawn, not measured
    on the follow-up image, so it is the same): half the time and disk for classifier training, but no
    follow-up study for anything that reads one (the manifest's follow-up columns stay empty).
    """
    opts = options or SynthOptions()
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    if first < 0:
        raise ValueError(f"first must be >= 0, got {first}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "manifest.csv").exists() or (out / "cases").exists():
        raise FileExistsError(f"{out} already holds a cohort; choose an empty directory")
    jobs = [(str(out), int(seed), i, opts.to_dict(), int(previews)) for i in range(first, first + n_cases)]
    rows: list[dict] = []
    if workers <= 1:
        for j in jobs:
            rows.append(_job(j))
            if progress:
                progress(1)
    else:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            for row in ex.map(_job, jobs):
                rows.append(row)
                if progress:
                    progress(1)
    manifest = out / "manifest.csv"
    tmp = manifest.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in MANIFEST_COLUMNS})
    tmp.replace(manifest)
    meta = {"generator": "ich-node training.synth", "version": GENERATOR_VERSION, "seed": int(seed),
            "n_cases": n_cases, "first": int(first), "followups": opts.write_followup, "options": opts.to_dict(), "summary": summarize(rows),
            "labels": {"1": "intracerebral hematoma", "2": "intraventricular blood"},
            "python": platform.python_version()}
    (out / "cohort.json").write_text(json.dumps(meta, indent=2, default=list))
    return manifest


def cohort_statistics(n_cases: int, seed: int = 0, options: SynthOptions | None = None,
                      progress: Callable[[int], None] | None = None) -> dict:
    """Summary statistics of the cohort ``write_cohort`` would write, without rendering (~20 ms a
    case): the same per-case seeds, labels, markers and volumes (volumes to ~2 %)."""
    opts = options or SynthOptions()
    rows = []
    for i in range(n_cases):
        case = generate_case(case_seed(seed, i), opts, case_id=f"case{i:05d}", render=False)
        rows.append(manifest_labels(case))
        if progress:
            progress(1)
    out = summarize(rows)
    g = np.array([r["growth_pct"] for r in rows if not r["expansion"]])
    out["non_expanders_shrinking"] = float(np.mean(g < 0)) if g.size else None
    out["non_expanders_median_abs_growth_pct"] = float(np.median(np.abs(g))) if g.size else None
    v0 = np.array([r["baseline_volume_ml"] for r in rows])
    out["baseline_volume_quartiles_ml"] = [float(q) for q in np.percentile(v0, [25, 50, 75])]
    return out


def summarize(rows: list[dict]) -> dict:
    """Cohort statistics to compare with the request (also used by tests and docs)."""
    if not rows:
        return {}
    exp = np.array([int(r["expansion"]) for r in rows])
    v0 = np.array([float(r["baseline_volume_ml"]) for r in rows])
    out: dict = {"n": len(rows), "expansion_prevalence": float(exp.mean()),
                 "baseline_volume_median_ml": float(np.median(v0)),
                 "baseline_volume_log_sd": float(np.std(np.log(v0))),
                 "baseline_volume_range_ml": [float(v0.min()), float(v0.max())],
                 "ivh_rate": float(np.mean([int(r["ivh"]) for r in rows]))}
    locs: dict[str, int] = {}
    for r in rows:
        locs[r["location"]] = locs.get(r["location"], 0) + 1
    out["locations"] = {k: v / len(rows) for k, v in sorted(locs.items())}
    rates = {}
    for m in MARKERS:
        col = np.array([int(r[f"marker_{m}"]) for r in rows])
        rates[m] = {"given_expansion": float(col[exp == 1].mean()) if (exp == 1).any() else None,
                    "given_no_expansion": float(col[exp == 0].mean()) if (exp == 0).any() else None}
    out["marker_rates"] = rates
    return out
