"""Senders behind a registry keyed by config ``destinations[].type`` (mercure's target types).

A new kind of destination is one new module with a ``Destination`` subclass, registered here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..plugins import PluginError, Registry
from .base import DeliveryError, Destination, OnDelivered

if TYPE_CHECKING:
    from dicomnode.config import Destination as DestinationConfig

__all__ = ["DeliveryError", "Destination", "OnDelivered", "TYPES", "register", "build"]

TYPES = Registry("destination type", {
    "dimse": "dicomnode.deliver.dimse:DimseDestination",
    "stowrs": "dicomnode.deliver.stowrs:StowRsDestination",
})
register = TYPES.register


def build(config: "DestinationConfig", *, calling_ae_title: str = "ICHNODE") -> Destination:
    """The sender for one configured destination."""
    try:
        cls = TYPES.load(config.type)
    except PluginError as exc:
        raise ValueError(f"destination {config.name!r}: {exc}") from None
    return cls(config, calling_ae_title=calling_ae_title)
