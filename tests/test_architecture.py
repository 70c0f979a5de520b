"""The layers hold: import-linter's contracts in pyproject.toml ([tool.importlinter])."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_no_layer_imports_a_layer_above_it():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is a test dependency (pyproject [test])"
    r = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_a_back_edge_would_be_caught(tmp_path):
    """The contract is not vacuous: a pipeline module importing the node breaks it."""
    cfg = tmp_path / "contracts.toml"
    cfg.write_text((REPO / "pyproject.toml").read_text())
    probe = REPO / "pipeline" / "_layer_probe.py"
    probe.write_text("import dicomnode.config  # noqa: F401\n")
    try:
        exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
        r = subprocess.run([exe, "--config", str(cfg), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    finally:
        probe.unlink()
    assert r.returncode != 0 and "pipeline._layer_probe -> dicomnode.config" in r.stdout


def test_no_module_is_in_an_import_cycle():
    """No two modules reach each other, function-level imports included (grimp is import-linter's graph)."""
    import grimp

    graph = grimp.build_graph("dicomnode", "training", "pipeline", "ichutil", include_external_packages=False)
    cycles = sorted({tuple(sorted((m, imported))) for m in graph.modules
                     for imported in graph.find_modules_directly_imported_by(m)
                     if graph.chain_exists(importer=imported, imported=m)})
    assert cycles == []


def test_a_missing_tool_fails_under_ci_and_skips_on_a_developers_machine(monkeypatch):
    """CI (``CI`` set) must not go green on tests that did not run for want of a tool or data set."""
    from tests.conftest import require_tool

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI: no-such-tool-ich not installed"):
        require_tool("no-such-tool-ich")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require_tool("no-such-tool-ich")


def test_docs_architecture_names_every_room_and_the_enforced_layers():
    """docs/architecture.md cannot drift: its layer line is the import-linter contract, and its table
    names exactly the packages (and dicomnode's top-level modules) that exist."""
    import re
    import tomllib

    doc = (REPO / "docs" / "architecture.md").read_text()
    contract = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    assert f"layers: {' -> '.join(contract['layers'])}" in doc
    rows = dict(re.findall(r"^\| `([\w/.]+)` \| (.+?) \|$", doc, re.M))
    on_disk = {f"{p.parent.relative_to(REPO).as_posix()}/" for root in ("dicomnode", "training", "pipeline", "ichutil")
               for p in (REPO / root).rglob("__init__.py")}
    on_disk |= {f"dicomnode/{p.name}" for p in (REPO / "dicomnode").glob("*.py") if p.name != "__init__.py"}
    assert set(rows) == on_disk, f"missing: {sorted(on_disk - set(rows))}; gone: {sorted(set(rows) - on_disk)}"
    assert all(len(job.split()) >= 4 for job in rows.values())
