"""`ich-node train segmenter` and `ich-node evaluate segmenter`: model 1 (3D U-Net) from a cohort."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

GE_HEAD = Path(os.environ.get("ICH_CT_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ct"
               ) / "ge-human-head-tilted"


def _fail(message: str, code: int = 1) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add ``segmenter`` to the ``train`` and ``evaluate`` groups."""

    @groups["train"].command("segmenter")
    def train_segmenter(
        cohort: Path = typer.Option(..., "--cohort", exists=True, file_okay=False, help="Cohort folder with manifest.csv (ich-node synth)."),
        out: Path = typer.Option(..., "--out", help="New versioned model directory, e.g. models/segmenter/2."),
        epochs: int = typer.Option(20, "--epochs", min=1),
        steps_per_epoch: int = typer.Option(60, "--steps-per-epoch", min=1),
        batch_size: int = typer.Option(2, "--batch-size", min=1),
        learning_rate: float = typer.Option(1e-3, "--learning-rate"),
        base_filters: int = typer.Option(8, "--base-filters", min=2, help="Filters of the first U-Net level."),
        spacing: float = typer.Option(1.5, "--spacing", help="Isotropic model-grid spacing (mm)."),
        patch: int = typer.Option(64, "--patch", help="Cubic training patch size (voxels, multiple of 8)."),
        val_fraction: float = typer.Option(0.15, "--val-fraction"),
        refine: bool = typer.Option(True, "--refine/--no-refine",
                                    help="Re-draw the mask's edge at the CT's resolution at inference (preprocess.json)."),
        tta: bool = typer.Option(True, "--tta/--no-tta",
                                 help="At inference also predict on the left-right mirrored volume and average (2× time)."),
        hypodense_share: float = typer.Option(0.0, "--hypodense-share", min=0.0, max=1.0,
                                              help="Share of hematoma patches centred on its hypodense part (blend sign, black hole)."),
        hypodense_weight: float = typer.Option(1.0, "--hypodense-weight", min=1.0,
                                               help="Cross-entropy weight of hypodense hematoma voxels (1 = unweighted)."),
        negative_weight: float = typer.Option(1.0, "--negative-weight", min=1.0,
                                              help="Cross-entropy weight of intraventricular blood voxels (not hematoma; 1 = unweighted)."),
        extra_cohort: Optional[list[Path]] = typer.Option(None, "--extra-cohort", exists=True, file_okay=False,
                                                          help="Another cohort whose cases all train (repeatable); validation stays --cohort's."),
        max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop after this wall time; keep the best epoch."),
        threads: Optional[int] = typer.Option(None, "--threads", help="TensorFlow CPU threads (default: all allowed CPUs)."),
        workers: int = typer.Option(1, "--workers", min=1, help="Processes preparing volumes before training."),
        seed: int = typer.Option(0, "--seed"),
        version: Optional[str] = typer.Option(None, "--version", help="Model version (default: the --out folder name if numeric)."),
        parent_version: Optional[str] = typer.Option(None, "--parent-version"),
        init_from: Optional[Path] = typer.Option(None, "--init-from", exists=True, file_okay=False,
                                                 help="Start from this model directory's weights (fine-tuning)."),
        cache: Optional[Path] = typer.Option(None, "--cache", help="Where prepared arrays are cached (default COHORT/.cache/segmenter)."),
    ) -> None:
        """Train the 3D U-Net hematoma segmenter on a (synthetic) cohort; writes a versioned model directory."""
        from pipeline.segment.preprocess import PreprocessConfig
        from training.segmenter import TrainConfig, train_segmenter as train

        try:
            pre = PreprocessConfig(spacing_mm=spacing, patch=(patch, patch, patch), refine=refine,
                                   tta_flips=((2,),) if tta else ())
            cfg = TrainConfig(epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size,
                              learning_rate=learning_rate, base_filters=base_filters, val_fraction=val_fraction,
                              seed=seed, max_minutes=max_minutes, threads=threads, workers=workers,
                              init_from=init_from, hypodense_share=hypodense_share,
                              hypodense_weight=hypodense_weight, negative_weight=negative_weight, preprocess=pre)
            result = train(cohort, out, cfg, version=version, parent_version=parent_version, cache_dir=cache,
                           extra_cohorts=extra_cohort or ())
        except (ValueError, FileNotFoundError, FileExistsError) as exc:
            raise _fail(str(exc))
        typer.echo(f"model {result.metadata.name} v{result.metadata.version} → {result.model_dir}")

    @groups["evaluate"].command("segmenter")
    def evaluate_segmenter(
        cohort: Path = typer.Option(..., "--cohort", exists=True, file_okay=False, help="Held-out cohort (manifest.csv)."),
        model: Path = typer.Option(..., "--model", exists=True, file_okay=False, help="Model directory to evaluate."),
        out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default MODEL/evaluation)."),
        normal_head: Optional[Path] = typer.Option(GE_HEAD if GE_HEAD.is_dir() else None, "--normal-head",
                                                   help="A normal head CT series: every voxel found there is a false positive."),
        baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Compare with the classical segmenter."),
        limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate the first N cases only."),
        threads: Optional[int] = typer.Option(None, "--threads"),
    ) -> None:
        """Dice, volume error and Bland–Altman plot on held-out cases; false positives on a normal head."""
        from pipeline.segment.network import configure_threads
        from training.evaluate_segmenter import evaluate_segmenter as evaluate

        configure_threads(threads)
        out = out or model / "evaluation"
        try:
            m = evaluate(cohort, model, out, normal_head=normal_head, baseline=baseline, limit=limit)
        except (ValueError, FileNotFoundError) as exc:
            raise _fail(str(exc))
        for name, s in m["models"].items():
            lo, hi = s["dice"]["median_ci95"]
            typer.echo(f"{name:>9}: median Dice {s['dice']['median']:.3f} (95 % CI {lo:.3f}–{hi:.3f}; IQR "
                       f"{s['dice']['q25']:.3f}–{s['dice']['q75']:.3f}), mean |volume error| {s['volume']['mean_abs_error_ml']:.2f} mL, "
                       f"bias {s['volume']['bias_ml']:+.2f} mL")
        if "normal_head" in m:
            fp = m["normal_head"]["false_positive_ml"]
            typer.echo("false positives on normal head: " + ", ".join(f"{k} {v:.2f} mL" for k, v in fp.items()))
        typer.echo(f"bars: {m['bars']}  → {out}")
