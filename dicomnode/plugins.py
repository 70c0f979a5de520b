"""Plug-in registries by name → ``"module:attr"``, imported only when chosen (mercure-style).

Why strings and lazy imports: a node that never uses Celery or STOW-RS never imports them, and a new
backend or destination type is one new module plus one ``register`` line.
"""

from __future__ import annotations

import importlib
from typing import Any


class PluginError(LookupError):
    """Unknown name, or a target that cannot be imported."""


class Registry:
    def __init__(self, what: str, entries: dict[str, str]) -> None:
        self.what = what
        self.entries = dict(entries)

    def register(self, name: str, target: str) -> None:
        """Add ``name`` → ``"module:attr"``."""
        if ":" not in target:
            raise ValueError(f"{self.what} target must be 'module:attr', got {target!r}")
        self.entries[name] = target

    def load(self, name: str) -> Any:
        try:
            target = self.entries[name]
        except KeyError:
            raise PluginError(f"unknown {self.what} {name!r}; known: {', '.join(sorted(self.entries))}") from None
        try:
            return load_target(target)
        except (ImportError, AttributeError) as exc:
            raise PluginError(f"{self.what} {name!r} ({target}) cannot be loaded: {exc}") from exc

    def __contains__(self, name: object) -> bool:
        return name in self.entries


def load_target(target: str) -> Any:
    """``"package.module:attr"`` → the object."""
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ValueError(f"expected 'module:attr', got {target!r}")
    return getattr(importlib.import_module(module), attr)
