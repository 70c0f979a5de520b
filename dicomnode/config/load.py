"""Reading the configuration: the TOML file, ``ICH_NODE__*`` overrides, one ``ConfigError`` listing every
problem with its source."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pydantic import ValidationError

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


def load_config(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> NodeConfig:
    """Read ``path`` (TOML; optional), apply ``ICH_NODE__*`` overrides from ``env``, validate.

    Raises :class:`ConfigError` listing every problem as ``source: key: why``.
    """
    env = os.environ if env is None else env
    if path is None and env.get(ENV_CONFIG_FILE):
        path = env[ENV_CONFIG_FILE]
    file_label = str(path) if path is not None else "defaults"
    data: dict = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([Problem(file_label, "", "file not found")]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([Problem(file_label, "", f"cannot read: {exc}")]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([Problem(file_label, "", f"not valid TOML: {exc}")]) from None
    over, origin = env_overrides(env)
    data = _merge(data, over)
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
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
        raise ConfigError(problems) from None
