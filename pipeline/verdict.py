"""The coded "cannot assess" report of a series, written without loading any model.

The node's series selection already decides that some head CTs cannot be analysed (slices too thick,
too few, gaps): the answer is an SR with the reason, no inference. Writing it here, apart from
``Analyzer``, lets the node answer such series in its own process at once, so a burst of them (a PACS
re-sending a day of traffic) never waits for, or holds up, the analysis process (issue 15, part 5).
``Analyzer`` writes the same SRs through the same functions when *it* finds a series unanalysable.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pydicom
from pydicom.dataset import Dataset

from pipeline.encode.common import DeviceInfo, version_tag
from pipeline.encode.sr import FILE_NAME, OUTPUT_KIND, PROFILES, Findings, build_sr
from pipeline.models import ModelMetadata, ModelPaths
from pipeline.result import AnalysisResult, CannotAssess, Status
from pipeline.volume import read_images

log = logging.getLogger(__name__)

Source = Path | str | Sequence[Path | str] | Sequence[Dataset]


@dataclass(frozen=True)
class ModelIdentity:
    """Which models an output is attributed to: ``(name, version)`` per kind (SR device observer,
    ``result.json``, the version tag in series descriptions)."""

    segmenter: tuple[str, str]
    classifier: tuple[str, str] | None = None

    @classmethod
    def of(cls, models: ModelPaths) -> "ModelIdentity":
        """From the model directories' metadata.json alone (nothing is loaded); the same names and
        versions ``Analyzer`` reports once it has loaded them."""
        if models.segmenter is None:
            from pipeline.segment.classical import VERSION, ClassicalSegmenter

            segmenter = (ClassicalSegmenter.name, str(VERSION))
        else:
            meta = ModelMetadata.read(Path(models.segmenter))
            segmenter = (meta.name, str(meta.version))
        classifier = None
        if models.classifier is not None:
            meta = ModelMetadata.read(Path(models.classifier))
            classifier = (meta.name, str(meta.version))
        return cls(segmenter, classifier)

    @property
    def versions(self) -> dict[str, str]:
        out = {"segmenter": self.segmenter[1]}
        if self.classifier is not None:
            out["classifier"] = self.classifier[1]
        return out

    @property
    def names(self) -> dict[str, str]:
        """Human-readable "name vX" per kind, as the SR states them."""
        out = {"segmenter": f"{self.segmenter[0]} v{self.segmenter[1]}"}
        if self.classifier is not None:
            out["classifier"] = f"{self.classifier[0]} v{self.classifier[1]}"
        return out


def report_cannot_assess(
    source: Source,
    out_dir: Path | str,
    reason: CannotAssess,
    identity: ModelIdentity,
    *,
    sr_profiles: Sequence[str] = PROFILES,
    device: DeviceInfo | None = None,
    predecessor: Sequence[Dataset | Path | str] | None = None,
) -> AnalysisResult:
    """Write the "cannot assess" SR(s) of ``source`` with ``reason`` and result.json into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clear_previous(out)
    try:
        datasets = read_images(source)
    except CannotAssess:
        datasets = []
    previous = [as_dataset(p) for p in (predecessor or [])]
    return write_cannot_assess(reason, datasets, out, previous, identity, sr_profiles, device or DeviceInfo())


def write_cannot_assess(reason: CannotAssess, datasets: list[Dataset], out: Path, previous: list[Dataset],
                        identity: ModelIdentity, sr_profiles: Sequence[str], device: DeviceInfo,
                        timings: dict[str, float] | None = None) -> AnalysisResult:
    """The result of an unanalysable series; its SRs when the slices identify a patient and study."""
    log.info("cannot assess: %s", reason.code)
    result = AnalysisResult(status=Status.CANNOT_ASSESS, reason=f"{reason.code}: {reason.message}",
                            model_versions=identity.versions)
    timings = dict(timings or {})
    study = _one_study(datasets)
    if study:
        start = time.perf_counter()
        findings = Findings(reason_code=reason.code, reason_text=reason.message, model_versions=identity.names)
        write_srs(findings, study, out, result, previous, identity, sr_profiles, device)
        timings["encoding"] = timings.get("encoding", 0.0) + time.perf_counter() - start
    result.timings_s = {k: round(v, 3) for k, v in timings.items()}
    result.write(out)
    return result


def write_srs(findings: Findings, datasets: list[Dataset], out: Path, result: AnalysisResult,
              previous: list[Dataset], identity: ModelIdentity, sr_profiles: Sequence[str], device: DeviceInfo,
              **content) -> None:
    """One SR per profile, each under its own output kind and file name."""
    tag = version_tag(identity.versions)
    for profile in sr_profiles:
        sr = build_sr(datasets, findings, predecessors=previous, device=device, profile=profile, version_tag=tag,
                      **content)
        result.outputs[OUTPUT_KIND[profile]] = [save(sr, out, FILE_NAME[profile])]


def save(ds: Dataset, out: Path, relative: str) -> str:
    """Write a DICOM file under ``out`` (temp name, then rename: a reader never sees half a file)."""
    path = out / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    ds.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)
    return relative


def clear_previous(out: Path) -> None:
    """Remove outputs an earlier run left in ``out`` (only our own names), so nothing stale is sent."""
    for name in ("result.json", "seg.dcm", *FILE_NAME.values()):
        (out / name).unlink(missing_ok=True)
    if (out / "sc").is_dir():
        for p in (out / "sc").glob("sc_*.dcm"):
            p.unlink()


def as_dataset(item: Dataset | Path | str) -> Dataset:
    """A predecessor SR/SEG given as a dataset or a file."""
    return item if isinstance(item, Dataset) else pydicom.dcmread(item)


def _one_study(datasets: list[Dataset]) -> list[Dataset]:
    """Slices usable as SR evidence: those of the first study that carry the identifying UIDs."""
    usable = [ds for ds in datasets if ds.get("StudyInstanceUID") and ds.get("SeriesInstanceUID") and ds.get("SOPInstanceUID")]
    if not usable:
        return []
    study = usable[0].StudyInstanceUID
    return [ds for ds in usable if ds.StudyInstanceUID == study]
