"""`ich-node config check FILE`: validate a configuration before a restart finds the typo."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add ``config check`` to the ``config`` group."""

    @groups["config"].command("check")
    def check(
        file: Path = typer.Argument(..., help="TOML configuration file."),
        show: bool = typer.Option(False, "--show", help="Print the effective configuration (with env overrides)."),
    ) -> None:
        """Validate FILE plus ICH_NODE__* environment overrides; exit 1 listing every problem."""
        from rich.console import Console

        from dicomnode.config import ConfigError, load_config

        console = Console(stderr=True, soft_wrap=True)
        try:
            cfg = load_config(file)
        except ConfigError as exc:
            console.print(f"[bold red]invalid configuration[/] ({len(exc.problems)} problem(s)):")
            for p in exc.problems:
                console.print(f"  [red]✗[/] {p.source}: [bold]{p.key or '-'}[/]: {p.message}", highlight=False)
            raise typer.Exit(1)
        console.print(f"[green]✓[/] {file}: valid", highlight=False)
        if show:
            import json

            typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))
