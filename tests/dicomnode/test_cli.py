"""Admin CLI: status, jobs list|show|retry, echo, send, serve's option errors."""

from __future__ import annotations

import json
import time

from typer.testing import CliRunner

from dicomnode.cli import app
from dicomnode.deliver.ledger import Ledger
from dicomnode.queue import JobState, open_queue
from tests.conftest import StoreSCP, small_config

runner = CliRunner()


def test_status_json_and_table(data_dir):
    r = runner.invoke(app, ["status", "--data-dir", str(data_dir), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["queue"]["sent"] == 1 and info["queue"]["dead"] == 1
    assert info["errors"][0]["error"] == "analysis process died (exit code -9)"
    assert info["disk"]["state"] == "ok" and set(info["models"]) == {"segmenter", "classifier"}
    r = runner.invoke(app, ["status", "--data-dir", str(data_dir)])
    assert r.exit_code == 0 and "last errors" in r.output and "dead" in r.output


def test_jobs_list_show_retry(data_dir):
    r = runner.invoke(app, ["jobs", "list", "--data-dir", str(data_dir), "--json"])
    rows = json.loads(r.output)
    assert [j["state"] for j in rows] == ["dead", "sent"]
    assert "payload" not in rows[0] and "1.2.3" not in r.output  # no raw UIDs
    r = runner.invoke(app, ["jobs", "list", "--data-dir", str(data_dir), "--state", "dead"])
    assert r.exit_code == 0 and "jobs (1)" in r.output and "dead" in r.output and "sent" not in r.output
    r = runner.invoke(app, ["jobs", "show", "1", "--data-dir", str(data_dir), "--json"])
    assert json.loads(r.output)["deliveries"][0]["delivered"] == ["seg.dcm"]
    r = runner.invoke(app, ["jobs", "show", "1", "--data-dir", str(data_dir)])
    assert r.exit_code == 0 and "deliveries" in r.output
    r = runner.invoke(app, ["jobs", "retry", "1", "--data-dir", str(data_dir)])
    assert r.exit_code == 1 and "only failed or dead" in r.output
    r = runner.invoke(app, ["jobs", "retry", "--all-dead", "--data-dir", str(data_dir)])
    assert r.exit_code == 0 and "job 2: queued" in r.output
    cfg = small_config()
    cfg.node.data_dir = data_dir
    assert open_queue(cfg).get("2").state is JobState.QUEUED
    r = runner.invoke(app, ["jobs", "show", "99", "--data-dir", str(data_dir)])
    assert r.exit_code == 1 and "no job 99" in r.output
    r = runner.invoke(app, ["jobs", "list", "--state", "lost", "--data-dir", str(data_dir)])
    assert r.exit_code == 2 and "unknown state" in r.output


def test_status_shows_a_down_destination_and_retry_restarts_the_give_up_clock(data_dir, tmp_path):
    cfg_file = tmp_path / "node.toml"
    cfg_file.write_text(f'[node]\ndata_dir = "{data_dir}"\n[[destinations]]\nname = "pacs"\nae_title = "PACS"\n'
                        'host = "127.0.0.1"\nport = 104\n[[destinations]]\nname = "web"\ntype = "stowrs"\n'
                        'url = "http://127.0.0.1:1/dicomweb"\n')
    ledger = Ledger(data_dir / "deliveries.sqlite3")
    ledger.set_destination_state("pacs", time.time() - 600, "pacs: association aborted")
    ledger.record_failure("2", "pacs")
    r = runner.invoke(app, ["status", "--config", str(cfg_file), "--json"])
    dests = json.loads(r.output)["destinations"]
    assert dests["pacs"]["state"] == "down" and dests["pacs"]["down_since"] < time.time() - 599
    assert dests["web"] == {"state": "up", "down_since": None, "last_error": None}
    r = runner.invoke(app, ["status", "--config", str(cfg_file)])
    assert r.exit_code == 0 and "destination pacs: down" in r.output and "destination web: up" in r.output
    assert runner.invoke(app, ["jobs", "retry", "2", "--config", str(cfg_file)]).exit_code == 0
    assert ledger.record_failure("2", "pacs", sent=False)[0] == 0  # a fresh clock: no failed send counted


def test_jobs_without_a_queue_says_so(tmp_path):
    r = runner.invoke(app, ["jobs", "list", "--data-dir", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "no queue" in r.output


def test_echo_and_send_against_storescp(tmp_path, ct_data):
    peer = StoreSCP(tmp_path).start()
    try:
        r = runner.invoke(app, ["echo", f"DEST@127.0.0.1:{peer.port}"])
        assert r.exit_code == 0 and "C-ECHO ok" in r.output
        r = runner.invoke(app, ["send", str(ct_data / "philips-phantom-5mm"), f"DEST@127.0.0.1:{peer.port}"])
        assert r.exit_code == 0, r.output
        assert "sent 28 file(s)" in r.output and "skipped DIRFILE: DICOMDIR" in r.output
        assert peer.stores() == 28
    finally:
        peer.stop()
    r = runner.invoke(app, ["echo", f"DEST@127.0.0.1:{peer.port}"])
    assert r.exit_code == 1 and "echo failed" in r.output
    r = runner.invoke(app, ["echo", "no-port"])
    assert r.exit_code == 1 and "AE@HOST:PORT" in r.output


def test_serve_rejects_bad_options(tmp_path):
    r = runner.invoke(app, ["serve", "--destination", "PACS@host", "--data-dir", str(tmp_path)])
    assert r.exit_code == 2 and "AE@HOST:PORT" in r.output
    r = runner.invoke(app, ["serve", "--ae-title", "A" * 20, "--data-dir", str(tmp_path)])
    assert r.exit_code == 2 and "longer than 16" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[queue]\nmax_attempts = 0\n")
    r = runner.invoke(app, ["serve", "--config", str(bad)])
    assert r.exit_code == 2 and "queue.max_attempts" in r.output


def test_status_shows_retrain_state(data_dir):
    from training.retrain import write_status

    r = runner.invoke(app, ["status", "--data-dir", str(data_dir), "--json"])
    assert json.loads(r.output)["retrain"]["state"] == "never run"
    write_status(data_dir, state="done", schedule="0 3 * * 0", message="classifier v2 refused by the gate")
    r = runner.invoke(app, ["status", "--data-dir", str(data_dir)])
    assert r.exit_code == 0, r.output
    assert "retraining: done, schedule 0 3 * * 0; last: classifier v2 refused by the gate" in " ".join(r.output.split())


def test_train_backbones_refuses_an_unknown_backbone_before_generating(tmp_path):
    r = runner.invoke(app, ["train", "backbones", "--out", str(tmp_path / "b"), "--backbones", "resnet50,vgg16"])
    assert r.exit_code == 1 and "unknown backbone 'vgg16'" in r.output
    assert not (tmp_path / "b").exists()
