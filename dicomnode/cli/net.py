"""`ich-node echo` and `ich-node send`: check and feed DICOM peers from the node's side."""

from __future__ import annotations

from pathlib import Path

import typer

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


def _destination(address: str, calling_ae: str, tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None):
    from dicomnode.config import Destination, TLSClient
    from dicomnode.deliver import build

    d = Destination.from_address(address)
    if tls_ca or tls_cert:
        d = d.model_copy(update={"tls": TLSClient(enabled=True, ca=tls_ca, cert=tls_cert, key=tls_key)})
    return build(d, calling_ae_title=calling_ae)


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    calling = typer.Option("ICHNODE", "--calling-ae", help="Our AE title towards the peer.")
    ca = typer.Option(None, "--tls-ca", help="PEM CA bundle: use TLS and verify the peer with it.")
    cert = typer.Option(None, "--tls-cert", help="PEM client certificate (mutual TLS).")
    key = typer.Option(None, "--tls-key", help="PEM client key (mutual TLS).")

    @app.command()
    def echo(address: str = typer.Argument(..., help="AE@HOST:PORT"), calling_ae: str = calling,
             tls_ca: Path = ca, tls_cert: Path = cert, tls_key: Path = key) -> None:
        """C-ECHO a peer (is the PACS, or the node, reachable and does it accept us?)."""
        from dicomnode.deliver import DeliveryError

        try:
            dest = _destination(address, calling_ae, tls_ca, tls_cert, tls_key)
            dest.check()
        except (ValueError, DeliveryError) as exc:
            typer.secho(f"echo failed: {exc}", fg="red", err=True)
            raise typer.Exit(1) from None
        typer.secho(f"{address}: C-ECHO ok", fg="green")

    @app.command()
    def send(directory: Path = typer.Argument(..., exists=True, help="A DICOM file or a folder (searched recursively)."),
             address: str = typer.Argument(..., help="AE@HOST:PORT"), calling_ae: str = calling,
             tls_ca: Path = ca, tls_cert: Path = cert, tls_key: Path = key) -> None:
        """C-STORE every DICOM file under DIRECTORY to a peer (DICOMDIR files are skipped)."""
        import pydicom
        from pydicom.errors import InvalidDicomError

        from dicomnode.deliver import DeliveryError

        paths = [directory] if directory.is_file() else sorted(p for p in directory.rglob("*") if p.is_file())
        files, skipped = [], []
        for p in paths:
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError):
                skipped.append((p, "not DICOM"))
                continue
            sop_class = str(ds.get("SOPClassUID") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", ""))
            if sop_class == MEDIA_STORAGE_DIRECTORY or p.name.upper() == "DICOMDIR":
                skipped.append((p, "DICOMDIR (a directory, not an image)"))
                continue
            if not sop_class:
                skipped.append((p, "no SOP Class UID"))
                continue
            files.append(p)
        for p, why in skipped:
            typer.secho(f"skipped {p.name}: {why}", fg="yellow", err=True)
        if not files:
            typer.secho("no DICOM files to send", fg="red", err=True)
            raise typer.Exit(1)
        sent: list[Path] = []
        try:
            dest = _destination(address, calling_ae, tls_ca, tls_cert, tls_key)
            dest.send(files, sent.append)
        except (ValueError, DeliveryError) as exc:
            typer.secho(f"sent {len(sent)} of {len(files)}; stopped: {exc}", fg="red", err=True)
            raise typer.Exit(1) from None
        typer.secho(f"sent {len(sent)} file(s) to {address}", fg="green")
