"""`--json` on every listing command: valid JSON with every value in full, whatever the terminal's width.

A table printed to a narrow terminal (or piped to a file) cuts its cells ("segmenter" -> "segme…");
the JSON never does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicomnode.cli import app
from dicomnode.queue import open_queue
from model_dirs import make_model
from tests.conftest import small_config
from training.dataset import Case, DatasetStore
from training.registry import Registry

LONG_ERROR = "analysis process died (exit code -9) after " + "a very long explanation " * 6 + "END"
LONG_NAME = "ich-unet3d-trained-on-the-site-cohort-with-a-long-name-END"
REASON = "motion artefact in every slice of the baseline, see the reviewer's note END"

runner = CliRunner()


@pytest.fixture
def listed(data_dir, tmp_path, monkeypatch) -> Path:
    """``data_dir`` (tests/dicomnode/conftest.py) plus a job with a long error, two registry versions with
    a long name and a reviewed training case, listed on a terminal too narrow for any of it."""
    monkeypatch.setenv("COLUMNS", "40")
    cfg = small_config()
    cfg.node.data_dir = data_dir
    q = open_queue(cfg)
    job = q.enqueue("c" * 32, {"files": []})
    q.claim("w")
    q.fail(job.id, "w", LONG_ERROR)
    reg = Registry(cfg.models_dir)
    for kind in ("segmenter", "classifier"):
        model = make_model(tmp_path / kind, kind)
        meta = json.loads((model / "metadata.json").read_text())
        (model / "metadata.json").write_text(json.dumps({**meta, "name": LONG_NAME}))
        reg.add(kind, model, metrics={"validation": {"auc": 0.8123456}})
    store = DatasetStore.for_data_dir(data_dir)
    store.upsert_case(Case(case_id="n-0123456789ab", patient_hash="p" * 16, source="node", label=1,
                           label_source="followup", baseline_study_uid="1.2.826.0.1.1",
                           followup_study_uid="1.2.826.0.1.2", baseline_volume_ml=12.345678,
                           followup_volume_ml=21.5, interval_h=30.25, baseline_dir=None, baseline_mask=None,
                           excluded=False, exclude_reason=None, extra={}, created="", updated=""))
    store.exclude("n-0123456789ab", REASON)
    return data_dir


def listing(data_dir: Path, *args: str):
    r = runner.invoke(app, [*args, "--data-dir", str(data_dir), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_the_tables_are_truncated_on_a_narrow_terminal(listed):
    """The reason for --json: the same listings as tables lose their values."""
    r = runner.invoke(app, ["models", "list", "--data-dir", str(listed)])
    assert r.exit_code == 0 and LONG_NAME not in r.output
    r = runner.invoke(app, ["jobs", "list", "--data-dir", str(listed)])
    assert r.exit_code == 0 and "END" not in r.output


def test_models_list_and_show_json(listed):
    rows = listing(listed, "models", "list")
    mine = [v for v in rows if v["name"] == LONG_NAME]
    assert {v["kind"] for v in mine} == {"segmenter", "classifier"}
    for v in mine:
        assert v["metrics"] == {"validation": {"auc": 0.8123456}} and Path(v["path"]).is_dir()
        assert isinstance(v["served"], bool) and v["training_data"]["cases"] == 10
    assert sum(v["served"] for v in rows if v["kind"] == "classifier") <= 1
    top = max(int(v["version"]) for v in mine if v["kind"] == "classifier")
    assert listing(listed, "models", "list", "--kind", "segmenter") == [v for v in rows if v["kind"] == "segmenter"]
    shown = listing(listed, "models", "show", f"classifier:{top}")
    assert shown["name"] == LONG_NAME and shown["version"] == str(top) and shown["evaluation"] is None
    assert isinstance(shown["history"], list)


def test_dataset_list_json(listed):
    (case,) = listing(listed, "dataset", "list")
    assert case["case_id"] == "n-0123456789ab" and case["exclude_reason"] == REASON and case["excluded"] is True
    assert case["baseline_volume_ml"] == 12.345678 and case["interval_h"] == 30.25 and case["label"] == 1
    assert "baseline_study_uid" not in case and "1.2.826.0.1.1" not in json.dumps(case)  # no raw UIDs
    assert listing(listed, "dataset", "list", "--included") == []


def test_jobs_and_status_json_keep_long_values(listed):
    (job,) = [j for j in listing(listed, "jobs", "list") if j["key"] == "c" * 32]
    assert job["last_error"] == LONG_ERROR
    assert listing(listed, "jobs", "show", job["id"])["last_error"] == LONG_ERROR
    assert LONG_ERROR in [e["error"] for e in listing(listed, "status")["errors"]]
