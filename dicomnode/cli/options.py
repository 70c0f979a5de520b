"""What every ``ich-node`` command shares: the --config/--data-dir/--json options, loading the config, opening
the queue, and how times, job states and machine-readable listings are printed."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Optional

import typer

CONFIG = typer.Option(None, "--config", "-c", help="TOML config of the node (default: embedded defaults / $ICH_NODE_CONFIG).")
DATA_DIR = typer.Option(None, "--data-dir", help="The node's data directory (overrides the config).")
JSON = typer.Option(False, "--json", help="Print JSON with every value in full instead of the table (for scripts).")

STATE_STYLE = {"received": "cyan", "queued": "blue", "running": "magenta", "encoded": "yellow", "sent": "green",
               "failed": "red", "dead": "bold red"}


def load(config: Optional[Path], data_dir: Optional[Path]):
    """The node's config with ``--data-dir`` applied; exits 2 with the problems on a bad config."""
    from dicomnode.config import ConfigError, load_config

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None
    if data_dir is not None:
        cfg.node.data_dir = data_dir
    return cfg


def open_queue_or_exit(cfg):
    from dicomnode.queue import QueueError, open_queue

    absent = cfg.queue.absent(Path(cfg.node.data_dir))
    if absent:
        typer.secho(f"{absent} (has the node run with this data directory?)", fg="yellow", err=True)
        raise typer.Exit(1)
    try:
        return open_queue(cfg)
    except QueueError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def state_text(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def _jsonable(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)  # Path, datetime, enum members...


def print_json(data) -> None:
    """What a listing command prints under ``--json``: ``data`` as indented JSON on stdout, no value cut to a
    column's width (a table piped to a file is truncated to the terminal's width)."""
    typer.echo(json.dumps(data, indent=2, default=_jsonable))
