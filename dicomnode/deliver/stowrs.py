"""DICOMweb STOW-RS (dicomweb-client): for archives reached over HTTP(S)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

from pydantic import Field

from .base import DeliveryError, Destination, DestinationConfig, OnDelivered

_DOWN = (0, 502, 503, 504)  # no answer, or a gateway saying the archive behind it does not answer


class StowRsConfig(DestinationConfig):
    """``type = "stowrs"``: a DICOMweb service (base URL; TLS settings apply to HTTPS)."""

    type: Literal["stowrs"]
    url: str = Field(pattern=r"^https?://")  # base URL of the DICOMweb service


class StowRsDestination(Destination):
    """One ``POST {url}/studies`` per object, so each confirmed object is recorded on its own."""

    Config = StowRsConfig

    def __init__(self, config, *, calling_ae_title: str = "ICHNODE", timeout_s: float = 30.0) -> None:
        super().__init__(config, calling_ae_title=calling_ae_title)
        self.timeout_s = timeout_s

    def _session(self):
        import requests
        from dicomweb_client.session_utils import create_session

        session = create_session()
        tls = self.config.tls
        if tls.enabled:
            session.verify = str(tls.ca) if tls.ca else True
            if tls.cert:
                session.cert = (str(tls.cert), str(tls.key))
        self._requests = requests
        return session

    def _client(self, timeout_s: float | None = None):
        from dicomweb_client.api import DICOMwebClient

        client = DICOMwebClient(url=self.config.url, session=self._session(), timeout=timeout_s or self.timeout_s)
        client.set_http_retry_params(retry=False)  # the destination's retry policy retries, not the client
        return client

    def send(self, files: Sequence[Path], on_delivered: OnDelivered) -> None:
        from pydicom import dcmread

        if not files:
            return
        client = self._client()
        for path in files:
            ds = dcmread(path)
            try:
                client.store_instances([ds])
            except self._requests.exceptions.HTTPError as exc:
                code = exc.response.status_code if exc.response is not None else 0
                # 4xx (but 408/429) = the archive refuses this object; 5xx = try again later.
                retryable = code >= 500 or code in (0, 408, 429)
                raise DeliveryError(self.name, f"{path.name}: HTTP {code}", retryable=retryable,
                                    unreachable=code in _DOWN) from exc
            except self._requests.exceptions.RequestException as exc:
                raise DeliveryError(self.name, f"{path.name}: {type(exc).__name__}: {exc}", unreachable=True) from exc
            on_delivered(path)

    def find_series(self, study_uid: str, timeout_s: float | None = None) -> list[str]:
        """QIDO-RS ``GET {url}/series?StudyInstanceUID=…``: the modality of each series the archive holds."""
        client = self._client(timeout_s)
        found = client.search_for_series(search_filters={"StudyInstanceUID": study_uid})
        return [str((s.get("00080060", {}).get("Value") or ["?"])[0]) for s in found]

    def check(self, timeout_s: float | None = None) -> None:
        """One ``HEAD`` on the service URL, the probe of a down archive: any answer but 502-504 (404, 405
        and 501 included: many servers allow only GET/POST there) means the server is back; no data sent."""
        session = self._session()
        try:
            status = session.head(self.config.url, timeout=timeout_s or self.timeout_s, allow_redirects=False).status_code
        except self._requests.exceptions.RequestException as exc:
            raise DeliveryError(self.name, f"probe: {type(exc).__name__}", unreachable=True) from exc
        finally:
            session.close()
        if status in _DOWN:
            raise DeliveryError(self.name, f"probe: HTTP {status}", unreachable=True)

