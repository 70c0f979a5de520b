"""Where the pipeline finds its models.

A model version is a directory with a ``metadata.json`` (see ``ModelMetadata``). The pipeline only
reads directories; choosing which version is current is the registry's job (``training.registry``),
which hands the pipeline a ``ModelPaths``. The bundled defaults live in ``models/<kind>/<version>/``
at the repository root.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

BUNDLED_ROOT = Path(__file__).resolve().parent.parent / "models"
KINDS = ("segmenter", "classifier")


@dataclass(frozen=True)
class ModelMetadata:
    kind: str                 # "segmenter" | "classifier"
    version: str              # "1", "2", ...
    name: str                 # human name, e.g. "ich-unet3d"
    created: str              # ISO 8601
    training_data: dict       # {"source": "synthetic", "fingerprint": sha256, "cases": n}
    metrics: dict
    code_version: str
    parent_version: str | None = None
    extra: dict | None = None

    @classmethod
    def read(cls, model_dir: Path) -> "ModelMetadata":
        path = Path(model_dir) / "metadata.json"
        if not path.is_file():
            raise FileNotFoundError(f"{model_dir} is not a model directory: metadata.json missing")
        data = json.loads(path.read_text())
        known = {k: data.pop(k) for k in list(data) if k in cls.__dataclass_fields__}
        extra = {**(known.pop("extra", None) or {}), **data}
        return cls(**known, extra=extra or None)

    def write(self, model_dir: Path) -> Path:
        path = Path(model_dir) / "metadata.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.__dict__, indent=2, sort_keys=True, default=str))
        return path


@dataclass(frozen=True)
class ModelPaths:
    """The model directories one analysis uses; ``None`` means "not installed"."""

    segmenter: Path | None = None   # None → classical baseline segmenter
    classifier: Path | None = None  # None → expansion probability and risk stay null

    @classmethod
    def bundled(cls) -> "ModelPaths":
        """Highest bundled version of each kind, if any ships with the code."""
        found: dict[str, Path | None] = {}
        for kind in KINDS:
            root = BUNDLED_ROOT / kind
            versions = sorted(
                (p for p in root.iterdir() if (p / "metadata.json").is_file()) if root.is_dir() else [],
                key=lambda p: int(p.name) if p.name.isdigit() else -1,
            )
            found[kind] = versions[-1] if versions else None
        return cls(**found)
