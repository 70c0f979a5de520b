"""Retraining: fixed validation split, refusals, gate, lock, status, schedule, and real retrain runs."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import pytest

from training import retrain as rt
from training.retrain import DataPolicy, GatePolicy, RetrainBusy, RetrainRefused, gate
from training.trainers import ClassifierTrainer, SegmenterTrainer


def write_manifest(root: Path, n: int, expanders: int, *, masks: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["case_id", "patient_id", "baseline_dir", "baseline_mask", "expansion"])
        w.writeheader()
        for i in range(n):
            w.writerow({"case_id": f"c{i:03d}", "patient_id": f"P{i:03d}", "baseline_dir": f"cases/c{i:03d}/baseline",
                        "baseline_mask": f"cases/c{i:03d}/mask.nii.gz" if masks else "",
                        "expansion": int(i < expanders)})
    return root


# ------------------------------------------------------------------------------------- the gate


def test_gate_classifier_margins() -> None:
    served = {"auc": 0.80, "brier": 0.15}
    shown = {"auc_ci95": [0.62, 0.98], "cases": 40}  # clears chance on its validation cases
    assert gate("classifier", {"auc": 0.79, "brier": 0.155, **shown}, served).passed  # within margins
    worse_auc = gate("classifier", {"auc": 0.70, "brier": 0.15, **shown}, served)
    assert not worse_auc.passed and any("auc 0.7000 FAILS" in r for r in worse_auc.reasons)
    worse_cal = gate("classifier", {"auc": 0.85, "brier": 0.20, **shown}, served)
    assert not worse_cal.passed and any("brier" in r and "FAILS" in r for r in worse_cal.reasons)
    assert gate("classifier", {"auc": 0.70, "brier": 0.15, **shown}, served, GatePolicy(auc_margin=0.15)).passed
    assert gate("classifier", {"auc": 0.6, "brier": 0.2, **shown}, None).passed, "nothing served: nothing to beat"
    assert not gate("classifier", {"auc": None, "brier": 0.2}, served).passed


def test_gate_classifier_needs_discrimination_shown_not_a_lucky_point_estimate() -> None:
    """Small validation shares flatter models: a candidate whose AUC CI reaches chance is not promoted,
    however it compares with the served model; the bound is a policy (config [training] auc_ci_low_min)."""
    from training.stats import delong_auc_ci

    served = {"auc": 0.60, "brier": 0.25}
    y = [1, 1, 1] + [0] * 9  # the default floors: 12 validation cases, 3 expanders
    lucky = delong_auc_ci(y, [0.9, 0.5, 0.3] + [0.1 + 0.08 * i for i in range(9)])
    assert lucky[0] > served["auc"] and lucky[1] < 0.5
    d = gate("classifier", {"auc": lucky[0], "brier": 0.2, "auc_ci95": list(lucky[1:]), "cases": 12}, served)
    assert not d.passed and any("CI lower bound" in r and "FAILS" in r and "12 validation cases" in r for r in d.reasons)
    strong = delong_auc_ci(y, [0.9, 0.8, 0.7] + [0.1 + 0.07 * i for i in range(9)])
    assert gate("classifier", {"auc": strong[0], "brier": 0.2, "auc_ci95": list(strong[1:]), "cases": 12}, served).passed
    one = gate("classifier", {"auc": 1.0, "brier": 0.1, "auc_ci95": [float("nan"), 1.0], "cases": 4}, None)
    assert not one.passed and any("lower bound unknown FAILS" in r for r in one.reasons)
    assert gate("classifier", {"auc": 0.8, "brier": 0.2, "auc_ci95": [0.55, 1.0]}, None,
                GatePolicy(auc_ci_low_min=0.5)).passed
    assert not gate("classifier", {"auc": 0.8, "brier": 0.2, "auc_ci95": [0.55, 1.0]}, None,
                    GatePolicy(auc_ci_low_min=0.6)).passed


def test_gate_segmenter_margins() -> None:
    served = {"median_dice": 0.90, "volume_mae_ml": 2.0}
    assert gate("segmenter", {"median_dice": 0.89, "volume_mae_ml": 2.3}, served).passed
    assert not gate("segmenter", {"median_dice": 0.80, "volume_mae_ml": 1.0}, served).passed
    assert not gate("segmenter", {"median_dice": 0.95, "volume_mae_ml": 3.0}, served).passed


# ------------------------------------------------------------------------------ split and refusals


def test_validation_split_is_fixed_per_patient(tmp_path: Path) -> None:
    small = rt.split_cohort(write_manifest(tmp_path / "a", 200, 50), tmp_path / "sa")
    big = rt.split_cohort(write_manifest(tmp_path / "b", 400, 100), tmp_path / "sb")
    val_small = {r["patient_id"] for r in rt.read_manifest(small.val_dir)}
    val_big = {r["patient_id"] for r in rt.read_manifest(big.val_dir)}
    train_big = {r["patient_id"] for r in rt.read_manifest(big.train_dir)}
    assert val_small <= val_big and not (val_small & train_big), "adding patients never moves one into training"
    assert 0.15 < small.val_cases / 200 < 0.35
    row = rt.read_manifest(small.train_dir)[0]
    assert Path(row["baseline_dir"]).is_absolute() and row["baseline_dir"].startswith(str(tmp_path / "a"))


def test_refusals_name_the_numbers(tmp_path: Path) -> None:
    split = rt.split_cohort(write_manifest(tmp_path / "c", 30, 2), tmp_path / "s")
    with pytest.raises(RetrainRefused, match=r"training cases \(need ≥ 40\).*expanders in training \(need ≥ 8\)"):
        rt.check_data("classifier", split, DataPolicy())
    # floors lowered below what the seed's nested 2-fold CV can fit: refused with the reason, not a traceback
    split = rt.split_cohort(write_manifest(tmp_path / "e", 60, 57), tmp_path / "s4")
    lenient = DataPolicy(min_train_cases=1, min_train_expanders=1, min_val_cases=1, min_val_expanders=1)
    with pytest.raises(RetrainRefused, match=r"[0-3] non-expanders in training \(the protocol's nested 2-fold CV"):
        rt.check_data("classifier", split, lenient)
    split = rt.split_cohort(write_manifest(tmp_path / "f", 60, 3), tmp_path / "s5")
    with pytest.raises(RetrainRefused, match=r"[0-3] expanders in training \(the protocol's nested"):
        rt.check_data("classifier", split, lenient)
    split = rt.split_cohort(write_manifest(tmp_path / "d", 80, 20, masks=False), tmp_path / "s2")
    with pytest.raises(RetrainRefused, match="no reference mask"):
        rt.check_data("segmenter", split, DataPolicy())
    with pytest.raises(RetrainRefused, match="manifest.csv missing"):
        rt.split_cohort(tmp_path / "nothing", tmp_path / "s3")


# ------------------------------------------------------------------------ lock, status, schedule


def test_lock_refuses_a_second_run_and_status_tracks_it(tmp_path: Path) -> None:
    inside = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with rt.retrain_lock(tmp_path):
            rt.write_status(tmp_path, state="running", pid=__import__("os").getpid(), started="t0")
            inside.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    assert inside.wait(10)
    try:
        with pytest.raises(RetrainBusy, match="already running"):
            with rt.retrain_lock(tmp_path):
                pass
        assert rt.read_status(tmp_path)["state"] == "running"
    finally:
        release.set()
        t.join()
    with rt.retrain_lock(tmp_path):  # free again
        pass
    rt.write_status(tmp_path, state="running", pid=2**22 + 12345)
    assert rt.read_status(tmp_path)["state"] == "interrupted", "a dead pid is not shown as running"
    assert rt.read_status(tmp_path / "nowhere") == {"state": "never run"}


def test_schedule_off_by_default_and_a_cron_job_runs_the_cli(tmp_path: Path) -> None:
    from apscheduler.triggers.cron import CronTrigger

    assert rt.scheduled_job(None) == {}
    jobs = rt.scheduled_job("15 2 * * 0", data_dir=tmp_path)
    fn, trigger = jobs["retrain"]
    assert isinstance(trigger, CronTrigger)
    assert rt.read_status(tmp_path)["schedule"] == "15 2 * * 0"
    # an empty node dataset: the scheduled run is refused with the reason, and says so in the status file
    assert fn() == 3
    status = rt.read_status(tmp_path)
    assert status["state"] == "refused" and status["trigger"] == "schedule"
    assert "training cases" in status["message"]
    # while another run holds the lock, the scheduled one does not start
    with rt.retrain_lock(tmp_path):
        assert fn() == 4


# ----------------------------------------------------------------- real retrains on a tiny cohort
# Heads small enough for seconds-long runs, through the real loading, brain extraction, radiomics,
# scikit-learn protocol and Keras trainer. Expanders carry a hypodense core (a blend-like marker) so
# that a classifier trained on the true labels beats one trained on shuffled labels by a wide margin.

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import tiny_cohort as tiny_cohort_data  # noqa: E402  (tests/: the same DICOM writer as the segmenter tests)

from pipeline.models import ModelPaths  # noqa: E402
from training.registry import Registry  # noqa: E402

SPACING = tiny_cohort_data.SPACING  # x, y, z mm
ORIGIN = (-94.5, -94.5, -57.5)       # the grid's first voxel (x, y, z mm), for the series and its masks
TINY_RADIOMICS = """imageType:
  Original: {}
featureClass:

  firstorder:
setting:
  binWidth: 25
  label: 1
  additionalInfo: false
"""


def tiny_head(rng: np.random.Generator, expander: bool, radius: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    shape = (24, 64, 64)
    zz, yy, xx = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, SPACING[::-1])], indexing="ij")
    r = np.sqrt((xx / 80) ** 2 + (yy / 88) ** 2 + (zz / 55) ** 2)
    hu = np.full(shape, -1000.0)
    hu[r < 1] = 1300.0
    inner = r < 1 - 8 / 80
    hu[inner] = 33 + rng.normal(0, 3, inner.sum())
    c = rng.uniform([-20, -25, -10], [20, 25, 10])
    radius = rng.uniform(11, 17) if radius is None else radius
    d = np.sqrt((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2)
    blob = (d < radius) & inner
    hu[blob] = 68 + rng.normal(0, 3, blob.sum())
    if expander:  # hypodense core reaching 45 HU, a marker of expansion
        core = blob & (d < radius * 0.55)
        hu[core] = 45 + rng.normal(0, 4, core.sum())
    return hu.astype(np.float32), blob


def write_series(hu: np.ndarray, folder: Path, patient: str, when: str = "20260301") -> None:
    tiny_cohort_data.write_series(hu, folder, patient, when=when, origin=ORIGIN)


def tiny_cohort(root: Path, n: int, expanders: int, seed: int = 7) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        cid = f"t{i:03d}"
        hu, blob = tiny_head(rng, i % (n // expanders) == 0 if expanders else False)
        write_series(hu, root / cid / "baseline", f"PT{i:03d}")
        img = sitk.GetImageFromArray(blob.astype(np.uint8))
        img.SetSpacing(SPACING)
        img.SetOrigin(ORIGIN)
        sitk.WriteImage(img, str(root / cid / "mask.nii.gz"))
        rows.append({"case_id": cid, "patient_id": f"PT{i:03d}", "baseline_dir": f"{cid}/baseline",
                     "baseline_mask": f"{cid}/mask.nii.gz", "baseline_volume_ml": blob.sum() * np.prod(SPACING) / 1000,
                     "expansion": int(i % (n // expanders) == 0) if expanders else 0})
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


TINY_DATA = DataPolicy(val_fraction=0.35, min_train_cases=8, min_train_expanders=3, min_val_cases=4,
                       min_val_expanders=2)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return tiny_cohort(tmp_path_factory.mktemp("cohort"), 30, 10)


def shuffled_training_labels(cohort: Path, out: Path, seed: int = 3) -> Path:
    """The same cohort with the training patients' labels permuted (validation untouched): a worse model."""
    rows = rt.read_manifest(cohort)
    train = [r for r in rows if not rt.in_validation(r["patient_id"], TINY_DATA.val_fraction)]
    for r, y in zip(train, np.random.default_rng(seed).permutation([r["expansion"] for r in train])):
        r["expansion"] = y
    out.mkdir()
    for r in rows:
        for col in ("baseline_dir", "baseline_mask"):
            r[col] = str(cohort / r[col])
    with open(out / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def test_classifier_retrain_promotes_then_gate_refuses_a_worse_model(cohort: Path, tmp_path: Path) -> None:
    params = tmp_path / "radiomics-tiny.yaml"
    params.write_text(TINY_RADIOMICS)
    data = tmp_path / "var"
    reg = Registry(data / "models", bundled_root=None)  # start from "no classifier installed"

    def trainer():
        served = reg.current_paths().classifier
        over = {"n_features_grid": (2,)} | ({} if served else {"radiomics_params": params})
        return ClassifierTrainer(overrides=over, served_dir=served, cache_dir=data / "cache")

    first = rt.retrain(registry=reg, data_dir=data, cohort=cohort, trainers=[trainer()], source=str(cohort),
                       data_policy=TINY_DATA)
    o = first.outcomes[0]
    assert o.promoted and o.candidate_version == "1" and reg.promoted()["classifier"] == "1"
    assert o.candidate_metrics["auc"] >= 0.9, o.candidate_metrics
    assert o.candidate_metrics["cases"] == first.split.val_cases >= 4
    v1 = reg.get("classifier", "1")
    assert v1.metadata.training_data["source"] == str(cohort) and v1.metadata.training_data["cases"] == first.split.train_cases
    assert json.loads((v1.path / "evaluation.json").read_text())["gate"]["passed"]
    assert (first.run_dir / "report.md").is_file() and (first.run_dir / "report.json").is_file()

    worse = rt.retrain(registry=reg, data_dir=data, cohort=shuffled_training_labels(cohort, tmp_path / "shuffled"),
                       trainers=[trainer()], source="shuffled", data_policy=TINY_DATA)
    o = worse.outcomes[0]
    assert not o.promoted and not o.gate.passed, o.gate.reasons
    assert o.candidate_version == "2" and reg.promoted()["classifier"] == "1", "the served model stays"
    assert o.served_metrics["auc"] - o.candidate_metrics["auc"] > 0.02
    assert any("FAILS" in r for r in o.gate.reasons)
    report = (worse.run_dir / "report.md").read_text()
    assert "FAILS" in report and "auc_ci95" in report and "calibration_slope" in report
    status = rt.read_status(data)
    assert status["state"] == "done" and "gate refused" in status["last"]["classifier"]
    # nothing new since the served version: no pointless retrain (a cron job would otherwise churn versions)
    with pytest.raises(RetrainRefused, match="trained on exactly these"):
        rt.retrain(registry=reg, data_dir=data, cohort=cohort, trainers=[trainer()], source=str(cohort),
                   data_policy=TINY_DATA)
    # the same worse model goes live only when forced, and rollback brings version 1 back
    reg.promote("classifier", "2", reason="forced for the test")
    assert reg.rollback("classifier").version == "1"


def test_segmenter_retrain_adds_a_version_judged_against_the_served_one(cohort: Path, tmp_path: Path) -> None:
    from pipeline.segment.preprocess import PreprocessConfig

    data = tmp_path / "var"
    reg = Registry(data / "models", bundled_root=None)  # nothing served: the classical segmenter is the bar
    tiny = {"epochs": 1, "steps_per_epoch": 3, "batch_size": 2, "base_filters": 4, "depth": 2, "threads": 2,
            "val_fraction": 0.2, "preprocess": PreprocessConfig(spacing_mm=4.0, patch=(16, 16, 16))}
    trainer = SegmenterTrainer(overrides=tiny, cache_dir=data / "cache" / "seg")
    report = rt.retrain(registry=reg, data_dir=data, cohort=cohort, trainers=[trainer], source="synthetic",
                        promote="never", data_policy=TINY_DATA)
    o = report.outcomes[0]
    assert o.candidate_version == "1" and not o.promoted and reg.promoted()["segmenter"] is None
    for m in (o.candidate_metrics, o.served_metrics):
        assert 0.0 <= m["median_dice"] <= 1.0 and m["volume_mae_ml"] >= 0 and m["cases"] == report.split.val_cases
    assert o.served_metrics["median_dice"] > 0.5, "the classical segmenter finds these blobs"
    v = reg.get("segmenter", "1")
    assert v.metadata.parent_version is None and v.metadata.training_data["source"] == "synthetic"
    assert (v.path / "model.keras").is_file() and (v.path / "evaluation.json").is_file()
    assert (report.run_dir / "segmenter" / "candidate" / "bland_altman.png").is_file()
    assert v.metadata.extra["gate"]["passed"] == o.gate.passed


def test_dataset_import_list_exclude_then_retrain_from_node_data(tmp_path: Path, monkeypatch) -> None:
    """A site imports labelled cases (given labels and follow-up studies), reviews them, and retrains."""
    from typer.testing import CliRunner

    from dicomnode.cli import app
    from dicomnode.pseudonym import Pseudonymizer
    from training.dataset import DatasetStore

    monkeypatch.setenv("ICH_NODE__NODE__DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("ICH_NODE__MODELS__BUNDLED_FALLBACK", "false")  # classical segmenter measures
    monkeypatch.setenv("COLUMNS", "250")
    site = tmp_path / "site"
    rng = np.random.default_rng(5)
    rows = []
    for i in range(4):  # follow-up pairs: 12 mm radius blob → 16 mm (≈ +9 mL) for i even, same size for i odd
        write_series(tiny_head(np.random.default_rng(100 + i), False, radius=12.0)[0], site / f"f{i}" / "base",
                     f"F{i}", when="20260301")
        write_series(tiny_head(np.random.default_rng(100 + i), False, radius=16.0 if i % 2 == 0 else 12.0)[0],
                     site / f"f{i}" / "fu", f"F{i}", when="20260302")
        rows.append(f"F{i},f{i}/base,,f{i}/fu")
    for i in range(3):
        write_series(tiny_head(rng, i == 0)[0], site / f"l{i}", f"L{i}")
        rows.append(f"L{i},l{i},{'yes' if i == 0 else 0},")
    rows += ["X1,../../etc,1,", "X2,l0,1,f0/fu", "X3,nowhere,1,", ",l1,0,"]
    (site / "labels.csv").write_text("patient_id,baseline,label,followup\n" + "\n".join(rows) + "\n")

    run = CliRunner().invoke
    out = run(app, ["dataset", "import", str(site), "--labels", str(site / "labels.csv")])
    assert out.exit_code == 1, out.output  # some rows refused
    assert "7 imported, 4 refused" in out.output
    assert "line 9: baseline '../../etc' lies outside" in out.output
    assert "line 10: give either a label or a followup study" in out.output
    assert "line 11: baseline 'nowhere' is not a directory" in out.output
    assert "line 12: patient_id is empty" in out.output
    store = DatasetStore.for_data_dir(tmp_path / "var")
    by_source = {c.label_source: [] for c in store.cases()}
    for c in store.cases():
        by_source[c.label_source].append(c)
    fu = sorted(by_source["followup"], key=lambda c: c.followup_volume_ml - c.baseline_volume_ml)
    assert [c.label for c in fu] == [0, 0, 1, 1] and all(c.interval_h == 24.0 for c in fu)
    assert fu[-1].followup_volume_ml - fu[-1].baseline_volume_ml > 6
    assert sorted(c.label for c in by_source["import"]) == [0, 0, 1]
    assert all(Path(c.baseline_mask).is_file() and Path(c.baseline_dir).is_dir() for c in store.cases())
    site_key = Pseudonymizer.for_data_dir(tmp_path / "var")  # imports are named with the node's site key
    assert {c.patient_hash for c in store.cases()} == {site_key(p) for p in ("F0", "F1", "F2", "F3", "L0", "L1", "L2")}

    out = run(app, ["dataset", "list"])
    assert out.exit_code == 0 and "7 (3 expanders included, 0 excluded)" in out.output
    victim = fu[0].case_id
    out = run(app, ["dataset", "exclude", victim, "--reason", "motion artefact"])
    assert out.exit_code == 0
    out = run(app, ["dataset", "list"])
    assert "motion artefact" in out.output and "1 excluded" in out.output
    assert run(app, ["dataset", "exclude", "i-nonexistent", "--reason", "x"]).exit_code == 1

    # too few cases for a classifier: a clear refusal, exit code 3, and the status file says why
    out = run(app, ["retrain", "--source", "node"])
    assert out.exit_code == 3 and "not retraining the classifier" in out.output, out.output
    status = rt.read_status(tmp_path / "var")
    assert status["state"] == "refused" and "training cases (need ≥ 40)" in status["message"]
    # the segmenter cannot learn from model 1's own masks
    out = run(app, ["retrain", "--segmenter", "--source", "node", "--min-cases", "1"])
    assert out.exit_code == 3 and "no reference mask" in out.output
    manifest = rt.read_manifest(tmp_path / "var" / "retrain" / "node-cohort-segclassical")
    assert victim not in {r["case_id"] for r in manifest} and len(manifest) == 6


def test_synthetic_source_generates_a_cohort_in_the_run(tmp_path: Path) -> None:
    from training.synth import SynthOptions

    reg = Registry(tmp_path / "models", bundled_root=None)
    opts = SynthOptions(matrix=64, thickness_mm=(5.0,), tilt_fraction=0.0, streak_probability=0.0)
    out = rt.cohort_from_source("synthetic", tmp_path / "run", data_dir=tmp_path, registry=reg, synthetic_cases=2,
                                seed=4, synth_options=opts)
    rows = rt.read_manifest(out)
    assert out == tmp_path / "run" / "source" and len(rows) == 2
    assert all((out / r["baseline_dir"]).is_dir() and (out / r["baseline_mask"]).is_file() for r in rows)
    with pytest.raises(RetrainRefused, match="not 'node' or 'synthetic'"):
        rt.cohort_from_source(str(tmp_path / "nowhere"), tmp_path / "run2", data_dir=tmp_path, registry=reg)
