"""deploy/: what can be checked without docker or a systemd host — the compose file parses and everything
it references exists, the configs validate, the units pass ``systemd-analyze verify``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import unavailable

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
EXE = Path(sys.executable).with_name("ich-node")


def test_compose_parses_and_references_exist():
    import yaml
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"node", "worker", "redis", "orthanc"} <= set(services)
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
        for vol in svc.get("volumes") or []:
            source = vol.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
        for dep in svc.get("depends_on") or {}:
            assert dep in services, f"{name} depends on unknown {dep}"
    assert services["node"]["command"][:2] == ["ich-node", "serve"]
    assert services["worker"]["command"][:2] == ["ich-node", "worker"]
    assert "--appendonly" in services["redis"]["command"]
    # the ports the compose file publishes are the ones its config uses
    import tomllib

    cfg = tomllib.loads((DEPLOY / "compose" / "ich-node.toml").read_text())
    assert f"{cfg['node']['port']}:{cfg['node']['port']}" in services["node"]["ports"]
    assert cfg["queue"]["redis_url"].startswith("redis://redis:")
    assert cfg["destinations"][0]["host"] in services


def test_dockerfile_copies_what_exists():
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), src


@pytest.mark.parametrize("path", ["ich-node.toml", "ich-node.celery.toml", "compose/ich-node.toml"])
def test_configs_validate(path):
    r = subprocess.run([str(EXE), "config", "check", str(DEPLOY / path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("unit", ["ich-node.service", "ich-node-worker@.service"])
def test_systemd_units_verify(unit, tmp_path):
    text = (DEPLOY / "systemd" / unit).read_text()
    commands = re.findall(r"^Exec\w+=(\S+) (\w+)", text, re.M)
    assert commands and all(c[0] == "/opt/ich-node/.venv/bin/ich-node" for c in commands)
    assert {c[1] for c in commands} <= {"serve", "worker", "config"}
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        unavailable("systemd-analyze not installed")
    local = tmp_path / unit.replace("@.", "@0.")
    local.write_text(text.replace("/opt/ich-node/.venv/bin/ich-node", str(EXE)))
    r = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines()
                if str(local.name) in ln and "Failed to" not in ln and "not executable" not in ln]
    assert not problems, problems


def test_operations_guide_covers_the_issue():
    text = (DEPLOY / "OPERATIONS.md").read_text()
    for topic in ("DicomModalities", "TLS", ".backup", "journalctl", "ich-node models promote", "NFS",
                  "ich-node-worker@"):
        assert topic in text, topic
