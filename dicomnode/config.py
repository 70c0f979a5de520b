"""Typed node settings: one TOML file, environment overrides, precise validation errors.

Why one model tree: every part of the node (SCP, queue, worker, destinations, scheduler) reads
its own section from the same validated object, so a typo is caught once, at start-up, with the
file and the key it came from, instead of surfacing as a crash at 3 a.m.

Sources, lowest priority first:

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

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import (BaseModel, ConfigDict, Field, PlainValidator, SerializeAsAny, TypeAdapter, ValidationError,
                      field_validator, model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from dicomnode.aetitle import AEAddress, validate_ae_title  # noqa: F401 - AEAddress re-exported
# [[destinations]] and [queue]: one config class per destination type / queue backend, owned by its module
# (dicomnode.deliver, dicomnode.queue), chosen through the plug-in registry when the config is read
from dicomnode.deliver import DEFAULT_TYPE, TYPES, DestinationConfig, TLSClient  # noqa: F401 - TLSClient re-exported
from dicomnode.plugins import PluginError, Registry
from dicomnode.queue import BACKENDS, DEFAULT_BACKEND, QueueConfig
from training.labels import LabelPolicy
from training.retrain import DataPolicy, GatePolicy

_LABELS, _DATA, _GATE = LabelPolicy(), DataPolicy(), GatePolicy()  # defaults of [training]

ENV_PREFIX = "ICH_NODE__"
ENV_CONFIG_FILE = "ICH_NODE_CONFIG"

# --------------------------------------------------------------------------------------------
# small value types


def parse_ae_address(text: str) -> AEAddress:
    """Shortcut for :meth:`AEAddress.parse`."""
    return AEAddress.parse(text)


def parse_caller(text: str) -> "AllowedCaller":
    """Parse an allow-list entry from the command line: ``AE`` or ``AE@HOST``."""
    ae, _, host = text.partition("@")
    return AllowedCaller(ae_title=ae, host=host or None)


class _Section(BaseModel):
    # extra="forbid": a misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------
# sections


class NodeSection(_Section):
    """Where the node listens and keeps its state."""

    ae_title: str = "ICHNODE"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)  # 0 = any free port (tests); see ReceiveServer.port
    data_dir: Path = Path("./var")  # spool, index, queue, results, models registry (unless set)
    # Largest PDU we accept. Bigger PDUs mean fewer Python-level reads per image: the ingest
    # benchmark is noticeably faster at 256 KiB than at pynetdicom's 16 KiB default. 0 = unlimited.
    # A P-DATA-TF PDU longer than this is refused with an A-ABORT (dicomnode.receive.guard).
    max_pdu: int = Field(262144, ge=4096, le=16 << 20)
    # C-STORE data read straight from the PDUs (dicomnode.receive.fast_store) instead of through
    # pynetdicom's DIMSE layer: same checks, same durability, ≈ half the CPU per image. false = pynetdicom
    # only (also what runs when the installed pynetdicom is not the one the fast path was written for).
    fast_store: bool = True
    max_associations: int = Field(16, ge=1)  # associations at once (more TCP connections are dropped)
    # Receiver processes sharing the port (SO_REUSEPORT; each with its own journal): several scanners at
    # once use several cores. 1 = the SCP runs inside the node's own process.
    receivers: int = Field(1, ge=1, le=16)
    max_associations_per_peer: int = Field(8, ge=1)  # from one address; more are refused (A-ASSOCIATE-RJ, transient)
    # A data set is held in RAM up to this size; a larger one is streamed to a spool file as it arrives
    # (fast path) or refused with an A-ABORT (pynetdicom's path, which cannot stream).
    stream_over_mb: int = Field(32, ge=1, le=4096)
    max_dataset_mb: int = Field(4096, ge=1)  # the largest data set accepted at all
    acse_timeout_s: float = Field(30, gt=0)  # association negotiation (and the TLS handshake)
    dimse_timeout_s: float = Field(60, gt=0)  # waiting for the next DIMSE message
    network_timeout_s: float = Field(120, gt=0)  # idle association, or a PDU stalled half way, is aborted after this

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, v: str) -> str:
        return validate_ae_title(v)

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def index_path(self) -> Path:
        return self.data_dir / "index.sqlite3"


class AllowedCaller(_Section):
    """One allowed calling AE; ``host`` (an IP, a CIDR network or a host name) narrows it further."""

    ae_title: str
    host: str | None = None

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, v: str) -> str:
        return validate_ae_title(v)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip()
        if not v:
            return None
        if "/" in v:
            try:
                ipaddress.ip_network(v, strict=False)
            except ValueError as exc:
                raise ValueError(f"{v!r} is not a valid network: {exc}") from None
        return v

    def matches(self, ae_title: str, address: str) -> bool:
        """True when a peer with this calling AE title and IP address is this entry."""
        if ae_title.strip() != self.ae_title:
            return False
        if self.host is None:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address == self.host
        if "/" in self.host:
            return ip in ipaddress.ip_network(self.host, strict=False)
        try:
            return ip == ipaddress.ip_address(self.host)
        except ValueError:
            import socket

            try:
                return address in {ai[4][0] for ai in socket.getaddrinfo(self.host, None)}
            except OSError:
                return False


class TLSServer(_Section):
    """TLS for the listening side. With ``require_client_cert`` it is mutual TLS."""

    enabled: bool = False
    cert: Path | None = None  # PEM server certificate (chain)
    key: Path | None = None  # PEM private key
    ca: Path | None = None  # PEM CA bundle used to verify client certificates
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _complete(self) -> "TLSServer":
        if not self.enabled:
            return self
        missing = [n for n in ("cert", "key") if getattr(self, n) is None]
        if self.require_client_cert and self.ca is None:
            missing.append("ca (needed by require_client_cert)")
        if missing:
            raise ValueError(f"TLS is enabled but {', '.join(missing)} not set")
        for name in ("cert", "key", "ca"):
            p = getattr(self, name)
            if p is not None and not Path(p).is_file():
                raise ValueError(f"{name} file {str(p)!r} does not exist")
        return self


class SecuritySection(_Section):
    """Who may talk to the node."""

    allowed_callers: list[AllowedCaller] = Field(default_factory=list)  # empty = any caller
    require_called_ae: bool = True  # refuse associations addressed to another AE title
    tls: TLSServer = Field(default_factory=TLSServer)

    @field_validator("allowed_callers", mode="before")
    @classmethod
    def _callers(cls, v: Any) -> Any:
        # Accept the short forms "AE" and "AE@HOST" besides tables.
        if isinstance(v, list):
            return [parse_caller(x).model_dump() if isinstance(x, str) else x for x in v]
        return v

    def caller_allowed(self, ae_title: str, address: str) -> bool:
        return not self.allowed_callers or any(c.matches(ae_title, address) for c in self.allowed_callers)


class StorageSection(_Section):
    """Spool limits."""

    min_free_bytes: int = Field(1 << 30, ge=0)  # below this, C-STORE answers 0xA700 Out of Resources
    retention_days: float | None = Field(30, gt=0)  # spool files older than this are removed; None = keep
    # Write-ahead journal (dicomnode.store.journal): each data set is made durable by one O_DSYNC write
    # before the answer; spool files and index rows are flushed in bulk at checkpoints and replayed
    # after a crash. 0 = off: every spool file is fsynced on its own before the answer (slower).
    journal_mb: int = Field(256, ge=0)


class SelectionSection(_Section):
    """Which series are analysed, and when a series counts as complete."""

    quiet_seconds: float = Field(10, ge=0)  # series is complete after this long without a new instance
    # ... or earlier: when the association(s) that sent it were released and its geometry is complete
    complete_on_release: bool = True
    release_grace_s: float = Field(1.0, ge=0, le=60)  # after the release: the sender's next association may follow
    max_slice_thickness_mm: float = Field(5.0, gt=0)
    min_slices: int = Field(10, ge=2)  # fewer slices cannot cover a brain at ≤5 mm
    min_coverage_mm: float = Field(80.0, gt=0)  # cranio-caudal extent needed to cover the supratentorial brain
    gap_factor: float = Field(1.5, gt=1)  # a gap > gap_factor × median spacing = missing slices


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
    for other in registry.entries:
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


class WorkerSection(_Section):
    processes: int = Field(1, ge=1)  # analysis processes; each loads the models once
    # The analysis entry ("module:callable" taking ModelPaths); swapped only by unit tests of the node.
    analyzer: str = Field("pipeline.analyze:Analyzer", pattern=r"^[\w.]+:\w+$")
    max_jobs_per_process: int = Field(50, ge=1)  # then the child restarts: leaked/fragmented memory goes back
    threads: int = Field(2, ge=1)  # BLAS/TF threads inside one analysis process
    # "cannot assess" reports of series selection already judged are written by the node itself (no
    # model, no wait for the analysis process): a burst of them never holds a real head CT back
    local_verdicts: bool = True


def _check_cron(v: str | None) -> str | None:
    if v is None:
        return None
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(v)
    except ValueError as exc:
        raise ValueError(f"{v!r} is not a 5-field crontab expression: {exc}") from None
    return v


class SchedulerSection(_Section):
    sweep_seconds: float = Field(2, gt=0)  # how often complete series are looked for
    retry_seconds: float = Field(15, gt=0)  # how often due retries are picked up
    cleanup_cron: str = "30 3 * * *"  # spool retention
    disk_check_seconds: float = Field(60, gt=0)
    retrain_cron: str | None = None  # None = no automatic retraining

    @field_validator("cleanup_cron", "retrain_cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        return _check_cron(v)


class ModelsSection(_Section):
    registry_dir: Path | None = None  # default: <node.data_dir>/models
    bundled_fallback: bool = True  # use models/ at the repo root when the registry is empty


class MetricsSection(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=1, le=65535)
    time_to_result_target_s: float = Field(60, gt=0)  # SLO: last instance received → result sent


class HeartbeatSection(_Section):
    """A synthetic study sent through the whole loop on a schedule (dicomnode.heartbeat)."""

    enabled: bool = False  # off by default: it adds a study to the PACS every interval
    interval_s: float = Field(3600, ge=10)
    timeout_s: float = Field(600, gt=0)  # the results must reach the destination within this
    destination: str | None = None  # name of the destination to check (default: the first one)
    calling_ae_title: str = "ICHHEARTBEAT"  # add it to security.allowed_callers when that list is used
    orthanc_url: str | None = None  # check through Orthanc's REST API instead of C-FIND (demo PACS)

    @field_validator("calling_ae_title")
    @classmethod
    def _check_ae(cls, v: str) -> str:
        return validate_ae_title(v)


class TrainingSection(_Section):
    """Labels from follow-up CTs and the retraining gate. The defaults are those of the policies that
    apply them (training.labels.LabelPolicy, training.retrain.DataPolicy/GatePolicy): one source."""

    followup_min_hours: float = Field(_LABELS.min_hours, ge=0)   # a later study of the same patient in
    followup_max_hours: float = Field(_LABELS.max_hours, gt=0)   # this window is the baseline's follow-up
    min_baseline_ml: float = Field(_LABELS.min_baseline_ml, ge=0)  # smaller baselines give no training case
    expansion_abs_ml: float = Field(_LABELS.rule.abs_ml, gt=0)   # the seed's rule: growth > 6 mL
    expansion_rel: float = Field(_LABELS.rule.rel, gt=0)         # ... or > 33 %
    val_fraction: float = Field(_DATA.val_fraction, gt=0, lt=1)  # patients kept apart (fixed by hash)
    min_train_cases: int = Field(_DATA.min_train_cases, ge=1)
    min_train_expanders: int = Field(_DATA.min_train_expanders, ge=1)
    min_val_cases: int = Field(_DATA.min_val_cases, ge=1)
    min_val_expanders: int = Field(_DATA.min_val_expanders, ge=1)
    auc_margin: float = Field(_GATE.auc_margin, ge=0)            # promote only when not worse than served
    brier_margin: float = Field(_GATE.brier_margin, ge=0)
    dice_margin: float = Field(_GATE.dice_margin, ge=0)
    volume_error_margin_ml: float = Field(_GATE.volume_error_margin_ml, ge=0)

    @model_validator(mode="after")
    def _window(self) -> "TrainingSection":
        if self.followup_min_hours >= self.followup_max_hours:
            raise ValueError(f"followup_min_hours ({self.followup_min_hours}) must be below "
                             f"followup_max_hours ({self.followup_max_hours})")
        return self


class LoggingSection(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    phi: bool = False  # True only for debugging on a test system: logs patient IDs unhashed

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class NodeConfig(_Section):
    """The whole configuration. ``NodeConfig()`` is the embedded default used by ``make run``."""

    node: NodeSection = Field(default_factory=NodeSection)
    security: SecuritySection = Field(default_factory=SecuritySection)
    storage: StorageSection = Field(default_factory=StorageSection)
    selection: SelectionSection = Field(default_factory=SelectionSection)
    queue: AnyQueue = Field(default_factory=lambda: _QUEUE.validate_python({}))  # dicomnode.queue: one class per backend
    worker: WorkerSection = Field(default_factory=WorkerSection)
    destinations: list[AnyDestination] = Field(default_factory=list)  # dicomnode.deliver: one class per type
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection)
    models: ModelsSection = Field(default_factory=ModelsSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    heartbeat: HeartbeatSection = Field(default_factory=HeartbeatSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)

    @model_validator(mode="after")
    def _cross(self) -> "NodeConfig":
        names = [d.name for d in self.destinations]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"destination names must be unique; repeated: {', '.join(dup)}")
        return self

    @property
    def models_dir(self) -> Path:
        return self.models.registry_dir or (self.node.data_dir / "models")

    @property
    def results_dir(self) -> Path:
        """Where the analysis of each job writes its SEG, SR, SC and result.json."""
        return Path(self.node.data_dir) / "results"

    @property
    def ledger_path(self) -> Path:
        """The delivery ledger (which result went to which destination)."""
        return Path(self.node.data_dir) / "deliveries.sqlite3"


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
