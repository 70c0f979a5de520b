"""Three sample studies analysed by the node's pipeline, as a radiologist would meet them in the viewer.

- ``hematoma``: a synthetic head CT (``training.synth``: phantom anatomy, 512², 5 mm axial, no tilt) with a
  lobar hematoma of known extent — analysed: SEG + SR (volume, expansion probability, risk) + overlay SC.
- ``negative``: the real normal GE head (``shared/data/ct/ge-human-head-tilted``) — analysed, no hematoma.
- ``cannot_assess``: the Philips head phantom (5 mm) with one slice missing — a coded "cannot assess" SR.

``prepare(workdir)`` writes each under ``workdir/<name>/ct`` and its results under ``workdir/<name>/out``
(``seg.dcm``, ``sr.dcm``, ``sc/``, ``result.json``) with one ``Analyzer`` (bundled models, loaded once).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from deploy.viewer.stack import REPO

HEMATOMA_SEED = 1            # lobar, ≈ 36 mL, no IVH: clearly visible on the key slices
MISSING_SLICE = 10


@dataclass
class Sample:
    name: str
    ct_dir: Path
    out_dir: Path
    study_uid: str
    result: dict
    truth: dict[str, np.ndarray] | None = None   # ground-truth hematoma per CT SOPInstanceUID (synthetic only)
    ct_files: list[Path] = field(default_factory=list)

    @property
    def result_files(self) -> list[Path]:
        return [self.out_dir / rel for rels in self.result["outputs"].values() for rel in rels]

    def files(self, kind: str) -> list[Path]:
        return [self.out_dir / rel for rel in self.result["outputs"].get(kind, [])]


def ct_data_dir() -> Path | None:
    """The real CT folder: ``$ICH_CT_DATA``, ``../shared/data/ct`` beside the repo, or /work/shared/data/ct."""
    for c in (os.environ.get("ICH_CT_DATA"), REPO.parent / "shared" / "data" / "ct", "/work/shared/data/ct"):
        if c and Path(c).is_dir():
            return Path(c)
    return None


def _images(folder: Path) -> list[pydicom.Dataset]:
    """CT images of a folder sorted along the patient axis (DICOMDIR files skipped)."""
    out = []
    for p in sorted(folder.iterdir()):
        ds = pydicom.dcmread(p, force=True)
        if "PixelData" in ds and "ImagePositionPatient" in ds:
            out.append(ds)
    return sorted(out, key=lambda ds: float(ds.ImagePositionPatient[2]))


def write_hematoma_ct(folder: Path) -> dict[str, np.ndarray]:
    """The synthetic hematoma study; returns its ground-truth hematoma mask by SOPInstanceUID."""
    from training.synth import SynthOptions, generate_case
    from training.synth.cohort import write_case

    case = generate_case(HEMATOMA_SEED, SynthOptions(matrix=512, thickness_mm=(5.0,), tilt_fraction=0.0),
                         case_id="viewer")
    tmp = folder.parent / "synth"
    write_case(tmp, case, cohort_seed=HEMATOMA_SEED, index=0)
    (tmp / "cases" / "viewer" / "baseline").rename(folder)
    shutil.rmtree(tmp)
    truth = case.baseline.mask_on_hu_grid() == 1             # slice k is IM<k+1>.dcm
    files = sorted(folder.glob("IM*.dcm"))
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): truth[k] for k, f in enumerate(files)}


def write_missing_slice_ct(source: Path, folder: Path, missing: int = MISSING_SLICE) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, ds in enumerate(_images(source)):
        if i != missing:
            ds.save_as(folder / f"IM{i + 1:04d}.dcm")


def prepare(workdir: Path, names: tuple[str, ...] = ("hematoma", "negative", "cannot_assess"),
            progress=print) -> dict[str, Sample]:
    """Make and analyse the sample studies under ``workdir``; returns them by name."""
    from pipeline.analyze import Analyzer, OutputOptions
    from pipeline.models import ModelPaths

    workdir = Path(workdir)
    ct = ct_data_dir()
    if ct is None and names != ("hematoma",):
        raise FileNotFoundError("real CT data (../shared/data/ct or $ICH_CT_DATA) not found")
    analyzer = Analyzer(ModelPaths.bundled(), OutputOptions(sr_profiles=("ohif",)))  # what an "ohif" destination gets
    samples: dict[str, Sample] = {}
    for name in names:
        base = workdir / name
        ct_dir, out = base / "ct", base / "out"
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        truth = None
        if name == "hematoma":
            truth = write_hematoma_ct(ct_dir)
        elif name == "negative":
            ct_dir = ct / "ge-human-head-tilted"
        elif name == "cannot_assess":
            write_missing_slice_ct(ct / "philips-phantom-5mm", ct_dir)
        else:
            raise ValueError(f"unknown sample {name!r}")
        progress(f"analysing the {name} study ({ct_dir}) …")
        result = analyzer.analyze(ct_dir, out)
        datasets = _images(ct_dir)
        samples[name] = Sample(name=name, ct_dir=ct_dir, out_dir=out, study_uid=str(datasets[0].StudyInstanceUID),
                               result=json.loads((out / "result.json").read_text()),
                               truth=truth, ct_files=[Path(ds.filename) for ds in datasets])
        risk = result.risk.value if result.risk else None
        progress(f"  {name}: {result.status.value}, volume {result.volume_ml} mL, risk {risk}")
    return samples


def upload(orthanc, samples: dict[str, Sample]) -> None:
    """Store each sample's CT and results in Orthanc (REST, as a PACS would hold them)."""
    for s in samples.values():
        orthanc.upload([*s.ct_files, *s.result_files])
