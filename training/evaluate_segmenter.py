"""Evaluate model 1 on a held-out cohort against the classical baseline, plus false positives on a
real normal head.

Per case: the pipeline's own loading and brain extraction, the ground-truth mask resampled by physical
coordinates onto the analysis grid, Dice and volume (mL) for the CNN and the classical baseline. Summary:
median/mean Dice, mean absolute volume error, Bland–Altman bias and 95 % limits of agreement, a
Bland–Altman PNG, and the hematoma volume each model finds on a normal head (every voxel is a false
positive). Bars from the issue: median Dice ≥ 0.90, false positives ≤ 0.5 mL.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from pipeline.segment.preprocess import select_labels
from training.segmenter import TARGET_LABELS, dice, read_cohort
from training.stats import median_ci95

BAR_MEDIAN_DICE = 0.90
BAR_FP_ML = 0.5
# issue 16 "volumes you can trust", on held-out cases of a differently configured generator
BAR_MEDIAN_BIAS_PCT = 3.0       # |median signed volume error| in % of the true volume
BAR_MEAN_ABS_ML = 1.0           # mean |predicted - true| volume
MISSED_MIN_ML = 2.0             # a clot of at least this size ...
MISSED_MAX_DICE = 0.05          # ... found with Dice at most this is missed


@dataclass
class CaseResult:
    case_id: str
    true_ml: float
    dice: dict[str, float]
    volume_ml: dict[str, float]
    seconds: dict[str, float]
    thickness_mm: float | None = None


def truth_on_grid(mask_path: Path, volume, labels: tuple[int, ...] | None = (1,)) -> np.ndarray:
    """Ground-truth mask resampled (physical coordinates, linear ≥ 0.5) onto the volume's grid."""
    mask = select_labels(sitk.ReadImage(str(mask_path)), labels)
    out = sitk.Resample(mask, volume.to_sitk(), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out) >= 0.5


def _summary(values: list[float]) -> dict:
    a = np.asarray(values, float)
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "median": float(np.median(a)), "mean": float(a.mean()),
            "q25": float(np.percentile(a, 25)), "q75": float(np.percentile(a, 75)), "min": float(a.min()),
            "median_ci95": median_ci95(a)}


def bland_altman(true_ml: np.ndarray, pred_ml: np.ndarray) -> dict:
    diff = np.asarray(pred_ml, float) - np.asarray(true_ml, float)
    bias, sd = float(diff.mean()), float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    return {"bias_ml": bias, "loa_low_ml": bias - 1.96 * sd, "loa_high_ml": bias + 1.96 * sd,
            "mean_abs_error_ml": float(np.abs(diff).mean())}


def volume_agreement(true_ml, pred_ml, dice_values=None) -> dict:
    """Signed volume error of a set of cases: what issue 16 asks for (median signed % bias, mean |ΔV|,
    clots ≥ 2 mL missed), plus the Bland–Altman numbers."""
    t, p = np.asarray(true_ml, float), np.asarray(pred_ml, float)
    if t.size == 0:
        return {"n": 0}
    diff = p - t
    pct = 100.0 * diff / np.maximum(t, 1e-9)
    out = {"n": int(t.size), "median_signed_pct": float(np.median(pct)), "mean_signed_ml": float(diff.mean()),
           "mean_abs_ml": float(np.abs(diff).mean()), "under_estimated": int((diff < 0).sum()),
           **{k: v for k, v in bland_altman(t, p).items() if k != "mean_abs_error_ml"}}
    if dice_values is not None:
        d = np.asarray(dice_values, float)
        out["missed_ge_2ml"] = int(((t >= MISSED_MIN_ML) & (d <= MISSED_MAX_DICE)).sum())
    out["bars"] = {"median_bias_within_3pct": bool(abs(out["median_signed_pct"]) <= BAR_MEDIAN_BIAS_PCT),
                   "mean_abs_le_1ml": bool(out["mean_abs_ml"] <= BAR_MEAN_ABS_ML),
                   **({"none_missed": out["missed_ge_2ml"] == 0} if "missed_ge_2ml" in out else {})}
    return out


def agreement_by_thickness(results: list[CaseResult], name: str = "cnn") -> dict:
    """``volume_agreement`` over all cases and per slice thickness (keys like "5mm")."""
    def agree(rs):
        return volume_agreement([r.true_ml for r in rs], [r.volume_ml[name] for r in rs], [r.dice[name] for r in rs])

    return {"all": agree(results), **{f"{t:g}mm": agree(rs) for t, rs in _by_thickness(results).items()}}


def _by_thickness(results: list[CaseResult]) -> dict[float, list[CaseResult]]:
    """The cases of each slice thickness, thinnest first (cases without one left out)."""
    return {t: [r for r in results if r.thickness_mm == t]
            for t in sorted({r.thickness_mm for r in results if r.thickness_mm is not None})}


def plot_bland_altman_by_thickness(results: list[CaseResult], path: Path, title: str, name: str = "cnn") -> Path:
    """One Bland–Altman panel per slice thickness (the issue-16 report), for segmenter ``name``."""
    groups = {f"{t:g} mm": rs for t, rs in _by_thickness(results).items()} or {"all": results}
    panels = {k: (np.array([r.true_ml for r in rs]), np.array([r.volume_ml[name] for r in rs])) for k, rs in groups.items()}
    return _plot_panels(panels, path, title)


def plot_bland_altman(true_ml: np.ndarray, preds: dict[str, np.ndarray], path: Path, title: str) -> Path:
    return _plot_panels({name: (true_ml, pred) for name, pred in preds.items()}, path, title)


def _plot_panels(panels: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False, sharey=True)
    for ax, (name, (true_ml, pred)) in zip(axes[0], panels.items()):
        mean, diff = (pred + true_ml) / 2, pred - true_ml
        stats = bland_altman(true_ml, pred)
        ax.scatter(mean, diff, s=14, alpha=0.7)
        for y, style in ((stats["bias_ml"], "-"), (stats["loa_low_ml"], "--"), (stats["loa_high_ml"], "--")):
            ax.axhline(y, color="tab:red", linestyle=style, linewidth=1)
        ax.set_title(f"{name} (n={len(true_ml)}): bias {stats['bias_ml']:+.2f} mL, LoA [{stats['loa_low_ml']:+.2f}, "
                     f"{stats['loa_high_ml']:+.2f}]", fontsize=9)
        ax.set_xlabel("mean of predicted and true volume (mL)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("predicted − true volume (mL)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def false_positive_ml(series_dir: Path, segmenters: dict) -> dict[str, float]:
    """Hematoma volume each segmenter finds on a normal head: all of it is false positive."""
    from pipeline.brain import extract_brain
    from pipeline.volume import load_series

    volume = load_series(series_dir).volume
    brain = extract_brain(volume)
    return {name: float(seg.predict_mask(volume, brain).sum() * volume.voxel_volume_ml)
            for name, seg in segmenters.items()}


def evaluate_segmenter(cohort_dir: Path, model_dir: Path, out_dir: Path, *, normal_head: Path | None = None,
                       baseline: bool = True, limit: int | None = None,
                       progress: Callable[[str], None] | None = print) -> dict:
    """Evaluate ``model_dir`` on the baseline scans of ``cohort_dir``; write metrics.json, cases.csv and
    bland_altman.png to ``out_dir``; return the metrics."""
    from pipeline.brain import extract_brain
    from pipeline.segment import load_segmenter
    from pipeline.volume import load_series

    say = progress or (lambda _m: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cohort = read_cohort(cohort_dir, phases=("baseline",))
    items = cohort.volumes[:limit] if limit else cohort.volumes
    thickness = {r["case_id"]: float(r["slice_thickness_mm"]) for r in cohort.rows if r.get("slice_thickness_mm")}
    segmenters = {"cnn": load_segmenter(model_dir)}
    meta_extra = getattr(segmenters["cnn"], "metadata", None)
    labels = tuple((meta_extra.extra or {}).get("target_labels", TARGET_LABELS)) if meta_extra else TARGET_LABELS
    if baseline:
        segmenters["classical"] = load_segmenter(None)
    results: list[CaseResult] = []
    for i, item in enumerate(items, 1):
        t0 = time.monotonic()
        volume = load_series(item.series_dir).volume
        brain = extract_brain(volume)
        truth = truth_on_grid(item.mask_path, volume, labels)
        true_ml = item.volume_ml if item.volume_ml is not None else float(truth.sum() * volume.voxel_volume_ml)
        dices, vols, secs = {}, {}, {"load": time.monotonic() - t0}
        for name, seg in segmenters.items():
            t1 = time.monotonic()
            mask = seg.predict_mask(volume, brain)
            secs[name] = round(time.monotonic() - t1, 2)
            dices[name] = dice(mask, truth)
            vols[name] = float(mask.sum() * volume.voxel_volume_ml)
        results.append(CaseResult(item.case_id, true_ml, dices, vols, secs, thickness.get(item.case_id)))
        say(f"[{i}/{len(items)}] {item.case_id}: true {true_ml:.1f} mL  "
            + "  ".join(f"{n} Dice {dices[n]:.3f} vol {vols[n]:.1f}" for n in segmenters))
    if not results:
        raise ValueError(f"{cohort_dir}: no cases to evaluate")

    true_ml = np.array([r.true_ml for r in results])
    summary: dict = {"cases": len(results), "cohort": str(cohort_dir), "fingerprint": cohort.fingerprint(
        {r.case_id for r in results}), "model": str(model_dir), "models": {}}
    for name in segmenters:
        pred = np.array([r.volume_ml[name] for r in results])
        summary["models"][name] = {
            "dice": _summary([r.dice[name] for r in results]),
            "volume": bland_altman(true_ml, pred),
            "volume_by_thickness": agreement_by_thickness(results, name),
            "seconds_per_case": float(np.mean([r.seconds[name] for r in results])),
        }
    if normal_head is not None:
        say(f"false positives on the normal head {Path(normal_head).name} …")
        fp = false_positive_ml(Path(normal_head), segmenters)
        summary["normal_head"] = {"series": Path(normal_head).name, "false_positive_ml": fp}
    cnn = summary["models"]["cnn"]
    summary["bars"] = {
        "median_dice_ge_0.90": bool(cnn["dice"]["median"] >= BAR_MEDIAN_DICE),
        "false_positive_le_0.5_ml": (bool(summary["normal_head"]["false_positive_ml"]["cnn"] <= BAR_FP_ML)
                                     if normal_head is not None else None),
    }
    plot_bland_altman(true_ml, {n: np.array([r.volume_ml[n] for r in results]) for n in segmenters},
                      out_dir / "bland_altman.png",
                      f"Hematoma volume, {len(results)} held-out synthetic cases ({Path(cohort_dir).name})")
    plot_bland_altman_by_thickness(results, out_dir / "bland_altman_thickness.png",
                                   f"CNN hematoma volume by slice thickness ({Path(cohort_dir).name}, synthetic)")
    write_cases_csv(results, list(segmenters), out_dir / "cases.csv")
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


def write_cases_csv(results: list[CaseResult], names: list[str], path: Path) -> Path:
    with Path(path).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "true_ml", *[f"{n}_dice" for n in names], *[f"{n}_ml" for n in names], "thickness_mm"])
        for r in results:
            w.writerow([r.case_id, f"{r.true_ml:.3f}", *[f"{r.dice[n]:.4f}" for n in names],
                        *[f"{r.volume_ml[n]:.3f}" for n in names], "" if r.thickness_mm is None else f"{r.thickness_mm:g}"])
    return Path(path)
