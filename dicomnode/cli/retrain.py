"""Placeholder: this family of subcommands is not implemented yet."""

from __future__ import annotations

import typer


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this module's subcommands to ``app`` or to one of ``groups``."""
