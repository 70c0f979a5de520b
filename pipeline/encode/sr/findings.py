"""What an SR states about one series: a hematoma (volume > 0), none (volume 0), or "cannot assess"."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Findings:
    """``volume_ml`` None means cannot assess (then ``reason_code`` is set); 0 means no hematoma.

    ``reason_text``: the cannot-assess message shown to the reader beside the coded reason.
    ``model_versions``: human-readable model names + versions, e.g. {"segmenter": "unet v2"}.
    """

    volume_ml: float | None = None
    expansion_probability: float | None = None
    risk: str | None = None                       # "high" | "low" | None
    reason_code: str | None = None                # CannotAssess.code
    reason_text: str | None = None
    model_versions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.volume_ml is None and not self.reason_code:
            raise ValueError("Findings need either a volume or a cannot-assess reason code")
        if self.volume_ml is not None and self.volume_ml < 0:
            raise ValueError(f"volume_ml must be ≥ 0, got {self.volume_ml}")
        if self.expansion_probability is not None and not 0.0 <= self.expansion_probability <= 1.0:
            raise ValueError(f"expansion_probability must be in [0, 1], got {self.expansion_probability}")
        if self.risk not in (None, "high", "low"):
            raise ValueError(f"risk must be 'high', 'low' or None, got {self.risk!r}")
        if not self.detected and (self.risk is not None or self.expansion_probability is not None):
            raise ValueError("an expansion prediction needs a hematoma (volume > 0)")

    @property
    def assessed(self) -> bool:
        return self.volume_ml is not None

    @property
    def detected(self) -> bool:
        """A hematoma was found (and the SR has something to outline or reference)."""
        return bool(self.volume_ml)


def model_text(versions: dict[str, str]) -> str:
    """"classifier fusion v2; segmenter unet v1": the device observer's model name, and the reader's."""
    return "; ".join(f"{kind} {ver}" for kind, ver in sorted(versions.items())) or "unknown models"
