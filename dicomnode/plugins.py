"""Plug-in registries by name → ``"module:attr"``, imported only when chosen (mercure-style).

Why strings and lazy imports: a node that never uses Celery or STOW-RS never imports them, and a new
backend or destination type is one new module plus one ``register`` line.

Why entry points too: ``register`` only reaches the process that runs it. A site's package that declares
``[project.entry-points."ich_node.destinations"] mine = "site_pkg.mod:MyDestination"`` is known to every
process of the node (SCP, workers, ``ich-node`` commands) once installed. Names registered in code win: an
installed package cannot replace a built-in destination or backend.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from typing import Any

LOG = logging.getLogger("dicomnode.plugins")


class PluginError(LookupError):
    """Unknown name, or a target that cannot be imported."""


class Registry:
    def __init__(self, what: str, entries: dict[str, str], group: str | None = None) -> None:
        self.what = what
        self.entries = dict(entries)  # registered in code (built-ins, ``register``)
        self.group = group  # entry-point group of installed plug-ins, read on first use
        self._installed: dict[str, str] | None = None

    def targets(self) -> dict[str, str]:
        """Every known name → ``"module:attr"``: installed entry points, then the code's own on top."""
        if self._installed is None:
            self._installed = {}
            for ep in entry_points(group=self.group) if self.group else ():
                if ":" not in ep.value:
                    LOG.warning("%s %r from an installed package ignored: %r is not 'module:attr'",
                                self.what, ep.name, ep.value)
                    continue
                self._installed[ep.name] = ep.value
            shadowed = sorted(set(self._installed) & set(self.entries))
            if shadowed:
                LOG.warning("installed %s plug-ins ignored, the names are taken: %s", self.what, ", ".join(shadowed))
        return {**self._installed, **self.entries}

    def register(self, name: str, target: str) -> None:
        """Add ``name`` → ``"module:attr"``."""
        if ":" not in target:
            raise ValueError(f"{self.what} target must be 'module:attr', got {target!r}")
        self.entries[name] = target

    def load(self, name: str) -> Any:
        known = self.targets()
        try:
            target = known[name]
        except KeyError:
            raise PluginError(f"unknown {self.what} {name!r}; known: {', '.join(sorted(known))}") from None
        try:
            return load_target(target)
        except (ImportError, AttributeError) as exc:
            raise PluginError(f"{self.what} {name!r} ({target}) cannot be loaded: {exc}") from exc

    def __contains__(self, name: object) -> bool:
        return name in self.targets()


def load_target(target: str) -> Any:
    """``"package.module:attr"`` → the object."""
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ValueError(f"expected 'module:attr', got {target!r}")
    return getattr(importlib.import_module(module), attr)
