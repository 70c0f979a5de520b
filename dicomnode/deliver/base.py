"""A destination receives the DICOM objects of one analysis: the contract every sender fulfils.

Why per-file callbacks: the dispatcher records each delivered object in the ledger the moment the
peer confirms it, so a node killed in the middle of a send resumes with the objects not yet
confirmed and never sends a confirmed one twice.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Callable, ClassVar, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .policy import RetryPolicy


class _Section(BaseModel):
    # as dicomnode.config's sections: a misspelt key is an error, not a silently ignored setting
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TLSClient(_Section):
    """TLS for an outgoing association (a destination)."""

    enabled: bool = False
    ca: Path | None = None  # verify the peer with this CA bundle (None = system store)
    cert: Path | None = None  # our client certificate for mutual TLS
    key: Path | None = None
    check_hostname: bool = True

    @model_validator(mode="after")
    def _complete(self) -> "TLSClient":
        if self.enabled and (self.cert is None) != (self.key is None):
            raise ValueError("client TLS needs both cert and key, or neither")
        return self


class DestinationConfig(_Section):
    """What every ``[[destinations]]`` entry has; each type's sender module adds its own fields in a
    subclass (``dimse.DimseConfig``, ``stowrs.StowRsConfig``), chosen by ``type``."""

    name: str = Field(min_length=1)
    type: str
    tls: TLSClient = Field(default_factory=TLSClient)
    send_overlay: bool = True  # also send the secondary-capture overlay images
    # Which SR encoding this peer gets (pipeline.encode.sr.profile): "ohif" (default) displays in
    # OHIF 3.13 (planar outline on the key slice; text report when there is no hematoma);
    # "tid1411" is the strict TID 1500 volumetric report referencing the SEG segment.
    sr_profile: Literal["ohif", "tid1411"] = "ohif"
    # Delivery retries, apart from the analysis' queue.max_attempts: backoff capped at a few minutes, a
    # down destination probed (C-ECHO / HTTP) instead of re-sent to, dead letter only after 24 h
    # ([destinations.retry]; dicomnode.deliver.policy).
    retry: RetryPolicy = Field(default_factory=RetryPolicy)

    @property
    def address(self):
        """``AE@HOST:PORT`` of a DIMSE peer; None for other types."""
        return None


class DeliveryError(Exception):
    """A send that did not go through; ``retryable`` False means retrying cannot help.

    ``unreachable``: the peer did not answer at all (no association, connection refused, HTTP 502-504):
    the destination is marked down and probed instead of re-sent to. ``waiting``: no send was tried
    because the destination is down.
    """

    def __init__(self, destination: str, message: str, *, retryable: bool = True, unreachable: bool = False,
                 waiting: bool = False) -> None:
        super().__init__(f"{destination}: {message}")
        self.destination = destination
        self.retryable = retryable
        self.unreachable = unreachable
        self.waiting = waiting


OnDelivered = Callable[[Path], None]

# result.json output kind of each SR profile's report (pipeline.encode.sr.profile.OUTPUT_KIND).
SR_KINDS = {"sr": "ohif", "sr_tid1411": "tid1411"}


class Destination(abc.ABC):
    """One configured peer. Subclasses are registered by config ``type`` in ``dicomnode.deliver``, each
    with its config class as ``Config``."""

    Config: ClassVar[type[DestinationConfig]] = DestinationConfig

    def __init__(self, config: DestinationConfig, *, calling_ae_title: str = "ICHNODE") -> None:
        self.config = config
        self.name = config.name
        self.calling_ae_title = getattr(config, "calling_ae_title", None) or calling_ae_title

    @property
    def send_overlay(self) -> bool:
        return self.config.send_overlay

    @property
    def sr_profile(self) -> str:
        return self.config.sr_profile

    def wants(self, kind: str) -> bool:
        """Whether this peer gets the outputs of ``kind`` (a key of result.json "outputs")."""
        if kind == "sc":
            return self.send_overlay
        if kind in SR_KINDS:
            return SR_KINDS[kind] == self.sr_profile
        return True

    @abc.abstractmethod
    def send(self, files: Sequence[Path], on_delivered: OnDelivered) -> None:
        """Store ``files`` at the peer in order, calling ``on_delivered(file)`` after each confirmed one.

        Raises ``DeliveryError`` at the first file the peer did not take.
        """

    @property
    def retry(self) -> RetryPolicy:
        """This destination's delivery retry policy (``[destinations.retry]``)."""
        return self.config.retry

    def check(self, timeout_s: float | None = None) -> None:
        """Cheap reachability check (C-ECHO, HTTP), the probe of a down destination; raises
        ``DeliveryError``. Default: nothing."""

    def find_series(self, study_uid: str, timeout_s: float | None = None) -> list[str]:
        """The modality of each series this peer holds for ``study_uid`` (C-FIND, QIDO-RS): how the
        heartbeat (``dicomnode.observe.heartbeat``) sees its results arrive. Default: this type cannot be asked."""
        raise NotImplementedError(f"a {self.config.type!r} destination cannot be asked for a study's series")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
