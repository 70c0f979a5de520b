"""`ich-node train classifier` and `ich-node evaluate classifier`: model 2 (expansion) from a cohort."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

FEATURES_HELP = ("Feature recipe (pipeline/features/recipe.py): v1 (the seed's, native grid), v2 (1 mm radiomics grid, "
                 "fixed bins, CNN slices in mm), v3 (1 x 1 x 5 mm grid, thin series smoothed down to it) or v4 "
                 "(v1's 25 HU bins on v3's grid).")
PREFILTER_HELP = ("Which features sequential forward selection is offered: 'protocol' (the seed's: top 20 by F-test) "
                  "or RANKING-K[-rR] ranked on the training cases, RANKING f_test or domain_stable (each feature's "
                  "worst (matrix, slice thickness) domain), at most R correlated, e.g. domain_stable-20-r0.8.")


def _prefilter(text: str):
    from training.selection import Prefilter

    try:
        return Prefilter.parse(text)
    except ValueError as exc:
        raise _fail(str(exc), 2)


def _fail(message: str, code: int = 1) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _progress(done: int, total: int, seconds: float) -> None:
    typer.echo(f"features {done}/{total} ({seconds:.1f} s)")


def _table(summary: dict) -> None:
    typer.echo(f"{'module':<24} {'AUC (95% CI)':<22} {'prec':>5} {'rec':>5} {'AP':>5}  TP FP FN TN  Brier")
    for name, m in summary["modules"].items():
        cm, lo, hi = m["confusion"], *m["auc"]["ci95"]
        typer.echo(f"{name:<24} {m['auc']['value']:.3f} ({lo:.3f}-{hi:.3f})   {m['precision']['value']:.2f}  "
                   f"{m['recall']['value']:.2f}  {m['average_precision']['value']:.2f}  {cm['TP']:>2} {cm['FP']:>2} "
                   f"{cm['FN']:>2} {cm['TN']:>2}  {m['calibration']['brier']:.3f}")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add ``classifier`` to the ``train`` and ``evaluate`` groups."""

    @groups["train"].command("classifier")
    def train_classifier(
        cohort: Path = typer.Option(..., "--cohort", exists=True, file_okay=False, help="Cohort folder with manifest.csv (ich-node synth)."),
        out: Path = typer.Option(..., "--out", help="New versioned model directory, e.g. models/classifier/2."),
        cache: Optional[Path] = typer.Option(None, "--cache", help="Per-case feature cache (default COHORT/features-cache)."),
        seed: int = typer.Option(0, "--seed", help="Split / CV seed."),
        warmup_steps: int = typer.Option(0, "--warmup-steps", min=0, help="Gradient steps on the backbones' BatchNorm (0: statistics only)."),
        warmup_cohort: Optional[Path] = typer.Option(None, "--warmup-cohort", exists=True, file_okay=False, help="Separate synthetic cohort the CNN backbones warm up on (default: the training split)."),
        module: Optional[str] = typer.Option(None, "--module", help="Ship this module instead of the best by training CV AUC."),
        version: Optional[str] = typer.Option(None, "--version"),
        n_boot: int = typer.Option(2000, "--n-boot", min=100),
        features: str = typer.Option("v1", "--features", help=FEATURES_HELP),
        test_fraction: Optional[float] = typer.Option(None, "--test-fraction", min=0.05, max=0.95, help="Hold out this share of each class (default: the seed's 24 expanders + 76 others when the cohort allows)."),
        prefilter: str = typer.Option("protocol", "--prefilter", help=PREFILTER_HELP),
    ) -> None:
        """Evaluate all modules on the cohort's split (report in OUT/report) and save the chosen one to OUT."""
        from training.evaluate_classifier import train_and_ship

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        try:
            path, summary = train_and_ship(cohort, out, cache_dir=cache, seed=seed, warmup_steps=warmup_steps,
                                           warmup_cohort=warmup_cohort,
                                           version=version, module=module, n_boot=n_boot, progress=_progress,
                                           features=features, test_fraction=test_fraction,
                                           prefilter=_prefilter(prefilter))
        except (ValueError, FileNotFoundError, FileExistsError) as exc:
            raise _fail(str(exc))
        _table(summary)
        typer.echo(f"classifier ({summary['selected_by_train_cv'] if not module else module}) -> {path}")

    @groups["train"].command("backbones")
    def train_backbones(
        out: Path = typer.Option(..., "--out", help="Folder for the pretrained backbones (OUT/<backbone>/)."),
        cases: int = typer.Option(600, "--cases", min=4, help="Synthetic cases the slices come from."),
        seed: int = typer.Option(4242, "--seed", help="Cohort seed (keep it apart from evaluation cohorts)."),
        epochs: int = typer.Option(8, "--epochs", min=1),
        batch: int = typer.Option(64, "--batch", min=1),
        workers: int = typer.Option(2, "--workers", min=1, help="Processes generating cases."),
        precision: str = typer.Option("float32", "--precision", help="keras dtype policy; mixed_bfloat16 on a GPU."),
        backbones: str = typer.Option("resnet50,inception_v3", "--backbones"),
        slices_per_case: int = typer.Option(16, "--slices-per-case", min=1),
        max_seconds: Optional[float] = typer.Option(None, "--max-seconds", help="Per backbone: stop after the epoch that passes it."),
        markers: bool = typer.Option(False, "--markers", help="Also learn each case's NCCT signs (blend, black hole, ...) on its clot slices."),
    ) -> None:
        """Pretrain the CNN backbones on synthetic CT slices (auxiliary task, no expansion label).

        Meant for a GPU machine (KERAS_BACKEND=torch works too); on 2 CPU cores one epoch of the default
        size takes hours. Use the result with `ich-node evaluate classifier --pretrained-backbones OUT`."""
        from training.backbone_pretrain import PretrainConfig, run

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        try:
            cfg = PretrainConfig(cases=cases, seed=seed, epochs=epochs, batch=batch, workers=workers,
                                 precision=precision, slices_per_case=slices_per_case, max_seconds=max_seconds,
                                 markers=markers)
            res = run(cfg, out, tuple(b.strip() for b in backbones.split(",")))
        except ValueError as exc:
            raise _fail(str(exc))
        for name, meta in res.items():
            typer.echo(f"{name}: {out / name} sha256 {meta['sha256_all_weights']} {meta['pretrain']['validation']}")

    @groups["evaluate"].command("classifier")
    def evaluate_classifier(
        cohort: Path = typer.Option(..., "--cohort", exists=True, file_okay=False, help="Cohort folder with manifest.csv."),
        out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default COHORT/classifier-evaluation)."),
        cache: Optional[Path] = typer.Option(None, "--cache", help="Per-case feature cache (default COHORT/features-cache)."),
        seed: int = typer.Option(0, "--seed"),
        warmup_steps: int = typer.Option(0, "--warmup-steps", min=0),
        warmup_cohort: Optional[Path] = typer.Option(None, "--warmup-cohort", exists=True, file_okay=False),
        n_boot: int = typer.Option(2000, "--n-boot", min=100),
        features: str = typer.Option("v1", "--features", help=FEATURES_HELP),
        pretrained: Optional[Path] = typer.Option(None, "--pretrained-backbones", exists=True, file_okay=False, help="Backbones from `ich-node train backbones` (DIR/<backbone>/) instead of the BatchNorm warm-up."),
        test_fraction: Optional[float] = typer.Option(None, "--test-fraction", min=0.05, max=0.95, help="Hold out this share of each class (default: the seed's 24 expanders + 76 others when the cohort allows)."),
        prefilter: str = typer.Option("protocol", "--prefilter", help=PREFILTER_HELP),
    ) -> None:
        """The seed's Table 2 on one split: 5 feature modules + volume and marker baselines; JSON, PNG, HTML."""
        from training.evaluate_classifier import evaluate, prepare

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        out = out or cohort / "classifier-evaluation"
        try:
            prep = prepare(cohort, cache, seed=seed, warmup_steps=warmup_steps, warmup_cohort=warmup_cohort,
                           progress=_progress, features=features, pretrained=pretrained,
                           test_fraction=test_fraction)
            summary = evaluate(prep, out, n_boot=n_boot, prefilter=_prefilter(prefilter))
        except (ValueError, FileNotFoundError) as exc:
            raise _fail(str(exc))
        summary.pop("_fitted", None)
        _table(summary)
        typer.echo(f"report: {out / 'report.html'}")
