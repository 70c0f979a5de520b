"""`ich-node`: the admin's command line.

Each module here owns one family of subcommands and exposes ``register(app, groups)``; the
modules stay thin (parse, call, print) and import heavy libraries inside the command body so
that ``ich-node --help`` stays instant.
"""

from __future__ import annotations

import typer

from . import analyze, classifier, config_cmd, dataset, jobs, models, net, retrain, segmenter, serve, status, synth, worker

app = typer.Typer(no_args_is_help=True, add_completion=False, help="ICH expansion DICOM node (research use only).")

GROUPS: dict[str, typer.Typer] = {
    name: typer.Typer(no_args_is_help=True, help=text)
    for name, text in {
        "train": "Train a model from a cohort.",
        "evaluate": "Evaluate a model on held-out data.",
        "models": "Model registry: list, show, promote, rollback.",
        "dataset": "Training cases the node collected or imported.",
        "jobs": "Analysis jobs: list, show, retry.",
        "config": "Configuration files.",
    }.items()
}
for _name, _group in GROUPS.items():
    app.add_typer(_group, name=_name)

for _module in (serve, status, jobs, net, config_cmd, analyze, synth, segmenter, classifier, models, dataset, retrain, worker):
    _module.register(app, GROUPS)


def main() -> None:
    app()
