"""What one analysis returns: the contract between the pipeline, the node and `result.json`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path


class Status(str, Enum):
    ANALYZED = "analyzed"
    CANNOT_ASSESS = "cannot_assess"


class Risk(str, Enum):
    HIGH = "high"
    LOW = "low"


# Every reason a series cannot be assessed, in one table: ``CannotAssess.code`` (also the node's
# selection ``code``) → (SR CodeValue in the private scheme 99ICHNODE, ≤ 16 chars; human-readable
# meaning, ≤ 64 chars, shown in the SR and its narrative). Whoever raises a code adds it here first
# (tests/pipeline/test_geometry.py checks every code raised in pipeline/ and dicomnode/select/).
REASONS: dict[str, tuple[str, str]] = {
    "no_images": ("CA-NOIMAGES", "No CT images"),
    "not_ct": ("CA-NOTCT", "Not a CT series"),
    "mixed_series": ("CA-MIXSERIES", "Several series mixed"),
    # series geometry and rescale (pipeline.geometry: the node's selection and pipeline.volume alike)
    "unsupported_multiframe": ("CA-MULTIFRAME", "Multi-frame CT not supported"),
    "single_slice": ("CA-SINGLESLICE", "Single slice"),
    "missing_geometry": ("CA-NOGEOMETRY", "Missing image geometry"),
    "invalid_geometry": ("CA-BADGEOMETRY", "Image geometry not a number"),
    "no_frame_of_reference": ("CA-NOFOR", "No frame of reference"),
    "mixed_frame_of_reference": ("CA-MIXFOR", "Mixed frames of reference"),
    "mixed_orientation": ("CA-MIXORIENT", "Mixed slice orientations"),
    "invalid_orientation": ("CA-BADORIENT", "Invalid slice orientation"),
    "invalid_pixel_spacing": ("CA-BADSPACING", "Invalid pixel spacing"),
    "mixed_pixel_spacing": ("CA-MIXSPACING", "Mixed pixel spacings"),
    "mixed_matrix_size": ("CA-MIXMATRIX", "Mixed image sizes"),
    "duplicate_slices": ("CA-DUPSLICES", "Duplicate slice positions"),
    "missing_slices": ("CA-MISSINGSLICES", "Missing slices"),
    "invalid_rescale": ("CA-BADRESCALE", "Rescale slope/intercept not usable"),
    # pixels and anatomy (pipeline only)
    "undecodable_pixels": ("CA-UNDECODABLE", "Pixel data not decodable"),
    "unsupported_pixels": ("CA-BADPIXELS", "Unsupported pixel data"),
    "no_brain": ("CA-NOBRAIN", "No brain found"),
    # decided by the node's series selection, whose limits are site settings
    "slice_too_thick": ("CA-THICKSLICE", "Slices too thick"),
    "too_few_slices": ("CA-FEWSLICES", "Too few slices"),
    "insufficient_coverage": ("CA-COVERAGE", "Brain not fully covered"),
    # no longer raised (selection now says mixed_pixel_spacing / mixed_matrix_size, as the pipeline
    # does); kept so results and verdicts recorded before still map to their code
    "mixed_geometry": ("CA-MIXGEOMETRY", "Mixed slice geometry"),
    "internal_error": ("CA-ERROR", "Analysis failed"),
}
UNKNOWN_REASON = "CA-OTHER"


def reason_text(code: str) -> tuple[str, str]:
    """(SR CodeValue, human-readable meaning) of a cannot-assess ``code``; an unknown code keeps its text."""
    return REASONS.get(code, (UNKNOWN_REASON, f"Cannot assess: {code}"[:64]))


class CannotAssess(Exception):
    """A head CT that cannot be analysed; ``code`` is stable and machine-readable (a key of ``REASONS``).

    Raised by any stage; ``pipeline.analyze`` turns it into a coded "cannot assess" SR.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class AnalysisResult:
    status: Status
    reason: str | None = None          # CannotAssess.code: message, when status is cannot_assess
    volume_ml: float | None = None
    expansion_probability: float | None = None
    risk: Risk | None = None
    model_versions: dict[str, str] = field(default_factory=dict)  # {"segmenter": "1", "classifier": "1"}
    timings_s: dict[str, float] = field(default_factory=dict)     # per stage
    outputs: dict[str, list[str]] = field(default_factory=dict)   # {"seg": ["seg.dcm"], "sr": [...], "sc": [...]}, relative to out_dir

    def to_json(self) -> str:
        data = asdict(self)
        data["status"] = self.status.value
        data["risk"] = self.risk.value if self.risk else None
        return json.dumps(data, indent=2, sort_keys=True)

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / "result.json"
        path.write_text(self.to_json())
        return path

    @classmethod
    def read(cls, out_dir: Path) -> "AnalysisResult":
        data = json.loads((Path(out_dir) / "result.json").read_text())
        data["status"] = Status(data["status"])
        data["risk"] = Risk(data["risk"]) if data.get("risk") else None
        return cls(**data)
