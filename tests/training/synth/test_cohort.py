"""The on-disk cohort: layout contract, DICOM validity (dciodvfy), determinism, CLI."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from tests.conftest import require_tool, unavailable
from training.synth import MANIFEST_COLUMNS, SynthOptions, write_cohort

OPTS = SynthOptions(matrix=128, thickness_mm=(5.0,), tilt_fraction=0.5)
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    write_cohort(out, 3, seed=5, options=OPTS)
    return out


def _rows(out: Path) -> list[dict]:
    with open(out / "manifest.csv") as fh:
        return list(csv.DictReader(fh))


def test_layout_contract(cohort):
    rows = _rows(cohort)
    assert len(rows) == 3
    assert list(rows[0]) == MANIFEST_COLUMNS
    meta = json.loads((cohort / "cohort.json").read_text())
    assert meta["seed"] == 5 and meta["n_cases"] == 3 and meta["options"]["matrix"] == 128
    assert "expansion_prevalence" in meta["summary"]
    for r in rows:
        for col in ("baseline_dir", "followup_dir", "baseline_mask", "followup_mask"):
            p = cohort / r[col]
            assert not Path(r[col]).is_absolute() and p.exists(), col
        files = sorted((cohort / r["baseline_dir"]).glob("*.dcm"))
        assert files and all(f.name.startswith("IM") for f in files)        # names are not UIDs
        assert int(r["expansion"]) in (0, 1) and r["head_source"] == "phantom"
        names = [m for m in r["markers"].split(";") if m]
        assert all(r[f"marker_{m}"] == "1" for m in names)


def test_dicom_headers_match_manifest(cohort):
    for r in _rows(cohort):
        b = [pydicom.dcmread(f) for f in sorted((cohort / r["baseline_dir"]).glob("*.dcm"))]
        f = [pydicom.dcmread(p) for p in sorted((cohort / r["followup_dir"]).glob("*.dcm"))]
        assert {d.StudyInstanceUID for d in b} == {r["baseline_study_uid"]}
        assert {d.SeriesInstanceUID for d in f} == {r["followup_series_uid"]}
        assert r["baseline_study_uid"] != r["followup_study_uid"]
        assert {d.PatientID for d in b + f} == {r["patient_id"]}
        assert len({d.FrameOfReferenceUID for d in b}) == 1 and b[0].FrameOfReferenceUID != f[0].FrameOfReferenceUID
        assert len({d.SOPInstanceUID for d in b + f}) == len(b) + len(f)
        t0 = datetime.strptime(b[0].AcquisitionDate + b[0].StudyTime[:6], "%Y%m%d%H%M%S")
        t1 = datetime.strptime(f[0].AcquisitionDate + f[0].StudyTime[:6], "%Y%m%d%H%M%S")
        assert (t1 - t0).total_seconds() / 3600 == pytest.approx(float(r["interval_h"]), abs=0.02)
        assert float(b[0].SliceThickness) == float(r["slice_thickness_mm"])
        assert float(b[0].GantryDetectorTilt) == pytest.approx(float(r["tilt_deg"]), abs=0.05)
        assert b[0].Rows == 128 and b[0].Modality == "CT" and "NCCT" in b[0].SeriesDescription
        hu = b[0].pixel_array * float(b[0].RescaleSlope) + float(b[0].RescaleIntercept)
        assert hu.min() >= -1024 and hu.max() <= 3071


def test_dciodvfy_reports_no_errors(cohort):
    exe = require_tool("dciodvfy")
    r = _rows(cohort)[0]
    for col in ("baseline_dir", "followup_dir"):
        f = sorted((cohort / r[col]).glob("*.dcm"))[2]
        res = subprocess.run([exe, str(f)], capture_output=True, text=True, timeout=60)
        out = res.stdout + res.stderr
        assert "Error" not in out, out


def test_masks_have_physical_geometry_and_match_volumes(cohort):
    for r in _rows(cohort):
        for which in ("baseline", "followup"):
            img = sitk.ReadImage(str(cohort / r[f"{which}_mask"]))
            arr = sitk.GetArrayFromImage(img)
            assert arr.dtype == np.uint8 and set(np.unique(arr)) <= {0, 1, 2}
            assert img.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
            ml = (arr == 1).sum() * np.prod(img.GetSpacing()) / 1000
            assert ml == pytest.approx(float(r[f"{which}_mask_volume_ml"]), rel=1e-3, abs=1e-3)
            assert ml == pytest.approx(float(r[f"{which}_volume_ml"]), rel=0.12, abs=0.5)


def test_mask_lands_on_the_hematoma_through_the_pipeline_loader(cohort):
    """Resample the ground truth onto the loader's grid by physical coordinates (tilted or not)."""
    from pipeline.volume import load_series

    for r in _rows(cohort):
        vol = load_series(cohort / r["baseline_dir"]).volume
        ref = sitk.GetImageFromArray(vol.hu.astype(np.float32))
        ref.SetSpacing(vol.spacing)
        ref.SetOrigin(vol.origin)
        ref.SetDirection(vol.direction)
        m = sitk.Resample(sitk.ReadImage(str(cohort / r["baseline_mask"])), ref, sitk.Transform(),
                          sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        mask = sitk.GetArrayFromImage(m) == 1
        if mask.sum() < 20:
            continue
        assert 40 <= np.median(vol.hu[mask]) <= 90, r["case_id"]


def _digest(out: Path) -> str:
    h = hashlib.sha256((out / "manifest.csv").read_bytes())
    for p in sorted((out / "cases").rglob("*")):
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_and_workers_do_not_matter(tmp_path, cohort):
    write_cohort(tmp_path / "a", 2, seed=9, options=OPTS)
    write_cohort(tmp_path / "b", 2, seed=9, options=OPTS, workers=2)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _rows(tmp_path / "a")[0]["baseline_study_uid"] != _rows(cohort)[0]["baseline_study_uid"]


def test_baselines_only_parts_concatenate_into_the_same_cohort(tmp_path, cohort):
    """Classifier cohorts at scale: parts written from ``first`` on, without follow-up studies, hold the
    same baselines and labels as the whole cohort written at once."""
    part = tmp_path / "part"
    write_cohort(part, 2, seed=5, options=OPTS.with_(write_followup=False), first=1)
    whole, rows = _rows(cohort), _rows(part)
    assert [r["case_id"] for r in rows] == ["case00001", "case00002"]
    for got, want in zip(rows, whole[1:]):
        for col in ("patient_id", "expansion", "baseline_volume_ml", "followup_volume_ml", "growth_pct", "markers",
                    "baseline_study_uid", "baseline_series_uid", "baseline_mask_volume_ml", "seed"):
            assert got[col] == want[col], col
        assert got["followup_dir"] == got["followup_mask"] == ""
        files = [sorted(p.name for p in (root / r["baseline_dir"]).iterdir()) for root, r in ((part, got), (cohort, want))]
        assert files[0] == files[1]
        assert all((part / got["baseline_dir"] / f).read_bytes() == (cohort / want["baseline_dir"] / f).read_bytes()
                   for f in files[0])
    assert not any(part.glob("cases/*/followup*"))
    assert json.loads((part / "cohort.json").read_text())["followups"] is False


def test_refuses_non_empty_output(cohort):
    with pytest.raises(FileExistsError):
        write_cohort(cohort, 1, seed=5, options=OPTS)


def test_cli_synth(tmp_path):
    exe = REPO / ".venv" / "bin" / "ich-node"
    if not exe.exists():
        unavailable("ich-node entry point not installed")
    out = tmp_path / "cli"
    res = subprocess.run([str(exe), "synth", "--cases", "1", "--out", str(out), "--seed", "3", "--matrix", "64",
                          "--thickness", "5", "--previews", "1"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (out / "previews" / "case00000.png").stat().st_size > 1000
    assert "1/1" in res.stderr                                   # the progress bar
    assert len(_rows(out)) == 1 and _rows(out)[0]["slice_thickness_mm"] == "5.0"
    bad = subprocess.run([str(exe), "synth", "--cases", "1", "--out", str(tmp_path / "x"), "--thickness", "abc"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "thickness" in bad.stderr


def test_rle_output_is_lossless_and_valid(tmp_path, cohort):
    from dataclasses import replace

    write_cohort(tmp_path / "rle", 1, seed=5, options=replace(OPTS, dicom_rle=True))
    r = _rows(tmp_path / "rle")[0]
    plain = sorted((cohort / r["baseline_dir"]).glob("*.dcm"))
    packed = sorted((tmp_path / "rle" / r["baseline_dir"]).glob("*.dcm"))
    assert len(plain) == len(packed)
    a, b = pydicom.dcmread(plain[3]), pydicom.dcmread(packed[3])
    assert b.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    assert np.array_equal(a.pixel_array, b.pixel_array)
    exe = require_tool("dciodvfy")
    res = subprocess.run([exe, str(packed[3])], capture_output=True, text=True, timeout=60)
    assert "Error" not in res.stdout + res.stderr


def test_cli_stats_only_writes_nothing(tmp_path):
    exe = REPO / ".venv" / "bin" / "ich-node"
    if not exe.exists():
        unavailable("ich-node entry point not installed")
    res = subprocess.run([str(exe), "synth", "--cases", "30", "--stats-only", "--prevalence", "0.5"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    stats = json.loads(res.stdout)
    assert stats["n"] == 30 and 0.2 < stats["expansion_prevalence"] < 0.8
    assert list(tmp_path.iterdir()) == []


def test_cli_synth_draws_matrices_and_a_shifted_appearance(tmp_path):
    """`--matrix 32,64` draws the matrix per case; `--appearance shifted` records the other site's look."""
    exe = REPO / ".venv" / "bin" / "ich-node"
    out = tmp_path / "site"
    res = _synth(exe, "--cases", "4", "--out", out, "--seed", "5", "--matrix", "32,64", "--thickness", "5",
                 "--appearance", "shifted")
    assert res.returncode == 0, res.stderr
    options = json.loads((out / "cohort.json").read_text())["options"]
    assert list(options["matrix_choices"]) == [32, 64] and options["noise_textures"]
    for bad in (["--appearance", "weird"], ["--matrix", "64,x"]):
        r = _synth(exe, "--cases", "1", "--out", tmp_path / "x", *bad)
        assert r.returncode != 0 and bad[0] in r.stderr


def _synth(exe, *args) -> subprocess.CompletedProcess:
    if not exe.exists():
        unavailable("ich-node entry point not installed")
    return subprocess.run([str(exe), "synth", *map(str, args)], capture_output=True, text=True, timeout=600)
