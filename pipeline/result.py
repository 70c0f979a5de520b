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


class CannotAssess(Exception):
    """A head CT that cannot be analysed; ``code`` is stable and machine-readable.

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
