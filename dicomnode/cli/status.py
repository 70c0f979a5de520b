"""`ich-node status`: is the node healthy? Queue counts, last errors, disk, index, model versions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import typer

from .jobs import CONFIG, DATA_DIR, load, state_text, when


def gather(cfg) -> dict:
    """Everything ``status`` shows, read from the data directory (the node may or may not be running)."""
    from dicomnode.queue import QueueError, open_queue, queue_path

    data_dir = Path(cfg.node.data_dir)
    out: dict = {"data_dir": str(data_dir), "queue": None, "errors": [], "index": None, "disk": None, "models": {}}
    if cfg.queue.backend != "sqlite" or queue_path(cfg).exists():
        try:
            q = open_queue(cfg)
            out["queue"] = {s.value: n for s, n in q.counts().items()}
            out["errors"] = [{"id": j.id, "state": j.state.value, "at": j.updated_at, "error": j.last_error}
                             for j in q.last_errors(5)]
        except QueueError as exc:
            out["queue_error"] = str(exc)
    if cfg.node.index_path.exists():
        from dicomnode.index import Index

        with Index(cfg.node.index_path) as ix:
            out["index"] = ix.counts()
    probe = data_dir if data_dir.exists() else Path(".")
    usage = shutil.disk_usage(probe)
    out["disk"] = {"path": str(probe), "free_bytes": usage.free, "total_bytes": usage.total,
                   "min_free_bytes": cfg.storage.min_free_bytes,
                   "state": "ok" if usage.free >= 2 * cfg.storage.min_free_bytes
                   else "low" if usage.free >= cfg.storage.min_free_bytes else "full (refusing C-STORE)"}
    out["models"] = _models(cfg)
    from dicomnode.heartbeat import read_state  # the scheduled synthetic study (issue 7), None if never run

    out["heartbeat"] = read_state(data_dir)
    from training.retrain import read_status  # the last or running retrain (issue 6)

    out["retrain"] = read_status(data_dir)
    return out


def _models(cfg) -> dict:
    """Model versions the worker would load: the registry's promoted ones, else the bundled ones."""
    from pipeline.models import BUNDLED_ROOT, ModelMetadata, ModelPaths

    paths = None
    try:
        from training.registry import Registry

        if cfg.models_dir.exists():
            paths = Registry(cfg.models_dir, bundled_root=BUNDLED_ROOT if cfg.models.bundled_fallback else None).current_paths()
    except Exception:  # noqa: BLE001 - status must show what it can
        paths = None
    if paths is None:
        paths = ModelPaths.bundled() if cfg.models.bundled_fallback else ModelPaths()
    found = {}
    for kind, path in vars(paths).items():
        if path is None:
            found[kind] = None
            continue
        try:
            m = ModelMetadata.read(Path(path))
            found[kind] = {"version": m.version, "name": m.name, "path": str(path)}
        except (OSError, ValueError, TypeError) as exc:
            found[kind] = {"version": "?", "name": f"unreadable: {exc}", "path": str(path)}
    return found


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    @app.command()
    def status(config: Optional[Path] = CONFIG, data_dir: Optional[Path] = DATA_DIR,
               as_json: bool = typer.Option(False, "--json")) -> None:
        """Queue counts by state, last errors, disk, index totals and model versions."""
        from rich.console import Console
        from rich.table import Table

        info = gather(load(config, data_dir))
        if as_json:
            typer.echo(json.dumps(info, indent=2))
            return
        console = Console()
        console.print(f"[bold]ich-node[/] data in {info['data_dir']}")
        q = Table(title="queue")
        if info["queue"] is None:
            console.print("[yellow]no queue yet (the node has not run with this data directory)[/]")
        else:
            for s in info["queue"]:
                q.add_column(state_text(s), justify="right")
            q.add_row(*(str(n) for n in info["queue"].values()))
            console.print(q)
        if info["errors"]:
            e = Table(title="last errors")
            for col in ("job", "state", "when", "error"):
                e.add_column(col)
            for err in info["errors"]:
                e.add_row(err["id"], state_text(err["state"]), when(err["at"]), (err["error"] or "")[:90])
            console.print(e)
        d = info["disk"]
        colour = "green" if d["state"] == "ok" else "red"
        console.print(f"disk: [{colour}]{d['state']}[/] {d['free_bytes'] / 2**30:.1f} GiB free of "
                      f"{d['total_bytes'] / 2**30:.1f} GiB (refuse below {d['min_free_bytes'] / 2**30:.1f} GiB)")
        if info["index"]:
            ix = info["index"]
            console.print(f"index: {ix['studies']} studies, {ix['series']} series, {ix['instances']} instances "
                          f"({ix['bytes'] / 2**20:.1f} MiB), {ix['series_pending']} series waiting for analysis")
        m = Table(title="models")
        for col in ("kind", "version", "name", "path"):
            m.add_column(col)
        for kind, v in info["models"].items():
            m.add_row(kind, *(("-", "not installed (fallback)", "-") if v is None else (v["version"], v["name"], v["path"])))
        console.print(m)
        hb = info.get("heartbeat")
        if hb:
            colour = {"ok": "green", "failed": "red"}.get(hb.get("state"), "yellow")
            console.print(f"heartbeat: [{colour}]{hb.get('state')}[/], last success {when(hb.get('last_success'))}"
                          + (f" ({hb['last_duration_s']:.0f} s end to end)" if hb.get("last_duration_s") else "")
                          + (f"; last error: {hb['last_error']}" if hb.get("last_error") else "")
                          + ("; one in flight" if hb.get("pending") else ""))
        rt = info.get("retrain") or {}
        colour = {"running": "yellow", "interrupted": "red"}.get(rt.get("state"), "green")
        console.print(f"retraining: [{colour}]{rt.get('state', 'never run')}[/]"
                      + (f", schedule {rt['schedule']}" if rt.get("schedule") else ", not scheduled")
                      + (f"; last: {rt['message']}" if rt.get("message") else ""))
