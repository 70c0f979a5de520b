"""Retraining: fixed validation split, refusals, gate, lock, status, schedule, and real retrain runs."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import pytest

from training import retrain as rt
from training.retrain import DataPolicy, GatePolicy, RetrainBusy, RetrainRefused, gate


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
    assert gate("classifier", {"auc": 0.79, "brier": 0.155}, served).passed  # within margins
    worse_auc = gate("classifier", {"auc": 0.70, "brier": 0.15}, served)
    assert not worse_auc.passed and any("auc 0.7000 FAILS" in r for r in worse_auc.reasons)
    worse_cal = gate("classifier", {"auc": 0.85, "brier": 0.20}, served)
    assert not worse_cal.passed and any("brier" in r and "FAILS" in r for r in worse_cal.reasons)
    assert gate("classifier", {"auc": 0.70, "brier": 0.15}, served, GatePolicy(auc_margin=0.15)).passed
    assert gate("classifier", {"auc": 0.6, "brier": 0.2}, None).passed, "nothing served: nothing to beat"
    assert not gate("classifier", {"auc": None, "brier": 0.2}, served).passed


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
