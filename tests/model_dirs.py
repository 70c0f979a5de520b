"""A minimal model directory (metadata + a weights file) for registry and watcher tests."""

from __future__ import annotations

from pathlib import Path

from pipeline.models import ModelMetadata


def make_model(path: Path, kind: str, version: str = "0", payload: str = "w") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "weights.bin").write_text(payload)
    ModelMetadata(kind=kind, version=version, name=f"test-{kind}", created="2026-01-01T00:00:00+00:00",
                  training_data={"source": "synthetic", "fingerprint": "x" * 8, "cases": 10},
                  metrics={}, code_version="test").write(path)
    return path
