"""Senders behind a registry keyed by config ``destinations[].type`` (mercure's target types).

A new kind of destination is one new module with a ``Destination`` subclass whose ``Config`` is its
config class (a ``DestinationConfig`` subclass with ``type: Literal["name"]``), registered in
``TYPES`` here. ``dicomnode.config`` validates each ``[[destinations]]`` entry as the config class of
its ``type`` (``AnyDestination``, built from ``TYPES`` when this package is imported: a type
``register``-ed later needs ``NodeConfig.model_rebuild()`` after ``AnyDestination`` is rebuilt).
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Discriminator, Tag, TypeAdapter

from ..plugins import PluginError, Registry
from .base import DeliveryError, Destination, DestinationConfig, OnDelivered, TLSClient

__all__ = ["AnyDestination", "DeliveryError", "Destination", "DestinationConfig", "DestinationEntry", "OnDelivered",
           "TLSClient", "TYPES", "register", "build"]

TYPES = Registry("destination type", {
    "dimse": "dicomnode.deliver.dimse:DimseDestination",
    "stowrs": "dicomnode.deliver.stowrs:StowRsDestination",
})
register = TYPES.register


def _type_of(entry: Any) -> str:
    """The ``type`` of a ``[[destinations]]`` entry; "dimse" when left out."""
    return (entry.get("type") if isinstance(entry, dict) else getattr(entry, "type", None)) or "dimse"


def config_union() -> Any:
    """One ``[[destinations]]`` entry: the config class of each registered type, chosen by ``type``."""
    tagged = tuple(Annotated[TYPES.load(name).Config, Tag(name)] for name in TYPES.entries)
    return Annotated[Union[tagged], Discriminator(_type_of)]


AnyDestination = config_union()
_ADAPTER = TypeAdapter(AnyDestination)


class DestinationEntry:
    """``DestinationEntry(name=…, type=…, …)``: a validated config of that type (default ``dimse``), as a
    ``[[destinations]]`` table would give (``dicomnode.config.Destination`` is this)."""

    def __new__(cls, **fields: Any) -> DestinationConfig:  # type: ignore[misc]
        return _ADAPTER.validate_python(fields)

    @staticmethod
    def from_address(text: str, name: str | None = None) -> DestinationConfig:
        """A DIMSE destination from ``AE@HOST:PORT`` (``--destination`` on the command line)."""
        return TYPES.load("dimse").Config.from_address(text, name)


def build(config: DestinationConfig, *, calling_ae_title: str = "ICHNODE") -> Destination:
    """The sender for one configured destination."""
    try:
        cls = TYPES.load(config.type)
    except PluginError as exc:
        raise ValueError(f"destination {config.name!r}: {exc}") from None
    return cls(config, calling_ae_title=calling_ae_title)
