"""`ich-node synth`: generate a synthetic head-CT ICH cohort (thin wrapper over training.synth)."""

from __future__ import annotations

from pathlib import Path

import typer


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{name} must be comma-separated numbers, got {text!r}") from None
    if not vals:
        raise typer.BadParameter(f"{name} needs at least one value")
    return vals


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add ``synth`` to the top-level app."""

    @app.command("synth")
    def synth(
        cases: int = typer.Option(..., "--cases", min=1, help="Number of patients (baseline + follow-up each)."),
        out: Path = typer.Option(None, "--out", help="Empty output directory (not needed with --stats-only)."),
        seed: int = typer.Option(0, "--seed", help="Cohort seed; same seed + options = same cohort."),
        matrix: str = typer.Option("512", "--matrix", help="Image matrix (512 clinical; smaller for test cohorts); several, e.g. 256,512, are drawn per case."),
        thickness: str = typer.Option("1,2.5,5", "--thickness", help="Slice thickness(es) in mm to draw from, e.g. 5 or 2.5,5."),
        tilt_fraction: float = typer.Option(0.3, "--tilt-fraction", min=0, max=1, help="Share of gantry-tilted studies."),
        prevalence: float = typer.Option(0.25, "--prevalence", min=0, max=1, help="Expansion prevalence."),
        head_source: str = typer.Option("phantom", "--head-source", help="phantom | real | mixed."),
        real_fraction: float = typer.Option(0.5, "--real-fraction", min=0, max=1, help="Real-head share when mixed."),
        streaks: float = typer.Option(0.5, "--streak-probability", min=0, max=1, help="Beam-hardening streak rate."),
        workers: int = typer.Option(1, "--workers", min=1, help="Worker processes (output does not depend on it)."),
        rle: bool = typer.Option(False, "--rle", help="Write RLE Lossless pixel data (~40 % smaller)."),
        stats_only: bool = typer.Option(False, "--stats-only", help="Print the cohort's statistics as JSON; write nothing."),
        previews: int = typer.Option(0, "--previews", min=0, help="PNG contact sheets for the first N cases (OUT/previews)."),
        appearance: str = typer.Option("default", "--appearance", help="default | shifted: another scanner's look (kernels, noise texture, slice profile, clot margins; training.synth.options.shifted_appearance), for held-out 'other site' cohorts."),
    ) -> None:
        """Generate a synthetic non-contrast head-CT cohort with hematoma expansion labels."""
        from tqdm import tqdm

        import json

        from training.synth import OptionsError, SynthOptions, cohort_statistics, write_cohort
        from training.synth.options import shifted_appearance

        matrices = tuple(int(m) for m in _floats(matrix, "--matrix"))
        if appearance not in ("default", "shifted"):
            raise typer.BadParameter(f"--appearance must be default or shifted, got {appearance!r}")
        try:
            chosen = dict(matrix=max(matrices), matrix_choices=matrices if len(matrices) > 1 else (),
                          thickness_mm=_floats(thickness, "--thickness"), tilt_fraction=tilt_fraction,
                          prevalence=prevalence, streak_probability=streaks, dicom_rle=rle)
            if appearance == "shifted":  # its own head mix unless asked for
                opts = shifted_appearance(**chosen)
            else:
                opts = SynthOptions(head_source=head_source, real_fraction=real_fraction, **chosen)
        except OptionsError as e:
            raise typer.BadParameter(str(e)) from None
        if stats_only:
            with tqdm(total=cases, unit="case", desc="synth (statistics)") as bar:
                stats = cohort_statistics(cases, seed, opts, progress=bar.update)
            typer.echo(json.dumps(stats, indent=2))
            return
        if out is None:
            raise typer.BadParameter("--out is required (or use --stats-only)")
        try:
            with tqdm(total=cases, unit="case", desc="synth") as bar:
                manifest = write_cohort(out, cases, seed, opts, workers=workers, progress=bar.update, previews=previews)
        except FileExistsError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"wrote {cases} cases: {manifest}")
