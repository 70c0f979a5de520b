"""Typed node settings: one TOML file, environment overrides, precise validation errors.

Why one model tree: every part of the node (SCP, queue, worker, destinations, scheduler) reads
its own section from the same validated object, so a typo is caught once, at start-up, with the
file and the key it came from, instead of surfacing as a crash at 3 a.m.

Sources, lowest priority first (read by pydantic-settings, ``load.py``):

1. defaults declared below (a node runs with no file at all: ``ich-node serve``),
2. the TOML file (``load_config(path)``; ``ICH_NODE_CONFIG`` names it when ``path`` is None),
3. environment variables ``ICH_NODE__SECTION__KEY=value`` (case-insensitive; nested keys and list
   indices use further ``__``, e.g. ``ICH_NODE__DESTINATIONS__0__PORT=104``). Values are read as TOML
   values when they parse (``true``, ``42``, ``["A", "B"]``, ``[{ae_title = "PACS"}]``), else as
   plain strings.

Errors are raised as one :class:`ConfigError` listing every problem as ``source: key: why``.

Sections are owned by different parts of the node; add fields to your own section, keep each
field typed, defaulted and commented with WHY it exists.
"""

from dicomnode.aetitle import AEAddress, validate_ae_title
from dicomnode.deliver import TLSClient

from .load import ENV_CONFIG_FILE, ENV_PREFIX, ConfigError, Problem, env_overrides, load_config
from .model import NodeConfig
from .plugins import AnyDestination, AnyQueue, Destination, plugin_config
from .sections import (AllowedCaller, HeartbeatSection, LoggingSection, MetricsSection, ModelsSection, NodeSection,
                       SchedulerSection, SecuritySection, SelectionSection, StorageSection, TLSServer,
                       TrainingSection, WorkerSection, parse_ae_address, parse_caller)

__all__ = ["AEAddress", "AllowedCaller", "AnyDestination", "AnyQueue", "ConfigError", "Destination",
           "ENV_CONFIG_FILE", "ENV_PREFIX", "HeartbeatSection", "LoggingSection", "MetricsSection", "ModelsSection",
           "NodeConfig", "NodeSection", "Problem", "SchedulerSection", "SecuritySection", "SelectionSection",
           "StorageSection", "TLSClient", "TLSServer", "TrainingSection", "WorkerSection", "env_overrides",
           "load_config", "parse_ae_address", "parse_caller", "plugin_config", "validate_ae_title"]
