"""UIDs that must not change between runs: a finding's tracking UID, the installation's observer UID.

Why: longitudinal tracking of "ICH-1" needs the same Tracking UID in the SEG segment and the SR
group, and again after a re-analysis of the same study; a Device Observer UID names the
installation, not one report. Name-based UUIDs (RFC 4122 version 5) under the 2.25 arc need no
registered root and cannot collide with the random UIDs of the instances themselves.
"""

from __future__ import annotations

import uuid

import highdicom as hd

# Fixed namespace of this product's name-based UIDs (itself name-based, so it is reproducible).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:ich-node:dicom-uid")

FINDING_ID = "ICH-1"   # the one finding the node reports: its Tracking Identifier in SEG and SR


def stable_uid(kind: str, *parts: str) -> hd.UID:
    """The same UID for the same ``kind`` and ``parts``, always: ``2.25.<uuid5 as integer>``."""
    name = "\x1f".join((kind, *parts))
    return hd.UID.from_uuid(str(uuid.uuid5(NAMESPACE, name)))


def tracking_uid(study_instance_uid: str, finding: int = 1) -> hd.UID:
    """Tracking UID of finding ``finding`` of a study (shared by SEG segment and SR group)."""
    return stable_uid("tracking", str(study_instance_uid), str(finding))


def device_observer_uid(installation_id: str) -> hd.UID:
    """Device Observer UID of one installation, from a value only that installation has."""
    if not installation_id:
        raise ValueError("installation_id must not be empty")
    return stable_uid("device-observer", installation_id)
