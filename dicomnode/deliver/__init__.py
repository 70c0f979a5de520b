"""Senders behind a registry keyed by config ``destinations[].type`` (mercure's target types).

A new kind of destination is one new module with a ``Destination`` subclass whose ``Config`` is its
config class (a ``DestinationConfig`` subclass with ``type: Literal["name"]``), registered in
``TYPES`` here, by a site's own code with ``register("name", "module:Class")`` before the config is
read, or by an installed package's entry point in the group ``ich_node.destinations`` (every process). ``dicomnode.config`` validates each ``[[destinations]]`` entry as the ``Config`` of its ``type``,
looked up in ``TYPES`` when the config is read (``DEFAULT_TYPE`` when left out).
"""

from __future__ import annotations

from ..plugins import PluginError, Registry
from .base import DeliveryError, Destination, DestinationConfig, OnDelivered, TLSClient

__all__ = ["DEFAULT_TYPE", "DeliveryError", "Destination", "DestinationConfig", "OnDelivered", "TLSClient", "TYPES",
           "register", "build"]

TYPES = Registry("destination type", group="ich_node.destinations", entries={
    "dimse": "dicomnode.deliver.dimse:DimseDestination",
    "stowrs": "dicomnode.deliver.stowrs:StowRsDestination",
})
DEFAULT_TYPE = "dimse"  # a [[destinations]] entry without a type key
register = TYPES.register


def build(config: DestinationConfig, *, calling_ae_title: str = "ICHNODE") -> Destination:
    """The sender for one configured destination."""
    try:
        cls = TYPES.load(config.type)
    except PluginError as exc:
        raise ValueError(f"destination {config.name!r}: {exc}") from None
    return cls(config, calling_ae_title=calling_ae_title)
