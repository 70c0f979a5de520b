"""Config: defaults, TOML + env overrides, precise errors, AE@HOST:PORT parsing."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicomnode.config import AEAddress, ConfigError, Destination, NodeConfig, load_config

REPO = Path(__file__).resolve().parents[3]


def test_defaults_run_without_a_file():
    cfg = load_config(None, env={})
    assert cfg.node.ae_title == "ICHNODE" and cfg.node.port == 11112
    assert cfg.selection.quiet_seconds == 10 and cfg.queue.backend == "sqlite"
    assert cfg.models_dir == Path("var/models")


def test_sample_file_is_valid_and_matches_defaults():
    cfg = load_config(REPO / "deploy" / "ich-node.toml", env={})
    assert cfg.model_dump() == NodeConfig().model_dump()
    assert NodeConfig().storage.journal_mb == 256  # the production default: tests shrink their own configs only


def test_env_overrides_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[node]\nport = 104\n[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "h"\nport = 104\n')
    cfg = load_config(f, env={"ICH_NODE__NODE__PORT": "2104", "ICH_NODE__DESTINATIONS__0__PORT": "4242",
                              "ICH_NODE__SECURITY__ALLOWED_CALLERS": '["A@10.0.0.0/8", "B"]',
                              "ICH_NODE__LOGGING__LEVEL": "debug", "UNRELATED": "x"})
    assert cfg.node.port == 2104
    assert cfg.destinations[0].port == 4242 and cfg.destinations[0].ae_title == "PACS"
    assert cfg.logging.level == "DEBUG"
    assert cfg.security.caller_allowed("A", "10.2.3.4")
    assert not cfg.security.caller_allowed("A", "192.168.0.1")
    assert cfg.security.caller_allowed("B", "192.168.0.1")
    assert not cfg.security.caller_allowed("C", "10.2.3.4")


def test_errors_name_source_key_and_reason(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('[node]\nport = 70000\nae_titel = "X"\n[queue]\nbackend = "celery"\n')
    with pytest.raises(ConfigError) as ei:
        load_config(f, env={"ICH_NODE__NODE__AE_TITLE": "WAY_TOO_LONG_AE_TITLE"})
    by_key = {p.key: p for p in ei.value.problems}
    assert by_key["node.port"].source == str(f) and "65535" in by_key["node.port"].message
    assert "unknown key" in by_key["node.ae_titel"].message
    assert by_key["node.ae_title"].source == "ICH_NODE__NODE__AE_TITLE" and "16" in by_key["node.ae_title"].message
    assert "redis_url" in by_key["queue"].message


def test_bad_toml_and_missing_file(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text("[node\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(f, env={})
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_tls_requires_existing_files(tmp_path):
    with pytest.raises(ConfigError, match="cert, key not set"):
        load_config(None, env={"ICH_NODE__SECURITY__TLS__ENABLED": "true"})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(None, env={"ICH_NODE__SECURITY__TLS__ENABLED": "true",
                               "ICH_NODE__SECURITY__TLS__CERT": str(tmp_path / "c.pem"),
                               "ICH_NODE__SECURITY__TLS__KEY": str(tmp_path / "k.pem")})


def test_ae_address_parsing():
    a = AEAddress.parse("PACS@10.0.0.5:104")
    assert (a.ae_title, a.host, a.port) == ("PACS", "10.0.0.5", 104)
    assert str(AEAddress.parse("X@[::1]:11112")) == "X@[::1]:11112"
    for bad in ("PACS@host", "@h:1", "P@h:0", "P@h:70000", "WAY_TOO_LONG_AE_TITLE@h:1"):
        with pytest.raises(ValueError):
            AEAddress.parse(bad)
    d = Destination.from_address("ORTHANC@127.0.0.1:4242")
    assert d.name == "ORTHANC" and d.type == "dimse" and d.address == AEAddress("ORTHANC", "127.0.0.1", 4242)


def test_duplicate_destination_names():
    with pytest.raises(ConfigError, match="unique"):
        NodeConfig.model_validate({}) and load_config(None, env={
            "ICH_NODE__DESTINATIONS": '[{name="a", url="http://x"' + ', type="stowrs"}, {name="a", type="stowrs", url="http://y"}]'})


def test_cli_config_check(tmp_path):
    from dicomnode.cli import app

    r = CliRunner().invoke(app, ["config", "check", str(REPO / "deploy" / "ich-node.toml")])
    assert r.exit_code == 0, r.output
    f = tmp_path / "bad.toml"
    f.write_text("[node]\nport = 'x'\n")
    r = CliRunner().invoke(app, ["config", "check", str(f)])
    assert r.exit_code == 1 and "node.port" in r.output


def test_training_section_validates_the_followup_window():
    from dicomnode.config import ConfigError, load_config

    cfg = load_config(None, env={"ICH_NODE__TRAINING__FOLLOWUP_MAX_HOURS": "48"})
    assert cfg.training.followup_max_hours == 48 and cfg.training.expansion_abs_ml == 6.0
    import pytest

    with pytest.raises(ConfigError, match="followup_min_hours"):
        load_config(None, env={"ICH_NODE__TRAINING__FOLLOWUP_MIN_HOURS": "80"})
