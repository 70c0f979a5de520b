"""Contact sheets for eyeballing a cohort: per case, the baseline and follow-up slice with the
most hematoma, brain window, ground-truth outline, labels in the title.  A synthetic cohort is
only trustworthy if someone looked at it."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _slice(series) -> tuple[np.ndarray, np.ndarray]:
    m = series.mask_on_hu_grid()
    k = int(np.argmax((m == 1).sum(axis=(1, 2)))) if (m == 1).any() else series.hu.shape[0] // 2
    return series.hu[k], m[k]


def save_preview(case, path: Path) -> Path:
    """Write a PNG (baseline | follow-up) for one SynthCase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    for ax, series, name, vol in ((axes[0], case.baseline, "baseline", case.baseline_volume_ml),
                                  (axes[1], case.followup, "follow-up", case.followup_volume_ml)):
        if series is None:   # a baselines-only cohort
            ax.axis("off")
            continue
        img, lab = _slice(series)
        ax.imshow(img, cmap="gray", vmin=0, vmax=80)
        if (lab == 1).any():
            ax.contour(lab == 1, levels=[0.5], colors="r", linewidths=0.6)
        if (lab == 2).any():
            ax.contour(lab == 2, levels=[0.5], colors="c", linewidths=0.6)
        ax.set_title(f"{name} {vol:.1f} mL, {series.acq.thickness_mm:g} mm, tilt {series.acq.tilt_deg:.0f}°", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{case.case_id} {case.head_source} {case.location}{' +IVH' if case.ivh else ''} "
                 f"{'EXPANSION' if case.expansion else 'no expansion'} {case.growth_pct:+.0f}% "
                 f"[{', '.join(case.marker_names) or 'no markers'}]", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return path
