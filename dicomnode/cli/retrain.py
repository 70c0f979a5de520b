"""`ich-node retrain`: train new model versions from collected/imported/synthetic cases, gate, promote."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .models import fail, open_registry, resolve
from .options import CONFIG as CONFIG_OPT
from .options import DATA_DIR as DATA_DIR_OPT


def policies(cfg, **cli) -> tuple:
    """DataPolicy/GatePolicy/LabelPolicy from the config's ``training`` section (when the config has one),
    then command-line values; unset values keep the documented defaults."""
    from dataclasses import fields

    from training.retrain import DataPolicy, GatePolicy

    section = getattr(cfg, "training", None)
    base = section.model_dump() if section is not None else {}
    merged = {**base, **{k: v for k, v in cli.items() if v is not None}}
    data = DataPolicy(**{f.name: merged[f.name] for f in fields(DataPolicy) if f.name in merged})
    gate = GatePolicy(**{f.name: merged[f.name] for f in fields(GatePolicy) if f.name in merged})
    return data, gate


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add ``retrain`` to the top level."""

    @app.command("retrain")
    def retrain_cmd(
        segmenter: bool = typer.Option(False, "--segmenter", help="Retrain model 1 (needs reference masks)."),
        classifier: bool = typer.Option(False, "--classifier", help="Retrain model 2 (default when neither is given)."),
        source: str = typer.Option("node", "--source", help="node | DIR (a cohort with manifest.csv) | synthetic."),
        promote: str = typer.Option("auto", "--promote", help="auto (only when the gate passes) | never | force."),
        synthetic_cases: int = typer.Option(200, "--cases", help="Cases to generate for --source synthetic."),
        seed: int = typer.Option(0, "--seed", help="Seed for --source synthetic."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the segmenter's epochs."),
        val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Share of patients kept for validation (fixed by hash)."),
        min_train_cases: Optional[int] = typer.Option(None, "--min-cases", help="Refuse below this many training cases."),
        min_train_expanders: Optional[int] = typer.Option(None, "--min-expanders", help="Refuse below this many expanders in training."),
        auc_margin: Optional[float] = typer.Option(None, "--auc-margin"),
        brier_margin: Optional[float] = typer.Option(None, "--brier-margin"),
        dice_margin: Optional[float] = typer.Option(None, "--dice-margin"),
        volume_error_margin_ml: Optional[float] = typer.Option(None, "--volume-margin-ml"),
        trigger: str = typer.Option("cli", "--trigger", hidden=True),
        config: Optional[Path] = CONFIG_OPT,
        data_dir: Optional[Path] = DATA_DIR_OPT,
    ) -> None:
        """Train, evaluate against the served version on a fixed validation set, promote when not worse.

        Exit codes: 0 done (promoted or not), 3 refused (too little data), 4 another retrain is running.
        """
        import logging

        from rich.console import Console

        from training import retrain as rt
        from training.registry import RegistryError
        from training.trainers import ClassifierTrainer, SegmenterTrainer

        console = Console(soft_wrap=True)
        if promote not in ("auto", "never", "force"):
            raise fail(f"--promote must be auto, never or force, got {promote!r}", 2)
        where = resolve(config, data_dir)
        registry = open_registry(where)
        data_policy, gate_policy = policies(
            where.config, val_fraction=val_fraction, min_train_cases=min_train_cases,
            min_train_expanders=min_train_expanders, auc_margin=auc_margin, brier_margin=brier_margin,
            dice_margin=dice_margin, volume_error_margin_ml=volume_error_margin_ml)
        if not (segmenter or classifier):
            classifier = True
        served = registry.current_paths()
        trainers = []
        if segmenter:
            trainers.append(SegmenterTrainer(
                overrides={"epochs": epochs} if epochs else {}, served_dir=served.segmenter,
                cache_dir=rt.retrain_dir(where.data_dir) / "cache" / "segmenter"))
        if classifier:
            trainers.append(ClassifierTrainer(served_dir=served.classifier,
                                                 cache_dir=rt.retrain_dir(where.data_dir) / "cache" / "classifier"))
        logging.basicConfig(level=logging.WARNING)

        def say(message: str) -> None:
            console.print(f"[dim]{message}[/]", highlight=False)

        try:
            report = rt.retrain(
                registry=registry, data_dir=where.data_dir, trainers=trainers, source=source, promote=promote,
                data_policy=data_policy, gate_policy=gate_policy, trigger=trigger, progress=say,
                cohort=lambda run_dir: rt.cohort_from_source(source, run_dir, data_dir=where.data_dir,
                                                             registry=registry, synthetic_cases=synthetic_cases,
                                                             seed=seed, progress=say),
            )
        except rt.RetrainBusy as exc:
            raise fail(str(exc), 4)
        except rt.RetrainRefused as exc:
            raise fail(f"refused: {exc}", 3)
        except (RegistryError, FileNotFoundError, ValueError) as exc:
            raise fail(str(exc))
        for o in report.outcomes:
            if o.refused:
                console.print(f"[yellow]{o.kind}: refused[/] — {o.refused}", highlight=False)
                continue
            verdict = "[bold green]promoted[/]" if o.promoted else "[yellow]not promoted[/]"
            console.print(f"[bold]{o.kind}[/]: candidate v{o.candidate_version} {verdict} "
                          f"(served before: {'v' + o.served_version if o.served_version else 'none'})", highlight=False)
            for reason in o.gate.reasons:
                console.print(f"  {reason}", highlight=False)
        console.print(f"report: {report.run_dir / 'report.md'}", highlight=False)
