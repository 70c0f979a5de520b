"""`ich-node dataset import|list|exclude|include`: the training cases the node collected or a site imported."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from .models import fail, open_registry, resolve
from .options import CONFIG as CONFIG_OPT
from .options import DATA_DIR as DATA_DIR_OPT
from .options import JSON, print_json


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add import/list/exclude/include to the ``dataset`` group."""
    group = groups["dataset"]

    @group.command("import")
    def import_(
        directory: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder holding the studies."),
        labels: Path = typer.Option(..., "--labels", exists=True, dir_okay=False,
                                    help="CSV: patient_id, baseline (folder under DIR), and label (1/0) or followup (folder)."),
        config: Optional[Path] = CONFIG_OPT,
        data_dir: Optional[Path] = DATA_DIR_OPT,
    ) -> None:
        """Import labelled baseline studies; model 1 (served version) measures every baseline and follow-up."""
        from rich.console import Console

        from dicomnode.pseudonym import Pseudonymizer
        from training.dataset import DatasetError, DatasetStore
        from training.site_import import import_cases

        where = resolve(config, data_dir)
        # the node's site key: an imported patient has the pseudonym the node gives the same patient
        store = DatasetStore.for_data_dir(where.data_dir, pseudonym=Pseudonymizer.for_data_dir(where.data_dir))
        console = Console(soft_wrap=True)
        try:
            outcome = import_cases(store, directory, labels, segmenter_dir=open_registry(where).current_paths().segmenter,
                                   progress=lambda m: console.print(f"[dim]{m}[/]", highlight=False))
        except DatasetError as exc:
            raise fail(str(exc), 2)
        for c in outcome.imported:
            console.print(f"[green]✓[/] {c.case_id}: label {c.label} ({c.label_source}), baseline "
                          f"{c.baseline_volume_ml:.1f} mL" + (f" → {c.followup_volume_ml:.1f} mL" if c.followup_volume_ml
                                                              is not None else ""), highlight=False)
        for e in outcome.errors:
            console.print(f"[red]✗[/] {e}", highlight=False)
        console.print(f"{len(outcome.imported)} imported, {len(outcome.errors)} refused", highlight=False)
        if outcome.errors:
            raise typer.Exit(1)

    @group.command("list")
    def list_(
        all_: bool = typer.Option(True, "--all/--included", help="Show excluded cases too (default) or only included ones."),
        source: Optional[str] = typer.Option(None, "--source", help="node or import."),
        config: Optional[Path] = CONFIG_OPT,
        data_dir: Optional[Path] = DATA_DIR_OPT,
        as_json: bool = JSON,
    ) -> None:
        """Every training case with its label, volumes, interval and review state."""
        from rich.console import Console
        from rich.table import Table

        from training.dataset import DatasetStore

        store = DatasetStore.for_data_dir(resolve(config, data_dir).data_dir)
        cases = store.cases(include_excluded=all_, source=source)
        if as_json:
            print_json([_public(c) for c in cases])
            return
        counts = store.counts()
        table = Table(title=f"Training cases: {counts['cases']} ({counts['expanders']} expanders included, "
                            f"{counts['excluded']} excluded); {counts['studies']} analysed studies seen")
        for col in ("case", "source", "label", "from", "baseline mL", "follow-up mL", "interval h", "state"):
            table.add_column(col)
        for c in cases:
            table.add_row(
                c.case_id, c.source, "[bold red]expansion[/]" if c.label else "no expansion", c.label_source,
                _f(c.baseline_volume_ml), _f(c.followup_volume_ml), _f(c.interval_h),
                f"[yellow]excluded[/]: {c.exclude_reason}" if c.excluded else "included",
            )
        Console().print(table)

    @group.command("exclude")
    def exclude(
        case_id: str = typer.Argument(..., help="Case id from `ich-node dataset list`."),
        reason: str = typer.Option(..., "--reason", help="Why (kept for review)."),
        config: Optional[Path] = CONFIG_OPT,
        data_dir: Optional[Path] = DATA_DIR_OPT,
    ) -> None:
        """Keep a case out of every future retraining (reversible with `include`)."""
        from training.dataset import DatasetError, DatasetStore

        store = DatasetStore.for_data_dir(resolve(config, data_dir).data_dir)
        try:
            store.exclude(case_id, reason)
        except DatasetError as exc:
            raise fail(str(exc))
        typer.echo(f"{case_id}: excluded ({reason})")

    @group.command("include")
    def include(
        case_id: str = typer.Argument(..., help="Case id from `ich-node dataset list`."),
        config: Optional[Path] = CONFIG_OPT,
        data_dir: Optional[Path] = DATA_DIR_OPT,
    ) -> None:
        """Undo `exclude`."""
        from training.dataset import DatasetError, DatasetStore

        store = DatasetStore.for_data_dir(resolve(config, data_dir).data_dir)
        try:
            store.exclude(case_id, "", excluded=False)
        except DatasetError as exc:
            raise fail(str(exc))
        typer.echo(f"{case_id}: included again")


def _public(case) -> dict:
    """A training case as JSON, without the raw study UIDs (the case id is their pseudonym), as in `jobs list`."""
    data = dataclasses.asdict(case)
    del data["baseline_study_uid"], data["followup_study_uid"]
    return data


def _f(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"
