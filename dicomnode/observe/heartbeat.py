"""The heartbeat: a small synthetic head CT sent through the whole loop, so a site knows it works.

Every ``heartbeat.interval_s`` the node C-STOREs a freshly generated study (new UIDs, a phantom with a
small hyperdense blob, patient "HEARTBEAT^ICHNODE") to *itself*, through its own Storage SCP, so the
same path as a scanner's study is exercised: SCP → spool → sweep → selection → queue → worker →
pipeline → sender. Then, on later ticks, it asks the destination whether results for that
StudyInstanceUID arrived — an SR, sent after the SEG, closes the loop (the destination's own
``find_series``: C-FIND at series level for DIMSE, QIDO-RS for STOW-RS; or Orthanc's REST API). The outcome is kept in ``<data_dir>/heartbeat.json`` (read by ``ich-node status`` and
``/metrics``) so it survives restarts and needs no running node to be read.

Why ticks instead of one blocking call: the check may take minutes (quiet period + analysis), and a
blocked scheduler thread would hold up the node's shutdown.

The phantom is generated here with pydicom, not with ``training.synth``: a production node may be
installed without ``training/``, and a heartbeat must be cheap (24 slices of 128×128).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from dicomnode.config import NodeConfig
    from dicomnode.deliver import DestinationConfig as Destination

log = logging.getLogger(__name__)

STATE_FILE = "heartbeat.json"
PATIENT_ID = "ICHNODE-HEARTBEAT"
PATIENT_NAME = "HEARTBEAT^ICHNODE"


# -- the synthetic study -------------------------------------------------------------------------

def synthetic_head_ct(out_dir: str | os.PathLike, *, slices: int = 24, size: int = 128, thickness_mm: float = 5.0,
                      pixel_mm: float = 1.8, seed: int | None = None) -> tuple[str, list[Path]]:
    """Write a small, valid axial non-contrast head CT series; returns ``(StudyInstanceUID, files)``.

    An elliptic skull (HU ~1200), brain (HU ~35 with noise) and a 1-2 mL blob at HU ~65; CT Image
    Storage, explicit VR little endian, HEAD, ORIGINAL/PRIMARY/AXIAL, soft-tissue kernel.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    if slices < 2 or size < 32:
        raise ValueError(f"need at least 2 slices of 32x32, got {slices} of {size}x{size}")
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    now = dt.datetime.now()
    half = size * pixel_mm / 2.0
    coords = (np.arange(size) + 0.5) * pixel_mm - half
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    z_centre = (slices - 1) * thickness_mm / 2.0
    z_radius = slices * thickness_mm / 2.0 + 10.0
    blob = np.array([25.0, -10.0, z_centre])
    files: list[Path] = []
    for i in range(slices):
        z = i * thickness_mm
        scale = np.sqrt(max(0.05, 1.0 - ((z - z_centre) / z_radius) ** 2))
        a, b = 72.0 * scale, 90.0 * scale  # semi-axes (mm): left-right, anterior-posterior
        r = np.sqrt((xx / a) ** 2 + (yy / b) ** 2)
        hu = np.full((size, size), -1000.0)
        hu[r <= 1.0] = 1200.0                                  # skull
        inner = r <= 1.0 - 6.0 / min(a, b)
        hu[inner] = 35.0 + rng.normal(0.0, 4.0, inner.sum())   # brain
        d = np.sqrt((xx - blob[0]) ** 2 + (yy - blob[1]) ** 2 + (z - blob[2]) ** 2)
        hu[(d <= 7.0) & inner] = 65.0                          # a small hyperdense lesion
        pixels = np.clip(np.round(hu + 1024.0), 0, 4095).astype(np.uint16)

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName, ds.PatientSex, ds.PatientBirthDate = PATIENT_ID, PATIENT_NAME, "O", ""
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.AccessionNumber, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "", "HB", 1, i + 1
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.Manufacturer, ds.InstitutionName = "CT", "ich-node heartbeat", ""
        ds.BodyPartExamined, ds.PatientPosition = "HEAD", "HFS"
        ds.StudyDescription = "CT HEAD WITHOUT CONTRAST (ich-node heartbeat)"
        ds.SeriesDescription = "Heartbeat head non-contrast 5mm"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ConvolutionKernel, ds.KVP, ds.SliceThickness = "STANDARD", 120, thickness_mm
        ds.ImagePositionPatient = [-half, -half, z]
        ds.PositionReferenceIndicator, ds.AcquisitionNumber = "", 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = z
        ds.PixelSpacing = [pixel_mm, pixel_mm]
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 80
        ds.PixelData = pixels.tobytes()
        path = out / f"hb{i + 1:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return study, files


# -- persisted state -----------------------------------------------------------------------------

def read_state(data_dir: str | os.PathLike) -> dict | None:
    """The last heartbeat outcome, or ``None`` when none ran with this data directory."""
    try:
        return json.loads((Path(data_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _write_state(data_dir: Path, state: dict) -> None:
    tmp = data_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, data_dir / STATE_FILE)


# -- arrival checks ------------------------------------------------------------------------------

def orthanc_series(url: str, study_uid: str, timeout_s: float = 30.0) -> list[str]:
    """Modalities of the series Orthanc holds for ``study_uid`` (REST ``/tools/find``)."""
    import urllib.request

    body = json.dumps({"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}).encode()
    req = urllib.request.Request(url.rstrip("/") + "/tools/find", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - configured URL
        series = json.loads(resp.read())
    return [str(s.get("MainDicomTags", {}).get("Modality", "?")) for s in series]


# -- the scheduled job ---------------------------------------------------------------------------

class Heartbeat:
    """``tick()`` (scheduled every few seconds): check a pending heartbeat, or send a new one when due."""

    def __init__(self, config: "NodeConfig", *, send: Callable[[list[Path]], None] | None = None,
                 lookup: Callable[[str], list[str]] | None = None) -> None:
        hb = config.heartbeat
        self.config = config
        self.data_dir = Path(config.node.data_dir)
        self.interval_s, self.timeout_s = hb.interval_s, hb.timeout_s
        self.destination = self._destination(config)
        self._send = send or self._send_to_node
        self._lookup = lookup or self._default_lookup()
        self._lock = threading.Lock()

    @staticmethod
    def _destination(config: "NodeConfig") -> "Destination | None":
        hb = config.heartbeat
        if hb.destination is None:
            return config.destinations[0] if config.destinations else None
        for d in config.destinations:
            if d.name == hb.destination:
                return d
        raise ValueError(f"heartbeat.destination {hb.destination!r} is not a configured destination "
                         f"({', '.join(d.name for d in config.destinations) or 'none configured'})")

    def _default_lookup(self) -> Callable[[str], list[str]]:
        hb, dest = self.config.heartbeat, self.destination
        if hb.orthanc_url:
            return lambda uid: orthanc_series(hb.orthanc_url, uid)
        if dest is None:
            return lambda uid: []
        from dicomnode.deliver import build

        return build(dest, calling_ae_title=self.config.node.ae_title).find_series  # C-FIND, QIDO-RS, ...

    def _send_to_node(self, files: list[Path]) -> None:
        """C-STORE to our own SCP (the same way a scanner does), as ``heartbeat.calling_ae_title``."""
        from dicomnode.config import Destination, TLSClient
        from dicomnode.deliver.dimse import DimseDestination

        node, tls = self.config.node, self.config.security.tls
        host = "127.0.0.1" if node.host in ("0.0.0.0", "", "::") else node.host
        client_tls = TLSClient(enabled=True, ca=tls.ca, cert=tls.cert, key=tls.key, check_hostname=False) \
            if tls.enabled else TLSClient()
        self_dest = Destination(name="heartbeat-self", ae_title=node.ae_title, host=host, port=node.port,
                                calling_ae_title=self.config.heartbeat.calling_ae_title, tls=client_tls)
        DimseDestination(self_dest).send(files, lambda _p: None)

    def state(self) -> dict:
        return read_state(self.data_dir) or {"state": "never", "last_success": None, "last_attempt": None,
                                             "pending": None, "last_error": None}

    def tick(self, now: float | None = None) -> dict:
        """One step; returns the state written. Never raises (a failed heartbeat is a state, not a crash)."""
        with self._lock:
            now = time.time() if now is None else now
            state = self.state()
            pending = state.get("pending")
            try:
                if pending:
                    state = self._check(state, pending, now)
                elif now - (state.get("last_attempt") or 0) >= self.interval_s:
                    state = self._start(state, now)
            except Exception as exc:  # noqa: BLE001
                log.warning("heartbeat: %s: %s", type(exc).__name__, exc)
                state.update(state="failed", last_error=f"{type(exc).__name__}: {exc}", pending=None)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            _write_state(self.data_dir, state)
            return state

    def _start(self, state: dict, now: float) -> dict:
        with tempfile.TemporaryDirectory(prefix="ich-heartbeat-") as tmp:
            study_uid, files = synthetic_head_ct(tmp)
            state.update(last_attempt=now, pending={"study_uid": study_uid, "sent_at": now})
            self._send(files)
        log.info("heartbeat: synthetic study sent to the node (%d images)", len(files))
        return state

    def _check(self, state: dict, pending: dict, now: float) -> dict:
        found = self._lookup(pending["study_uid"])
        # the SR is sent last of SEG → SR (and exists for "cannot assess" too): its arrival means the loop closed
        if "SR" in found:
            took = now - pending["sent_at"]
            state.update(state="ok", last_success=now, last_duration_s=took, last_found=sorted(set(found)),
                         pending=None, last_error=None)
            log.info("heartbeat: results arrived at the destination %.0f s after sending (%s)", took,
                     ", ".join(sorted(set(found))))
        elif now - pending["sent_at"] > self.timeout_s:
            state.update(state="failed", pending=None,
                         last_error=f"no SR at the destination {self.timeout_s:.0f} s after sending"
                                    f" (found: {', '.join(sorted(set(found))) or 'nothing'})")
            log.warning("heartbeat: %s", state["last_error"])
        return state
