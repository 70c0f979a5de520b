"""`ich-node models list|show|add|promote|rollback`: the model registry, for the admin."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from .options import CONFIG as CONFIG_OPT
from .options import DATA_DIR as DATA_DIR_OPT
from .options import JSON, load, print_json

KIND_HELP = "segmenter (model 1) or classifier (model 2)."


@dataclass(frozen=True)
class Where:
    """The paths a training/registry command works on, resolved from the node configuration."""

    data_dir: Path
    registry_dir: Path
    config: object


def resolve(config: Optional[Path], data_dir: Optional[Path]) -> Where:
    """Load the node config (exit 2 with every problem listed when invalid) and apply ``--data-dir``."""
    cfg = load(config, data_dir)
    return Where(cfg.node.data_dir, cfg.models_dir, cfg)


def open_registry(where: Where):
    """The registry of this node; bundled defaults come in as version 1 unless the config turns that off."""
    from pipeline.models import BUNDLED_ROOT
    from training.registry import Registry

    return Registry(where.registry_dir, bundled_root=BUNDLED_ROOT if where.config.models.bundled_fallback else None)


def fail(message: str, code: int = 1) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add list/show/add/promote/rollback to the ``models`` group."""
    group = groups["models"]

    @group.command("list")
    def list_(
        kind: Optional[str] = typer.Option(None, "--kind", "-k", help=KIND_HELP),
        config: Optional[Path] = CONFIG_OPT,
        data_dir: Optional[Path] = DATA_DIR_OPT,
        as_json: bool = JSON,
    ) -> None:
        """Every version of each model kind; the served one is marked."""
        from rich.console import Console
        from rich.table import Table

        from pipeline.models import KINDS
        from training.registry import RegistryError

        reg = open_registry(resolve(config, data_dir))
        try:
            kinds = [kind] if kind else list(KINDS)
            promoted = reg.promoted()
            versions = [v for k in kinds for v in reg.versions(k)]
        except RegistryError as exc:
            raise fail(str(exc))
        if as_json:
            print_json([_public(v, promoted) for v in versions])
            return
        table = Table(title=f"Model registry {reg.root}")
        for col in ("kind", "version", "served", "name", "created", "training data", "validation", "gate", "parent"):
            table.add_column(col)
        for v in versions:
            m = v.metadata
            td = m.training_data or {}
            gate = (m.extra or {}).get("gate")
            table.add_row(
                v.kind, v.version, "[bold green]● served[/]" if promoted[v.kind] == v.version else "",
                m.name, m.created[:19], f"{td.get('source', '?')}, {td.get('cases', '?')} cases",
                _metrics_line(m.metrics), "" if gate is None else ("passed" if gate.get("passed") else "[red]refused[/]"),
                m.parent_version or "",
            )
        Console().print(table)

    @group.command("show")
    def show(
        version: str = typer.Argument(..., help="Version number (or KIND:VERSION)."),
        kind: Optional[str] = typer.Option(None, "--kind", "-k", help=KIND_HELP),
        config: Optional[Path] = CONFIG_OPT,
        data_dir: Optional[Path] = DATA_DIR_OPT,
        as_json: bool = JSON,
    ) -> None:
        """Metadata, evaluation and history of one version."""
        import json

        from rich.console import Console
        from rich.table import Table

        from training.registry import RegistryError

        reg = open_registry(resolve(config, data_dir))
        kind, version = _kind_version(kind, version)
        try:
            v = reg.get(kind, version)
        except RegistryError as exc:
            raise fail(str(exc))
        evaluation = v.path / "evaluation.json"
        ev = json.loads(evaluation.read_text()) if evaluation.is_file() else None
        events = [e for e in reg.history(kind) if e.get("version") == v.version or e.get("previous") == v.version]
        if as_json:
            print_json({**_public(v, reg.promoted()), "evaluation": ev, "history": events})
            return
        console = Console()
        table = Table(title=f"{kind} version {v.version}" + ("  (served)" if reg.promoted()[kind] == v.version else ""),
                      show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for key, value in v.metadata.__dict__.items():
            table.add_row(key, value if isinstance(value, str) else json.dumps(value, indent=1, default=str))
        table.add_row("path", str(v.path))
        console.print(table)
        if ev is not None:
            console.print(f"[bold]gate[/] ({'passed' if ev['gate']['passed'] else 'refused'}):")
            for reason in ev["gate"]["reasons"]:
                console.print(f"  {reason}", highlight=False)
        for e in events:
            console.print(f"  {e['time']}  {e['action']:<8} v{e.get('version')}  {e.get('reason') or ''}", highlight=False)

    @group.command("add")
    def add(
        model_dir: Path = typer.Argument(..., exists=True, file_okay=False,
                                         help="A model directory (metadata.json), e.g. models/segmenter/2 of a newer release."),
        config: Optional[Path] = CONFIG_OPT,
        data_dir: Optional[Path] = DATA_DIR_OPT,
    ) -> None:
        """Install MODEL_DIR as the next version of its kind; nothing is served until you promote it.

        Why: bundled models come in only while a registry is empty, so a site that already serves one
        gets a newer release's model this way (its number is the registry's next, not the release's)."""
        from pipeline.models import ModelMetadata
        from training.registry import RegistryError

        reg = open_registry(resolve(config, data_dir))
        try:
            meta = ModelMetadata.read(model_dir)
            v = reg.add(meta.kind, model_dir, extra={"added_from": f"{meta.name} v{meta.version}",
                                                     "added_path": str(model_dir.resolve())})
        except (RegistryError, FileNotFoundError, ValueError, KeyError) as exc:
            raise fail(f"{model_dir}: {exc}")
        typer.echo(f"{v.kind}: {meta.name} v{meta.version} added as version {v.version} (not served; "
                   f"`ich-node models promote {v.kind}:{v.version}` serves it)")

    @group.command("promote")
    def promote(
        version: str = typer.Argument(..., help="Version number (or KIND:VERSION)."),
        kind: Optional[str] = typer.Option(None, "--kind", "-k", help=KIND_HELP),
        reason: str = typer.Option("", "--reason", help="Recorded in the history."),
        config: Optional[Path] = CONFIG_OPT,
        data_dir: Optional[Path] = DATA_DIR_OPT,
    ) -> None:
        """Serve VERSION from now on (a running node switches between jobs)."""
        from training.registry import RegistryError

        reg = open_registry(resolve(config, data_dir))
        kind, version = _kind_version(kind, version)
        before = reg.promoted()[kind]
        try:
            v = reg.promote(kind, version, reason=reason or "manual", actor="cli")
        except RegistryError as exc:
            raise fail(str(exc))
        gate = (v.metadata.extra or {}).get("gate")
        if gate and not gate.get("passed"):
            typer.echo(f"warning: the retrain gate refused this version: {'; '.join(gate.get('reasons', []))}", err=True)
        typer.echo(f"{kind}: version {v.version} promoted (was {before}); `ich-node models rollback --kind {kind}` undoes it")

    @group.command("rollback")
    def rollback(
        kind: Optional[str] = typer.Option(None, "--kind", "-k", help=KIND_HELP),
        reason: str = typer.Option("", "--reason", help="Recorded in the history."),
        config: Optional[Path] = CONFIG_OPT,
        data_dir: Optional[Path] = DATA_DIR_OPT,
    ) -> None:
        """Serve the previously promoted version again."""
        from training.registry import RegistryError

        reg = open_registry(resolve(config, data_dir))
        if kind is None:
            raise fail("say which model to roll back: --kind segmenter or --kind classifier", 2)
        before = reg.promoted().get(kind) if kind in ("segmenter", "classifier") else None
        try:
            v = reg.rollback(kind, reason=reason or "manual", actor="cli")
        except RegistryError as exc:
            raise fail(str(exc))
        typer.echo(f"{kind}: rolled back from version {before} to version {v.version}")


def _kind_version(kind: Optional[str], version: str) -> tuple[str, str]:
    if ":" in version:
        k, _, version = version.partition(":")
        if kind and kind != k:
            raise fail(f"--kind {kind} contradicts {k}:{version}", 2)
        kind = k
    if kind is None:
        raise fail("say which model: --kind segmenter|classifier (or KIND:VERSION)", 2)
    return kind, version


def _public(v, promoted: dict) -> dict:
    """One registry version as JSON: its metadata in full, where it lies and whether it is served."""
    return {**v.metadata.__dict__, "kind": v.kind, "version": v.version, "served": promoted.get(v.kind) == v.version,
            "path": str(v.path)}


def _metrics_line(metrics: dict | None) -> str:
    val = (metrics or {}).get("validation", metrics or {})
    if not isinstance(val, dict):
        return ""
    keys = ("auc", "brier", "median_dice", "volume_mae_ml", "val_median_dice")
    return ", ".join(f"{k} {val[k]:.3f}" for k in keys if isinstance(val.get(k), (int, float)))
