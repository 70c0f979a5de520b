"""`ich-node worker`: a Celery analysis worker for a node whose queue backend is Celery (scale-out).

Runs on any machine that sees the node's data directory at the same path (shared filesystem: spool
in, results out) and the model registry; see docs/scale-out.md and deploy/OPERATIONS.md.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    @app.command()
    def worker(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="The node's TOML config (queue.backend = \"celery\")."),
        data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="The node's data directory as mounted here (shared)."),
        concurrency: Optional[int] = typer.Option(None, "--concurrency", "-j", min=1,
                                                  help="Analysis processes (default worker.processes); each loads the models once."),
        name: Optional[str] = typer.Option(None, "--name", "-n", help="Celery node name (default ichnode@HOST)."),
        loglevel: Optional[str] = typer.Option(None, "--loglevel", help="Default: logging.level of the config."),
    ) -> None:
        """Analyse studies from the node's Celery queue until SIGTERM (warm shutdown) or Ctrl-C."""
        import logging

        from dicomnode.config import ConfigError, load_config

        try:
            cfg = load_config(config)
            if data_dir is not None:
                cfg.node.data_dir = data_dir
            if concurrency is not None:
                cfg.worker.processes = concurrency
        except ConfigError as exc:
            typer.secho(str(exc), fg="red", err=True)
            raise typer.Exit(2) from None
        from dicomnode.queue import BACKENDS, backend_class

        if backend_class(cfg.queue.backend).needs_local_workers:
            remote = " or ".join(f'"{n}"' for n in sorted(BACKENDS.targets()) if not backend_class(n).needs_local_workers)
            typer.secho(f"queue.backend is {cfg.queue.backend!r}: the node runs its own workers; `ich-node worker` "
                        f"needs a backend with workers of its own (queue.backend = {remote})",
                        fg="red", err=True)
            raise typer.Exit(2)
        spool = Path(cfg.node.spool_dir)
        if not spool.is_dir():
            typer.secho(f"warning: the node's spool {spool} is not visible here; mount the node's data directory "
                        "at the same path (see deploy/OPERATIONS.md)", fg="yellow", err=True)
        level = (loglevel or cfg.logging.level).upper()
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")

        from dicomnode.queue.celery import TASK_QUEUE
        from dicomnode.queue.celery_worker import worker_app

        app = worker_app(cfg)
        app.worker_main(argv=[
            "worker", "--queues", TASK_QUEUE, "--concurrency", str(cfg.worker.processes), "--pool", "prefork",
            "--hostname", name or f"ichnode@{socket.gethostname()}", "--without-gossip", "--without-mingle",
            "--loglevel", level,
        ])
