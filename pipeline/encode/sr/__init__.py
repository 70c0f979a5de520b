"""The node's SR in two profiles ("ohif" default, "tid1411"): see ``sr.profile`` for why and what.

Modules: findings (what is stated), groups (TID 1410/1411/1501 groups), narrative (notice and the
text-only report), library (TID 1600), document (``build_sr``), read (read-back), profile.
"""

from pipeline.encode.sr.document import build_sr
from pipeline.encode.sr.findings import Findings
from pipeline.encode.sr.profile import DEFAULT_PROFILE, FILE_NAME, OUTPUT_KIND, PROFILES, profile_of
from pipeline.encode.sr.read import (
    read_sr_probability,
    read_sr_reason,
    read_sr_risk,
    read_sr_tracking_uid,
    read_sr_volume_ml,
)

__all__ = [
    "DEFAULT_PROFILE",
    "FILE_NAME",
    "Findings",
    "OUTPUT_KIND",
    "PROFILES",
    "build_sr",
    "profile_of",
    "read_sr_probability",
    "read_sr_reason",
    "read_sr_risk",
    "read_sr_tracking_uid",
    "read_sr_volume_ml",
]
