"""Model 1 runtimes: brain volume → hematoma mask. ``load_segmenter`` picks one from a model directory."""

from pipeline.segment.base import Segmenter, load_segmenter

__all__ = ["Segmenter", "load_segmenter"]
