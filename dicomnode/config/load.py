"""Reading the configuration through pydantic-settings: the TOML file, ``ICH_NODE__*`` overrides, one
``ConfigError`` listing every problem with its source."""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from .model import NodeConfig

ENV_PREFIX = "ICH_NODE__"
ENV_CONFIG_FILE = "ICH_NODE_CONFIG"

# --------------------------------------------------------------------------------------------
# loading


@dataclass(frozen=True)
class Problem:
    source: str  # file path, env var name, or "defaults"
    key: str  # dotted key, e.g. "destinations.0.port"
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.key}: {self.message}" if self.key else f"{self.source}: {self.message}"


class ConfigError(ValueError):
    """Invalid configuration; ``problems`` lists each one with its source and key."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _set_path(data: dict, path: list[str], value: Any) -> None:
    node: Any = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            idx = int(part)
            while len(node) <= idx:
                node.append({})
            if last:
                node[idx] = value
            else:
                nxt = path[i + 1]
                if not isinstance(node[idx], (dict, list)):
                    node[idx] = [] if nxt.isdigit() else {}
                node = node[idx]
        else:
            if last:
                node[part] = value
            else:
                nxt = path[i + 1]
                if not isinstance(node.get(part), (dict, list)):
                    node[part] = [] if nxt.isdigit() else {}
                node = node[part]


def env_overrides(env: Mapping[str, str]) -> tuple[dict, dict[tuple[str, ...], str]]:
    """The ``ICH_NODE__*`` variables as a nested dict, plus which variable set which key."""
    data: dict = {}
    origin: dict[tuple[str, ...], str] = {}
    for name in sorted(env):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not parts:
            continue
        _set_path(data, parts, _parse_env_value(env[name]))
        origin[tuple(parts)] = name
    return data, origin


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(over, list) and all(isinstance(x, dict) for x in over):
        # index-wise override of list items (ICH_NODE__DESTINATIONS__0__PORT)
        out = list(base)
        for i, v in enumerate(over):
            if i < len(out):
                out[i] = _merge(out[i], v) if v else out[i]
            else:
                out.append(v)
        return out
    return over


def _source_of(loc: tuple, origin: dict[tuple[str, ...], str], file: str) -> str:
    key = tuple(str(p) for p in loc)
    for n in range(len(key), 0, -1):
        if key[:n] in origin:
            return origin[key[:n]]
    # an error on a section/list node may come from env vars below it
    for k, v in origin.items():
        if k[: len(key)] == key and key:
            return v
    return file


class _Sources(NamedTuple):
    toml: Path | None
    env: Mapping[str, str]


_LOADING: ContextVar[_Sources] = ContextVar("ich_node_config_sources")


class _EnvOverrides(PydanticBaseSettingsSource):
    """``ICH_NODE__SECTION__KEY=value`` as a pydantic-settings source: TOML-valued, case-insensitive,
    list items by index. pydantic-settings' own env source reads ``os.environ`` only, takes JSON for
    complex values and has no list indices, so the node keeps its syntax behind this one class."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str], below: dict) -> None:
        super().__init__(settings_cls)
        self._over, _ = env_overrides(env)
        self._below = below  # the TOML file's values: ICH_NODE__DESTINATIONS__0__PORT edits its item 0

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._over.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: _merge(self._below.get(k), v) if k in self._below else v for k, v in self._over.items()}


class _NodeSettings(NodeConfig, BaseSettings):
    """``NodeConfig`` read by pydantic-settings: environment over TOML file over defaults."""

    model_config = SettingsConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: Any, env_settings: Any,
                                   dotenv_settings: Any, file_secret_settings: Any) -> tuple[Any, ...]:
        sources = _LOADING.get()
        toml = TomlConfigSettingsSource(settings_cls, toml_file=sources.toml)
        return _EnvOverrides(settings_cls, sources.env, toml.toml_data), toml


def load_config(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> NodeConfig:
    """Read ``path`` (TOML; optional), apply ``ICH_NODE__*`` overrides from ``env``, validate.

    Raises :class:`ConfigError` listing every problem as ``source: key: why``.
    """
    env = os.environ if env is None else env
    if path is None and env.get(ENV_CONFIG_FILE):
        path = env[ENV_CONFIG_FILE]
    file_label = str(path) if path is not None else "defaults"
    toml_path = Path(path) if path is not None else None
    if toml_path is not None and not toml_path.is_file():
        # pydantic-settings treats a missing file as empty: for the node it is a mistake
        raise ConfigError([Problem(file_label, "", "file not found" if not toml_path.exists() else "not a file")])
    token = _LOADING.set(_Sources(toml_path, env))
    try:
        settings = _NodeSettings()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(file_label, "", f"cannot read: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem(file_label, "", f"not valid TOML: {exc}")]) from None
    except ValidationError as exc:
        raise ConfigError(_problems(exc, env_overrides(env)[1], file_label)) from None
    finally:
        _LOADING.reset(token)
    # the node's type (picklable, comparable), from values validated once above
    return NodeConfig.model_construct(_fields_set=settings.model_fields_set, **dict(settings))


def _problems(exc: ValidationError, origin: dict[tuple[str, ...], str], file_label: str) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (misspelt? see deploy/ich-node.toml)"
        elif "input" in err and err["type"] not in ("missing", "value_error") and not isinstance(err["input"], (dict, list)):
            msg = f"{msg} (got {err['input']!r})"
        problems.append(Problem(_source_of(loc, origin, file_label), ".".join(str(x) for x in loc), msg))
    return problems
