"""At start: index the spool files a power loss took out of the index (their answers had gone out)."""

from __future__ import annotations

import io
import logging

from ..store import digest
from .header import STATUS_DATASET_MISMATCH
from .header import StoreRefused, parse_header
from ..store.index import Index, InstanceRecord
from ..pseudonym import Pseudonymizer
from ..store.spool import Spool

LOG = logging.getLogger("dicomnode.scp")  # one name for everything the Storage SCP logs (operators filter on it)


def reconcile(index: Index, spool: Spool, pseudonym: Pseudonymizer) -> int:
    """Index every spool file the index does not know; returns how many were added.

    With ``synchronous=NORMAL`` a power loss may roll back the last index commits of instances
    that were already acknowledged; their files are complete under their final names (written
    → fsync → rename → fsync dir before the ack), so re-reading them restores the index. Called
    by :func:`start_scp` before it listens.
    """
    from pydicom.filereader import _read_file_meta_info

    known = index.indexed_paths()
    added = 0
    for p in spool.root.rglob("*.dcm"):
        rel = p.relative_to(spool.root).as_posix()
        if rel in known:
            continue
        try:
            raw = p.read_bytes()
            fp = io.BytesIO(raw)
            fp.seek(132)
            meta = _read_file_meta_info(fp)
            stream = memoryview(raw)[fp.tell():]
            ts = str(meta.TransferSyntaxUID)
            hdr = parse_header(stream, ts, pseudonym)
            if spool.relpath(hdr.study_uid, hdr.series_uid, hdr.sop_uid) != rel:
                raise StoreRefused(STATUS_DATASET_MISMATCH, "UIDs do not match the file's spool path")
            index.record_instance(InstanceRecord(
                sop_uid=hdr.sop_uid, sop_class=hdr.sop_class, transfer_syntax=ts, study_uid=hdr.study_uid,
                series_uid=hdr.series_uid, patient_hash=hdr.patient_hash, modality=hdr.modality, path=rel,
                digest=digest.digest([stream]), size=len(raw), instance_number=hdr.instance_number,
                calling_ae=str(meta.get("SourceApplicationEntityTitle") or "").strip() or None,
            ), now=p.stat().st_mtime)
            added += 1
        except Exception as exc:  # noqa: BLE001 - report and keep going; the file stays for inspection
            LOG.warning("spool file %s not re-indexed: %s", rel, exc)
    if added:
        LOG.warning("re-indexed %d spool file(s) the index had lost (power loss?)", added)
    return added
