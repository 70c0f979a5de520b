"""Senders behind a registry keyed by config ``destinations[].type`` (mercure's target types).

A new kind of destination is one new module with a ``Destination`` subclass, registered here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .base import DeliveryError, Destination, OnDelivered

if TYPE_CHECKING:
    from dicomnode.config import Destination as DestinationConfig

__all__ = ["DeliveryError", "Destination", "OnDelivered", "TYPES", "register", "build"]

TYPES: dict[str, str] = {
    "dimse": "dicomnode.destinations.dimse:DimseDestination",
    "stowrs": "dicomnode.destinations.stowrs:StowRsDestination",
}


def register(type_name: str, target: str) -> None:
    """Add a destination type (``"module:Class"``)."""
    if ":" not in target:
        raise ValueError(f"destination target must be 'module:Class', got {target!r}")
    TYPES[type_name] = target


def build(config: "DestinationConfig", *, calling_ae_title: str = "ICHNODE") -> Destination:
    """The sender for one configured destination."""
    try:
        target = TYPES[config.type]
    except KeyError:
        raise ValueError(f"destination {config.name!r}: unknown type {config.type!r}; known: {', '.join(TYPES)}") from None
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    return cls(config, calling_ae_title=calling_ae_title)
