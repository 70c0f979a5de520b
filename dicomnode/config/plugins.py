"""Plug-in tables: ``[queue]`` and each ``[[destinations]]`` entry validated as the ``Config`` class of the
plug-in their key names, looked up in its registry when the config is read."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Mapping

from pydantic import BaseModel, PlainValidator, SerializeAsAny, TypeAdapter, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

# [[destinations]] and [queue]: one config class per destination type / queue backend, owned by its module
# (dicomnode.deliver, dicomnode.queue), chosen through the plug-in registry when the config is read
from dicomnode.deliver import DEFAULT_TYPE, TYPES, DestinationConfig
from dicomnode.plugins import PluginError, Registry
from dicomnode.queue import BACKENDS, DEFAULT_BACKEND, QueueConfig


# --------------------------------------------------------------------------------------------
# plug-in sections: the config class of the plug-in a key names, looked up in its registry


def plugin_config(registry: Registry, base: type[BaseModel], *, key: str, default: str,
                  foreign_keys: Literal["forbid", "ignore"] = "forbid") -> Any:
    """The type of a table validated as the ``Config`` of the plug-in its ``key`` names (``default`` when
    left out), looked up in ``registry`` at validation time: a type registered later (a site's own
    destination) is configured like the built-in ones, with no change here.

    ``foreign_keys="ignore"``: a key the chosen class lacks but another registered plug-in's class has is
    dropped instead of refused (``[queue]`` of an embedded queue may keep the Celery keys of the sample
    file); any other unknown key is an error.
    """

    def validate(value: Any) -> BaseModel:
        if isinstance(value, base):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a table, got {type(value).__name__}")
        name = value.get(key) or default
        cls = _config_class(registry, base, key, name)
        data = {**value, key: name}
        if foreign_keys == "ignore":
            data = _without_foreign_keys(registry, cls, name, data)
        return cls.model_validate(data)

    return Annotated[SerializeAsAny[base], PlainValidator(validate)]


def _config_class(registry: Registry, base: type[BaseModel], key: str, name: Any) -> type[BaseModel]:
    """The ``Config`` of plug-in ``name``; a problem is a validation error on ``key``."""
    if not isinstance(name, str):
        why = f"{key} must be a string, got {name!r}"
    else:
        try:
            cls = getattr(registry.load(name), "Config", None)
        except PluginError as exc:
            why = str(exc)
        else:
            if isinstance(cls, type) and issubclass(cls, base):
                return cls
            why = f"{registry.what} {name!r} has no Config class (a {base.__name__})"
    raise ValidationError.from_exception_data(base.__name__, [InitErrorDetails(
        type=PydanticCustomError("value_error", "{why}", {"why": why}), loc=(key,), input=name)])


def _without_foreign_keys(registry: Registry, cls: type[BaseModel], name: str, data: dict) -> dict:
    unknown = set(data) - set(cls.model_fields)
    if not unknown:
        return data
    foreign: set[str] = set()
    for other in registry.targets():
        if other != name:
            try:
                foreign |= set(registry.load(other).Config.model_fields)
            except (PluginError, AttributeError):
                continue  # a plug-in that cannot be loaded owns no keys
    return {k: v for k, v in data.items() if k not in unknown & foreign}


#: one ``[[destinations]]`` entry: the config class of its ``type`` (dicomnode.deliver.TYPES)
AnyDestination = plugin_config(TYPES, DestinationConfig, key="type", default=DEFAULT_TYPE)
#: ``[queue]``: the config class of its ``backend`` (dicomnode.queue.BACKENDS); the keys of the other
#: backends (e.g. redis_url with backend = "sqlite") are ignored, as they were before each backend owned its keys
AnyQueue = plugin_config(BACKENDS, QueueConfig, key="backend", default=DEFAULT_BACKEND, foreign_keys="ignore")
_DESTINATION, _QUEUE = TypeAdapter(AnyDestination), TypeAdapter(AnyQueue)


class Destination:
    """``Destination(name=…, type=…, …)``: a validated config of that type (default ``dimse``), as a
    ``[[destinations]]`` table would give."""

    def __new__(cls, **fields: Any) -> DestinationConfig:  # type: ignore[misc]
        return _DESTINATION.validate_python(fields)

    @staticmethod
    def from_address(text: str, name: str | None = None) -> DestinationConfig:
        """A destination of the default type from ``AE@HOST:PORT`` (``--destination`` on the command line)."""
        return TYPES.load(DEFAULT_TYPE).Config.from_address(text, name)
