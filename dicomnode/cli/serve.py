"""`ich-node serve`: run the node in the foreground (what `make run` starts)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    @app.command()
    def serve(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config (default: embedded defaults, or $ICH_NODE_CONFIG)."),
        host: Optional[str] = typer.Option(None, "--host", help="Listen address (node.host)."),
        port: Optional[int] = typer.Option(None, "--port", help="Listen port (node.port, default 11112)."),
        ae_title: Optional[str] = typer.Option(None, "--ae-title", help="Our AE title (node.ae_title)."),
        data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Spool, index, queue, results (default ./var)."),
        allow: List[str] = typer.Option([], "--allow", help="Allowed calling AE, 'AE' or 'AE@HOST'; repeatable."),
        destination: List[str] = typer.Option([], "--destination", help="Where results go, AE@HOST:PORT; repeatable."),
        quiet_seconds: Optional[float] = typer.Option(None, "--quiet-seconds", help="Series complete after this long without a new instance."),
    ) -> None:
        """Receive head CTs, analyse them and send SEG + SR back, until SIGTERM/Ctrl-C."""
        from dicomnode.config import AllowedCaller, ConfigError, Destination, load_config
        import logging
        from dicomnode.service import Node

        try:
            cfg = load_config(config)
            if host is not None:
                cfg.node.host = host
            if port is not None:
                cfg.node.port = port
            if ae_title is not None:
                cfg.node.ae_title = ae_title
            if data_dir is not None:
                cfg.node.data_dir = data_dir
            if quiet_seconds is not None:
                cfg.selection.quiet_seconds = quiet_seconds
            for a in allow:
                ae, _, where = a.partition("@")
                cfg.security.allowed_callers = [*cfg.security.allowed_callers, AllowedCaller(ae_title=ae, host=where or None)]
            names = {d.name for d in cfg.destinations}
            for text in destination:
                d = Destination.from_address(text)
                name, n = d.name, 2
                while name in names:
                    name, n = f"{d.name}-{n}", n + 1
                names.add(name)
                cfg.destinations = [*cfg.destinations, d.model_copy(update={"name": name})]
        except ConfigError as exc:
            typer.secho(str(exc), fg="red", err=True)
            raise typer.Exit(2) from None
        except ValueError as exc:  # pydantic ValidationError is a ValueError
            typer.secho(f"invalid option: {exc}", fg="red", err=True)
            raise typer.Exit(2) from None
        logging.basicConfig(level=cfg.logging.level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        Node(cfg).serve_forever()
