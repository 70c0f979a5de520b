"""SR profiles: which encoding a destination gets.

- ``"ohif"`` (default): Comprehensive SR. A hematoma is a TID 1500 report with one TID 1410 planar
  group, the outline on the key slice with volume, area and expansion probability (the only things
  OHIF 3.13 displays: a group without an image region breaks the whole SR there). No hematoma and
  cannot-assess are a TID 2000 text report, which OHIF renders as text.
- ``"tid1411"``: Comprehensive 3D SR, always TID 1500: a TID 1411 volumetric group referencing the
  SEG segment, or a TID 1501 group without measurements for no hematoma / cannot assess.

The profile of a written SR is its SOP class, so a re-analysis can tell its own predecessors apart.
"""

from __future__ import annotations

from typing import Literal

from pydicom.dataset import Dataset

Profile = Literal["ohif", "tid1411"]
PROFILES: tuple[Profile, ...] = ("ohif", "tid1411")
DEFAULT_PROFILE: Profile = "ohif"

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SOP_CLASS: dict[Profile, str] = {"ohif": COMPREHENSIVE_SR, "tid1411": COMPREHENSIVE_3D_SR}

# Series number = source's + 1000 + offset (SEG 1, overlay 3): distinct, so that where both SRs end
# up in one archive they sort apart, the "ohif" one first.
SERIES_OFFSET: dict[Profile, int] = {"ohif": 2, "tid1411": 4}

# The key in AnalysisResult.outputs (result.json) and the file name of each profile's SR.
OUTPUT_KIND: dict[Profile, str] = {"ohif": "sr", "tid1411": "sr_tid1411"}
FILE_NAME: dict[Profile, str] = {"ohif": "sr.dcm", "tid1411": "sr_tid1411.dcm"}


def check_profile(profile: str) -> Profile:
    if profile not in PROFILES:
        raise ValueError(f"SR profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    return profile  # type: ignore[return-value]


def profile_of(ds: Dataset) -> Profile | None:
    """The profile an SR written by ``build_sr`` was made for (None for anything else)."""
    uid = str(ds.get("SOPClassUID", ""))
    return next((p for p, cls in SOP_CLASS.items() if cls == uid), None)
