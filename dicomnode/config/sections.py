"""The node's config sections, one typed model each, owned by the part of the node that reads it."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dicomnode.aetitle import AEAddress, validate_ae_title
from training.labels import LabelPolicy
from training.retrain import DataPolicy, GatePolicy

_LABELS, _DATA, _GATE = LabelPolicy(), DataPolicy(), GatePolicy()  # defaults of [training]


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
    # How a data set goes into the journal on the fast C-STORE path: "dataset" = one O_DSYNC write of
    # the whole data set after its last fragment; "stream" = each P-DATA fragment as it arrives (its
    # write-out started at once), one fdatasync after the last: less waiting at the answer, more CPU
    # in the receiving thread — slower on the dev VM (docs/node-receive.md, session 18), may pay
    # where a flush is slow (network storage).
    journal_write: Literal["dataset", "stream"] = "dataset"


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
    """A synthetic study sent through the whole loop on a schedule (dicomnode.observe.heartbeat)."""

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
    auc_ci_low_min: float = Field(_GATE.auc_ci_low_min, ge=0, lt=1)  # candidate's AUC CI must clear this (chance)

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
