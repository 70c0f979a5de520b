"""`ich-node jobs list|show|retry`: look at and un-stick analysis jobs (works while the node runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .options import CONFIG, DATA_DIR, JSON, load, open_queue_or_exit, print_json, state_text, when


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    jobs = groups["jobs"]

    @jobs.command("list")
    def list_jobs(state: List[str] = typer.Option([], "--state", "-s", help="Only these states; repeatable."),
                  limit: int = typer.Option(50, "--limit", "-n", min=1), config: Optional[Path] = CONFIG,
                  data_dir: Optional[Path] = DATA_DIR, as_json: bool = JSON) -> None:
        """Newest jobs first."""
        from rich.console import Console
        from rich.table import Table

        from dicomnode.queue import JobState

        try:
            states = [JobState(s) for s in state] or None
        except ValueError:
            typer.secho(f"unknown state in {state}; known: {', '.join(s.value for s in JobState)}", fg="red", err=True)
            raise typer.Exit(2) from None
        q = open_queue_or_exit(load(config, data_dir))
        rows = q.list(states=states, limit=limit)
        if as_json:
            print_json([_public(j) for j in rows])
            return
        table = Table(title=f"jobs ({len(rows)})")
        for col in ("id", "study", "state", "stage", "attempts", "next try", "updated", "last error"):
            table.add_column(col)
        for j in rows:
            table.add_row(j.id, j.key[:12], state_text(j.state.value), j.stage.value, f"{j.attempts}/{j.max_attempts}",
                          when(j.next_try_at), when(j.updated_at), (j.last_error or "")[:70])
        Console().print(table)

    @jobs.command("show")
    def show(job_id: str, config: Optional[Path] = CONFIG, data_dir: Optional[Path] = DATA_DIR,
             as_json: bool = JSON) -> None:
        """One job: state, attempts, error, outputs, and what each destination confirmed."""
        from rich.console import Console
        from rich.table import Table

        from dicomnode.deliver.ledger import Ledger
        from dicomnode.queue import QueueError

        cfg = load(config, data_dir)
        q = open_queue_or_exit(cfg)
        try:
            job = q.get(job_id)
        except QueueError as exc:
            typer.secho(str(exc), fg="red", err=True)
            raise typer.Exit(1) from None
        deliveries = Ledger(cfg.ledger_path).states(job.id) if cfg.ledger_path.exists() else []
        if as_json:
            print_json({**_public(job), "deliveries": deliveries})
            return
        console = Console()
        t = Table(show_header=False, title=f"job {job.id}")
        for k, v in [("study", job.key), ("state", state_text(job.state.value)), ("stage", job.stage.value),
                     ("attempts", f"{job.attempts}/{job.max_attempts}"), ("next try", when(job.next_try_at)),
                     ("lease", f"{job.lease_owner or '-'} until {when(job.lease_until)}"),
                     ("last error", job.last_error or "-"), ("result dir", job.result_dir or "-"),
                     ("input files", str(len(job.payload.get("files") or []))),
                     ("cannot assess", json.dumps(job.payload.get("cannot_assess")) if job.payload.get("cannot_assess") else "-"),
                     ("created", when(job.created_at)), ("updated", when(job.updated_at))]:
            t.add_row(k, v)
        if job.result_dir and (Path(job.result_dir) / "result.json").is_file():
            r = json.loads((Path(job.result_dir) / "result.json").read_text())
            t.add_row("result", f"{r.get('status')}  volume {r.get('volume_ml')} mL  risk {r.get('risk')}  "
                                f"reason {r.get('reason') or '-'}")
        console.print(t)
        if deliveries:
            d = Table(title="deliveries")
            for col in ("destination", "delivered objects", "attempts", "last error"):
                d.add_column(col)
            for s in deliveries:
                d.add_row(s.destination, ", ".join(s.delivered) or "-", str(s.attempts), s.last_error or "-")
            console.print(d)

    @jobs.command("retry")
    def retry(job_ids: List[str] = typer.Argument(None, help="Job ids (failed or dead)."),
              all_dead: bool = typer.Option(False, "--all-dead", help="Retry every dead job."),
              config: Optional[Path] = CONFIG, data_dir: Optional[Path] = DATA_DIR) -> None:
        """Send failed/dead jobs round again: re-deliver when outputs exist, else re-analyse.

        Objects a destination already confirmed are not sent again.
        """
        from dicomnode.queue import JobState, QueueError

        cfg = load(config, data_dir)
        q = open_queue_or_exit(cfg)
        ids = list(job_ids or [])
        if all_dead:
            ids += [j.id for j in q.list(states=(JobState.DEAD,), limit=100000)]
        if not ids:
            typer.secho("nothing to retry (give job ids or --all-dead)", fg="yellow", err=True)
            raise typer.Exit(1)
        failed = 0
        for job_id in ids:
            try:
                job = q.retry(job_id)
                if cfg.ledger_path.exists():  # the deliveries' give-up clock starts again
                    from dicomnode.deliver.ledger import Ledger

                    Ledger(cfg.ledger_path).clear_failures(job.id)
                typer.secho(f"job {job.id}: {job.state.value}", fg="green")
            except QueueError as exc:
                failed += 1
                typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1 if failed else 0)


def _public(job) -> dict:
    """Job as JSON without the raw UIDs and file paths of the payload (they stay in the queue)."""
    data = job.as_dict()
    payload = dict(data.pop("payload"))
    data["input_files"] = len(payload.get("files") or [])
    data["cannot_assess"] = payload.get("cannot_assess")
    return data
