"""A synthetic baseline + follow-up pair sent through the node → automatic label = the generator's truth;
then a segmenter promotion and a rollback while the node keeps serving (same process, every job delivered).

Real parts: `ich-node serve` (subprocess), dcmtk storescu/echoscu, Orthanc as the PACS, the real pipeline,
`ich-node models promote|rollback` as a separate process.
"""

from __future__ import annotations

import csv
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.integration.conftest import NodeProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
]


def synth_pair(root: Path, prevalence: float, seed: int) -> dict:
    from training.synth import SynthOptions, write_cohort

    opts = SynthOptions(matrix=128, thickness_mm=(5.0,), tilt_fraction=0.0, prevalence=prevalence,
                        streak_probability=0.0)
    write_cohort(root, 1, seed=seed, options=opts)
    row = next(csv.DictReader(open(root / "manifest.csv")))
    return {**row, "root": root}


def classical_version(path: Path, **params) -> Path:
    from pipeline.models import ModelMetadata

    ModelMetadata(kind="segmenter", version="0", name="classical-threshold", created="2026-01-01T00:00:00+00:00",
                  training_data={"source": "none", "fingerprint": "-", "cases": 0}, metrics={},
                  code_version="test", extra={"framework": "classical", "params": params}).write(path)
    return path


def ich_node(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("ich-node")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def test_followup_label_and_rollback_while_serving(tmp_path, free_port, orthanc, dcmtk, monkeypatch):
    from pipeline.result import AnalysisResult
    from training.dataset import DatasetStore
    from training.registry import Registry

    # Only the two segmenter versions below are served (no bundled CNN/classifier): the labels must not
    # depend on which default model ships, and the node and the CLI both inherit this setting.
    monkeypatch.setenv("ICH_NODE__MODELS__BUNDLED_FALLBACK", "false")
    expander = synth_pair(tmp_path / "exp", 1.0, 11)
    other = synth_pair(tmp_path / "non", 0.0, 12)
    node = NodeProcess(tmp_path, free_port(), orthanc.address).start(dcmtk)
    reg = Registry(node.data_dir / "models", bundled_root=None)
    a = reg.add("segmenter", classical_version(tmp_path / "a"))
    b = reg.add("segmenter", classical_version(tmp_path / "b", lo_hu=42.0, min_component_ml=0.5))
    assert ich_node("models", "promote", a.version, "--kind", "segmenter", "--data-dir", str(node.data_dir)).returncode == 0
    q = node.queue()

    def send_and_wait(series: Path, n_sent: int) -> AnalysisResult:
        assert dcmtk("storescu", "-aec", "ICHNODE", "+sd", "127.0.0.1", node.port, series).returncode == 0
        jobs = wait_for(lambda: (lambda js: js if len(js) >= n_sent and all(j.state.value == "sent" for j in js) else None)(
            q.list()), 600, step=0.5, what=f"{n_sent} job(s) delivered")
        newest = max(jobs, key=lambda j: j.created_at)
        return AnalysisResult.read(Path(newest.result_dir))

    try:
        pid = node.proc.pid
        base = send_and_wait(expander["root"] / expander["baseline_dir"], 1)
        fu = send_and_wait(expander["root"] / expander["followup_dir"], 2)
        assert base.model_versions.get("segmenter") == a.version
        store = DatasetStore.for_data_dir(node.data_dir)
        case = wait_for(lambda: store.case_for_baseline(expander["baseline_study_uid"]), 30, step=0.5, what="labelled case")
        assert case.label == int(expander["expansion"]) == 1, (base.volume_ml, fu.volume_ml, expander["growth_ml"])
        assert case.followup_study_uid == expander["followup_study_uid"]
        assert (case.baseline_volume_ml, case.followup_volume_ml) == (base.volume_ml, fu.volume_ml)
        with sqlite3.connect(node.data_dir / "index.sqlite3") as db:  # one site key: the index names the patient alike
            assert case.patient_hash in {r[0] for r in db.execute("SELECT patient_hash FROM patients")}

        # promote B while the node runs: the next job uses it; roll back: the one after uses A again
        t0 = time.monotonic()
        assert ich_node("models", "promote", b.version, "--kind", "segmenter", "--data-dir", str(node.data_dir)).returncode == 0
        r_b = send_and_wait(other["root"] / other["baseline_dir"], 3)
        assert r_b.model_versions.get("segmenter") == b.version
        out = ich_node("models", "rollback", "--kind", "segmenter", "--data-dir", str(node.data_dir))
        assert out.returncode == 0 and f"to version {a.version}" in out.stdout
        r_a = send_and_wait(other["root"] / other["followup_dir"], 4)
        assert r_a.model_versions.get("segmenter") == a.version
        print(f"\npromote → job on B → rollback → job on A: {time.monotonic() - t0:.1f} s, node pid unchanged")
        assert node.proc.poll() is None and node.proc.pid == pid
        assert dcmtk("echoscu", "-aec", "ICHNODE", "127.0.0.1", node.port).returncode == 0
        assert len([o for o in orthanc.instances()]) >= 4  # every result delivered
        assert store.counts()["cases"] == 2  # the second pair was labelled too
    finally:
        node.stop()
