"""`ich-node status`: is the node healthy? Queue counts, last errors, disk, index, model versions."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dicomnode.observe.status import gather

from .options import CONFIG, DATA_DIR, JSON, load, print_json, state_text, when


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    @app.command()
    def status(config: Optional[Path] = CONFIG, data_dir: Optional[Path] = DATA_DIR,
               as_json: bool = JSON) -> None:
        """Queue counts by state, last errors, disk, index totals and model versions."""
        from rich.console import Console
        from rich.table import Table

        info = gather(load(config, data_dir))
        if as_json:
            print_json(info)
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
        for name, st in (info.get("destinations") or {}).items():
            if st["state"] == "up":
                console.print(f"destination {name}: [green]up[/]")
            else:
                console.print(f"destination {name}: [red]down[/] since {when(st['down_since'])}"
                              f"; deliveries wait and it is probed ({st['last_error'] or '-'})")
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
