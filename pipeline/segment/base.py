"""The segmenter interface and the registry that picks a runtime from a model directory.

A model directory's ``metadata.json`` names its framework; the runtime for it is imported only when
needed, so the classical fallback works without TensorFlow loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # only named here: the package then imports without SimpleITK (pipeline.segment.network)
    from pipeline.volume import Volume


@runtime_checkable
class Segmenter(Protocol):
    """Anything that turns a CT volume and its brain mask into a hematoma mask on the same grid."""

    name: str
    version: str

    def predict_mask(self, volume: Volume, brain: np.ndarray) -> np.ndarray:
        """Bool (z, y, x) hematoma mask on ``volume``'s grid, inside ``brain``."""
        ...


def load_segmenter(model_dir: Path | str | None) -> Segmenter:
    """``None`` → the classical baseline; otherwise the runtime named by ``metadata.json``'s framework."""
    if model_dir is None:
        from pipeline.segment.classical import ClassicalSegmenter

        return ClassicalSegmenter()
    model_dir = Path(model_dir)
    meta_path = model_dir / "metadata.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a segmenter model directory: metadata.json missing")
    meta = json.loads(meta_path.read_text())
    kind = meta.get("kind", "segmenter")
    if kind != "segmenter":
        raise ValueError(f"{model_dir} holds a {kind!r} model, not a segmenter")
    framework = str(meta.get("framework") or (meta.get("extra") or {}).get("framework") or "").lower()
    if framework == "keras":
        from pipeline.segment.cnn import CNNSegmenter  # another runtime; imported only when asked for

        return CNNSegmenter.load(model_dir)
    if framework == "classical":
        from pipeline.segment.classical import ClassicalSegmenter

        return ClassicalSegmenter.load(model_dir)
    raise ValueError(f"{model_dir}: unknown segmenter framework {framework!r} (expected 'keras' or 'classical')")
