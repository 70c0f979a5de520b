"""`ich-node analyze SERIES_DIR --out OUT_DIR`: run the pipeline on one series folder, no network."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add ``analyze`` to the top-level app."""

    @app.command("analyze")
    def analyze_cmd(
        series_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder with one CT series."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: seg.dcm, sr.dcm, sc/, result.json."),
        models: str = typer.Option(
            "bundled",
            "--models",
            help="'bundled' (highest versions under models/, what the node uses out of the box), 'none' "
            "(classical segmenter, no classifier), "
            "or a folder holding segmenter/<version>/ and classifier/<version>/.",
        ),
        segmenter: Optional[Path] = typer.Option(None, "--segmenter", help="A segmenter model directory (overrides --models)."),
        classifier: Optional[Path] = typer.Option(None, "--classifier", help="A classifier model directory (overrides --models)."),
        overlay_slices: int = typer.Option(3, "--overlay-slices", min=0, help="Key slices in the overlay series; 0 = none."),
        predecessor: list[Path] = typer.Option([], "--predecessor", help="Earlier SR/SEG this analysis replaces (repeatable)."),
    ) -> None:
        """Analyse one CT series: hematoma SEG, TID 1500 SR, overlay series and result.json."""
        from pipeline.analyze import Analyzer, OutputOptions

        paths = _model_paths(models, segmenter, classifier)
        analyzer = Analyzer(paths, OutputOptions(overlay=overlay_slices > 0, overlay_slices=max(overlay_slices, 1)))
        result = analyzer.analyze(series_dir, out, predecessor=predecessor or None)
        typer.echo(result.to_json())
        if result.status.value != "analyzed":
            raise typer.Exit(3)


def _model_paths(models: str, segmenter: Optional[Path], classifier: Optional[Path]):
    from pipeline.models import ModelPaths

    if models == "none":
        base = ModelPaths()
    elif models == "bundled":
        base = ModelPaths.bundled()
    else:
        root = Path(models)
        if not root.is_dir():
            raise typer.BadParameter(f"{root} is not a folder (or use 'none' / 'bundled')", param_hint="--models")
        base = ModelPaths(segmenter=_highest(root / "segmenter"), classifier=_highest(root / "classifier"))
    return ModelPaths(segmenter=segmenter or base.segmenter, classifier=classifier or base.classifier)


def _highest(root: Path) -> Optional[Path]:
    if not root.is_dir():
        return None
    versions = [p for p in root.iterdir() if (p / "metadata.json").is_file()]
    versions.sort(key=lambda p: int(p.name) if p.name.isdigit() else -1)
    return versions[-1] if versions else None
