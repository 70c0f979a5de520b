"""C-STORE SCU (pynetdicom), optionally over TLS: the way results reach a PACS."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Literal, Sequence

from pydantic import Field, field_validator

from dicomnode.aetitle import AEAddress, validate_ae_title

from .base import DeliveryError, Destination, DestinationConfig, OnDelivered

log = logging.getLogger(__name__)

# Statuses after which re-sending the same object can only fail again (PS3.4 Annex B.2.3).
_PERMANENT = {0xA900, 0xC000, 0x0122, 0x0124, 0x0211, 0x0117}


def tls_context(tls) -> ssl.SSLContext:
    """Client-side TLS context from a ``TLSClient`` config section."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca) if tls.ca else None)
    ctx.check_hostname = bool(tls.check_hostname)
    if tls.cert:
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
    return ctx


class DimseConfig(DestinationConfig):
    """``type = "dimse"``: a DICOM peer (PACS, archive) reached by C-STORE, optionally over TLS."""

    type: Literal["dimse"] = "dimse"
    ae_title: str
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    calling_ae_title: str | None = None  # our AE title towards this peer (default node.ae_title)

    @field_validator("ae_title", "calling_ae_title")
    @classmethod
    def _ae(cls, v: str | None) -> str | None:
        return None if v is None else validate_ae_title(v)

    @classmethod
    def from_address(cls, text: str, name: str | None = None) -> "DimseConfig":
        """From ``AE@HOST:PORT`` (``--destination`` on the command line)."""
        a = AEAddress.parse(text)
        return cls(name=name or a.ae_title, ae_title=a.ae_title, host=a.host, port=a.port)

    @property
    def address(self) -> AEAddress:
        return AEAddress(self.ae_title, self.host, self.port)


class DimseDestination(Destination):
    """A DICOM peer reached by association + C-STORE per object."""

    Config = DimseConfig

    def __init__(self, config, *, calling_ae_title: str = "ICHNODE", timeout_s: float = 30.0) -> None:
        super().__init__(config, calling_ae_title=calling_ae_title)
        self.timeout_s = timeout_s

    def _associate(self, contexts: dict[str, set[str]], timeout_s: float | None = None):
        from pynetdicom import AE, build_context

        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s or self.timeout_s
        ae.connection_timeout = timeout_s or self.timeout_s
        for sop_class, syntaxes in contexts.items():
            ae.requested_contexts.append(build_context(sop_class, sorted(syntaxes)))
        tls_args = None
        if self.config.tls.enabled:
            tls_args = (tls_context(self.config.tls), self.config.host)
        try:
            assoc = ae.associate(self.config.host, self.config.port, ae_title=self.config.ae_title, tls_args=tls_args)
        except (OSError, ssl.SSLError) as exc:
            raise DeliveryError(self.name, f"cannot connect to {self.config.address}: {exc}", unreachable=True) from exc
        if not assoc.is_established:
            why = ("rejected" if assoc.is_rejected
                   else "aborted (peer unreachable or it dropped the connection)" if assoc.is_aborted
                   else "not established")
            # rejected: the peer answers, but refuses us now (a permanent rejection is a config error a
            # person fixes; retrying it with backoff is right). Aborted / not established: nobody answers.
            raise DeliveryError(self.name, f"association with {self.config.address} {why}",
                                unreachable=not assoc.is_rejected)
        return assoc

    def check(self, timeout_s: float | None = None) -> None:
        """C-ECHO: the probe of a down PACS (one small association, no data sent)."""
        from pynetdicom.sop_class import Verification

        assoc = self._associate({Verification: {"1.2.840.10008.1.2"}}, timeout_s)
        try:
            status = assoc.send_c_echo()
            if not status or status.Status != 0x0000:
                raise DeliveryError(self.name, "C-ECHO failed", unreachable=True)
        finally:
            assoc.release()

    def find_series(self, study_uid: str, timeout_s: float | None = None) -> list[str]:
        """C-FIND at series level (study root): the modality of each series the peer holds for ``study_uid``."""
        from pydicom.dataset import Dataset
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Find

        assoc = self._associate({Find: {ImplicitVRLittleEndian, ExplicitVRLittleEndian}}, timeout_s)
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = ""
        query.Modality = ""
        found: list[str] = []
        try:
            for status, identifier in assoc.send_c_find(query, Find):
                if status is None:
                    raise ConnectionError("C-FIND: no response (association lost)")
                code = int(status.Status)
                if code in (0xFF00, 0xFF01) and identifier is not None:
                    found.append(str(identifier.get("Modality") or "?"))
                elif code != 0x0000:
                    raise ConnectionError(f"C-FIND refused with status 0x{code:04X}")
        finally:
            if assoc.is_established:
                assoc.release()
        return found

    def send(self, files: Sequence[Path], on_delivered: OnDelivered) -> None:
        from pydicom import dcmread
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

        if not files:
            return
        datasets = []
        contexts: dict[str, set[str]] = {}
        for path in files:
            try:
                ds = dcmread(path)
                ts, sop_class = str(ds.file_meta.TransferSyntaxUID), str(ds.SOPClassUID)
            except (OSError, ValueError, AttributeError) as exc:
                raise DeliveryError(self.name, f"{Path(path).name}: not a storable DICOM object ({exc})",
                                    retryable=False) from exc
            contexts.setdefault(sop_class, {ExplicitVRLittleEndian, ImplicitVRLittleEndian}).add(ts)
            datasets.append((Path(path), ds))
        if len(contexts) > 128:
            raise DeliveryError(self.name, f"{len(contexts)} SOP classes in one send, more than one association allows",
                                retryable=False)
        assoc = self._associate(contexts)
        try:
            for path, ds in datasets:
                try:
                    status = assoc.send_c_store(ds)
                except (ValueError, RuntimeError) as exc:  # no accepted context for this SOP class
                    raise DeliveryError(self.name, f"{path.name}: {exc}", retryable=False) from exc
                if not status:  # timeout / abort: no status dataset
                    raise DeliveryError(self.name, f"{path.name}: no response (association lost)", unreachable=True)
                code = int(status.Status)
                if code == 0x0000 or (code & 0xF000) == 0xB000:
                    on_delivered(path)
                    continue
                raise DeliveryError(self.name, f"{path.name}: C-STORE status 0x{code:04X}",
                                    retryable=code not in _PERMANENT)
        finally:
            if assoc.is_established:
                assoc.release()
