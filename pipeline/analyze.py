"""The pipeline's one public entry: one CT series in, SEG + SR + overlay series + result.json out.

    volume → brain → segment → (classify) → encode

``Analyzer`` loads the models once (a worker keeps it for many studies); ``analyze()`` is the
one-shot convenience. A series that cannot be analysed yields ``status = cannot_assess`` with a
coded reason (and an SR saying so whenever the slices identify a patient and study); programming
errors are not disguised as "cannot assess" and propagate to the caller. A series without a
hematoma gets no SEG (an empty segment reads as NaN statistics in viewers), only its SR.

One SR per profile in ``OutputOptions.sr_profiles`` ("ohif" → sr.dcm, "tid1411" → sr_tid1411.dcm;
see ``pipeline.encode.sr.profile``): the node sends each destination the one it asked for.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from pydicom.dataset import Dataset

from pipeline.brain import extract_brain
from pipeline.encode.common import DeviceInfo, version_tag
from pipeline.encode.outline import key_outline
from pipeline.encode.sc import build_overlays, summary_line
from pipeline.encode.seg import SegmenterInfo, build_seg
from pipeline.encode.sr import PROFILES, Findings
from pipeline.models import ModelPaths
from pipeline.result import AnalysisResult, CannotAssess, Risk, Status
from pipeline.segment import load_segmenter
from pipeline.verdict import (ModelIdentity, Source, as_dataset, clear_previous, save, write_cannot_assess,
                              write_srs)
from pipeline.volume import Volume, load_series, read_images

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class OutputOptions:
    """Optional outputs. The SEG (when there is a hematoma) and one SR per profile in
    ``sr_profiles`` are always written; the overlay series is for viewers that show neither and can
    be switched off per destination."""

    overlay: bool = True
    overlay_slices: int = 3
    sr_profiles: tuple[str, ...] = PROFILES

    def __post_init__(self) -> None:
        if self.overlay_slices < 1:
            raise ValueError(f"overlay_slices must be ≥ 1 (use overlay=False for none), got {self.overlay_slices}")
        unknown = [p for p in self.sr_profiles if p not in PROFILES]
        if unknown or not self.sr_profiles:
            raise ValueError(f"sr_profiles must be a non-empty subset of {PROFILES}, got {self.sr_profiles!r}")


class Analyzer:
    """Holds the loaded models; ``analyze`` may be called for many series."""

    def __init__(
        self,
        models: ModelPaths | None = None,
        outputs: OutputOptions | None = None,
        device: DeviceInfo | None = None,
    ) -> None:
        """``device``: who made the outputs; the node passes ``DeviceInfo(installation_id=...)`` so
        its SRs share one Device Observer UID."""
        self.models = models or ModelPaths()
        self.outputs = outputs or OutputOptions()
        self.device = device or DeviceInfo()
        self.segmenter = load_segmenter(self.models.segmenter)
        self.classifier = None
        if self.models.classifier is not None:
            from pipeline.classify import load_classifier  # model 2 runtime; heavy, optional

            self.classifier = load_classifier(self.models.classifier)

    @property
    def identity(self) -> ModelIdentity:
        """The loaded models' names and versions (what the outputs are attributed to)."""
        classifier = None
        if self.classifier is not None:
            classifier = (str(getattr(self.classifier, "name", "classifier")), str(self.classifier.version))
        return ModelIdentity((str(self.segmenter.name), str(self.segmenter.version)), classifier)

    @property
    def model_versions(self) -> dict[str, str]:
        return self.identity.versions

    def analyze(
        self,
        source: Source,
        out_dir: Path | str,
        predecessor: Sequence[Dataset | Path | str] | None = None,
        cannot_assess: CannotAssess | None = None,
    ) -> AnalysisResult:
        """Analyse one series and write seg.dcm, sr.dcm, sc/*.dcm and result.json into ``out_dir``.

        ``cannot_assess``: the caller (the node's series selection, whose limits such as slice
        thickness are site settings) already decided that this head CT cannot be analysed; only the
        coded "cannot assess" SR is written, so the radiologist still gets an answer with the reason.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        clear_previous(out)
        timings: dict[str, float] = {}
        previous = [as_dataset(p) for p in (predecessor or [])]
        datasets: list[Dataset] = []
        try:
            with _timed(timings, "load"):
                datasets = read_images(source)
                if cannot_assess is not None:
                    raise cannot_assess
                series = load_series(datasets)
                datasets = series.datasets
            with _timed(timings, "brain"):
                brain = extract_brain(series.volume)
            if not brain.any():
                raise CannotAssess("no_brain", "no brain or cranial cavity found in the scanned range")
            with _timed(timings, "segmentation"):
                mask = np.asarray(self.segmenter.predict_mask(series.volume, brain), dtype=bool)
                if mask.shape != series.volume.shape:
                    raise ValueError(
                        f"segmenter {self.segmenter.name} returned shape {mask.shape}, expected {series.volume.shape}"
                    )
                mask &= brain                      # the hematoma search never leaves the brain
                source_mask = series.mask_to_source(mask)
                # What the reader gets is the source mask: none there means no hematoma (and no SEG).
                detected = bool(source_mask.any())
                volume_ml = float(mask.sum() * series.volume.voxel_volume_ml) if detected else 0.0
            probability, risk = None, None
            # No hematoma found: expansion is not applicable, so model 2 is not asked (it needs a lesion).
            if self.classifier is not None and detected:
                with _timed(timings, "classification"):
                    prediction = self.classifier.predict(series.volume, mask)
                    probability, risk = float(prediction.probability), Risk(prediction.risk)
        except CannotAssess as exc:
            return write_cannot_assess(exc, datasets, out, previous, self.identity, self.outputs.sr_profiles,
                                       self.device, timings)

        result = AnalysisResult(
            status=Status.ANALYZED,
            volume_ml=round(volume_ml, 3),
            expansion_probability=probability,
            risk=risk,
            model_versions=self.model_versions,
            timings_s=timings,
        )
        tag = version_tag(self.model_versions)
        with _timed(timings, "encoding"):
            seg = None
            if detected:
                segmenter = SegmenterInfo(self.segmenter.name, str(self.segmenter.version))
                seg = build_seg(datasets, source_mask, segmenter, self.device, version_tag=tag)
                result.outputs["seg"] = [save(seg, out, "seg.dcm")]
            findings = Findings(
                volume_ml=volume_ml,
                expansion_probability=probability,
                risk=risk.value if risk else None,
                model_versions=self.identity.names,
            )
            spacing = tuple(float(v) for v in datasets[0].PixelSpacing)
            outline = key_outline(source_mask, spacing)
            write_srs(findings, datasets, out, result, previous, self.identity, self.outputs.sr_profiles,
                      self.device, seg=seg, outline=outline)
            if self.outputs.overlay:
                text = summary_line(volume_ml, findings.risk, probability)
                overlays = build_overlays(
                    datasets, source_mask, text, self.outputs.overlay_slices, self.device, version_tag=tag
                )
                result.outputs["sc"] = [save(sc, out, f"sc/sc_{i + 1:03d}.dcm") for i, sc in enumerate(overlays)]
        result.timings_s = {k: round(v, 3) for k, v in timings.items()}
        result.write(out)
        return result

    def warm(self) -> dict[str, float]:
        """One inference on a small synthetic head, so that the first real study does not pay for lazy
        set-up (TensorFlow building its graph, feature extractors, radiomics filters). Returns seconds
        per stage. Nothing is written; no result depends on it."""
        timings: dict[str, float] = {}
        volume, clot = _warm_volume()
        with _timed(timings, "brain"):
            brain = extract_brain(volume)
        with _timed(timings, "segmentation"):
            self.segmenter.predict_mask(volume, brain if brain.any() else clot)
        if self.classifier is not None:
            with _timed(timings, "classification"):
                self.classifier.predict(volume, clot)
        return {k: round(v, 3) for k, v in timings.items()}


def analyze(
    source: Source,
    out_dir: Path | str,
    models: ModelPaths | None = None,
    predecessor: Sequence[Dataset | Path | str] | None = None,
) -> AnalysisResult:
    """One-shot convenience: load the models, analyse one series."""
    return Analyzer(models).analyze(source, out_dir, predecessor=predecessor)


def _warm_volume() -> tuple[Volume, np.ndarray]:
    """A 24 × 160 × 160 head: skull, brain, a 3 mL clot (HU values of real CT; shape irrelevant)."""
    z, y, x = np.mgrid[:24, :160, :160]
    r = np.sqrt(((x - 80) * 1.4 / 70) ** 2 + ((y - 80) * 1.4 / 88) ** 2 + ((z - 12) * 5.0 / 62) ** 2)
    hu = np.full(r.shape, -1000.0, np.float32)
    hu[r < 1.0] = 1000.0                                  # skull
    hu[r < 0.9] = 35.0                                    # brain
    clot = np.sqrt(((x - 95) * 1.4) ** 2 + ((y - 70) * 1.4) ** 2 + ((z - 12) * 5.0) ** 2) < 9.0
    hu[clot] = 65.0
    return Volume(hu=hu, spacing=(1.4, 1.4, 5.0), origin=(-112.0, -112.0, -60.0)), clot


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
