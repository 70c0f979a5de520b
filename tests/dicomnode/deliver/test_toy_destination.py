"""A destination type from outside the node, end to end: defined in this test module, registered through
``dicomnode.deliver.register``, configured in a TOML file read by ``dicomnode.config.load_config``, built
and sent to as the node does, and asked by the heartbeat for a study's series — no node code knows it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal, Sequence

import pydicom
import pytest
from pydantic import Field

from dicomnode.config import ConfigError, Destination, load_config
from dicomnode.deliver import TYPES, DestinationConfig, OnDelivered, build, register
from dicomnode.deliver.base import Destination as Sender
from dicomnode.deliver.dispatch import Dispatcher
from dicomnode.deliver.ledger import Ledger
from dicomnode.observe.heartbeat import Heartbeat, synthetic_head_ct
from dicomnode.queue import JobState
from dicomnode.service import Node
from tests.conftest import TEST_JOURNAL_MB, wait_for


class ToyConfig(DestinationConfig):
    """``type = "toy"``: a "peer" that is a folder (its own key ``folder``; the common keys come with the base)."""

    type: Literal["toy"]
    folder: Path
    max_files: int = Field(100, ge=1)  # a toy limit, to see the type's own validation at work


class ToyDestination(Sender):
    Config = ToyConfig

    def send(self, files: Sequence[Path], on_delivered: OnDelivered) -> None:
        self.config.folder.mkdir(parents=True, exist_ok=True)
        for path in files:
            shutil.copy(path, self.config.folder / f"{len(list(self.config.folder.iterdir())):03d}-{path.name}")
            on_delivered(path)

    def find_series(self, study_uid: str, timeout_s: float | None = None) -> list[str]:
        held = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(self.config.folder.glob("*.dcm"))]
        return [str(ds.Modality) for ds in held if ds.StudyInstanceUID == study_uid]


@pytest.fixture
def toy(monkeypatch):
    """The toy type registered through the public API, for this test only."""
    monkeypatch.setattr(TYPES, "entries", dict(TYPES.entries))
    register("toy", f"{__name__}:ToyDestination")
    return "toy"


def toml(tmp_path: Path, node: str = "", extra: str = "") -> Path:
    f = tmp_path / "node.toml"
    f.write_text(f'[node]\ndata_dir = "{tmp_path / "var"}"\n{node}\n'
                 f'[[destinations]]\nname = "toybox"\ntype = "toy"\nfolder = "{tmp_path / "toybox"}"\n'
                 f'send_overlay = false\n{extra}\n')
    return f


def test_toy_type_is_configured_in_toml_and_gets_a_result(tmp_path, toy):
    cfg = load_config(toml(tmp_path), env={"ICH_NODE__DESTINATIONS__0__MAX_FILES": "5"})
    [entry] = cfg.destinations
    assert isinstance(entry, ToyConfig) and entry.folder == tmp_path / "toybox" and entry.max_files == 5
    assert entry.retry.probe_interval_s == 15  # the keys every type has come with DestinationConfig
    assert cfg.model_dump()["destinations"][0]["folder"] == tmp_path / "toybox"

    study, files = synthetic_head_ct(tmp_path / "result" / "sc", slices=3, size=32)
    result = tmp_path / "result"
    shutil.copy(files[0], result / "seg.dcm")
    shutil.copy(files[1], result / "sr.dcm")
    (result / "result.json").write_text('{"outputs": {"seg": ["seg.dcm"], "sr": ["sr.dcm"], "sc": ["sc/hb003.dcm"]}}')
    senders = [build(d, calling_ae_title=cfg.node.ae_title) for d in cfg.destinations]  # as the node builds them
    assert isinstance(senders[0], ToyDestination)
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    assert Dispatcher(senders, ledger).deliver("1", result) == []
    assert sorted(p.name for p in (tmp_path / "toybox").iterdir()) == ["000-seg.dcm", "001-sr.dcm"]  # no overlay
    assert sorted(ledger.delivered("1", "toybox")) == ["seg.dcm", "sr.dcm"]
    assert Dispatcher(senders, ledger).deliver("1", result) == []  # delivered once
    assert len(list((tmp_path / "toybox").iterdir())) == 2
    cfg.node.data_dir = tmp_path  # the heartbeat asks the toy like any destination
    assert Heartbeat(cfg)._lookup(study) == ["CT", "CT"]


def test_toy_keys_are_validated_by_the_toy_config(tmp_path, toy):
    with pytest.raises(ConfigError) as err:
        load_config(toml(tmp_path, extra="max_files = 0\ncolour = \"red\"\nport = 104"), env={})
    problems = {p.key: p.message for p in err.value.problems}
    assert set(problems) == {"destinations.0.max_files", "destinations.0.colour", "destinations.0.port"}
    assert "greater than or equal to 1" in problems["destinations.0.max_files"]
    assert "unknown key" in problems["destinations.0.colour"]  # a DIMSE key is no toy key either
    assert Destination(name="t", type="toy", folder=str(tmp_path)).folder == tmp_path


def test_unregistered_type_is_an_error_naming_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"destinations\.0\.type: unknown destination type 'toy'; known: dimse"):
        load_config(toml(tmp_path), env={})


def test_a_node_delivers_through_the_toy_type(tmp_path, free_port, fake_module, toy):
    """The wired node (SCP → selection → queue → analysis → sender) with the toy as its only destination."""
    port = free_port()
    node_keys = (f'host = "127.0.0.1"\nport = {port}\n[storage]\nmin_free_bytes = 0\njournal_mb = {TEST_JOURNAL_MB}\n'
                 '[selection]\nquiet_seconds = 1\n[scheduler]\nsweep_seconds = 0.3\nretry_seconds = 0.5\n'
                 '[worker]\nanalyzer = "fake_node_analyzer:FakeAnalyzer"\n[metrics]\nenabled = false\n')
    cfg = load_config(toml(tmp_path, node=node_keys), env={})
    study, files = synthetic_head_ct(tmp_path / "study")
    node = Node(cfg).start()
    try:
        scanner = build(Destination(name="scanner", ae_title=cfg.node.ae_title, host="127.0.0.1", port=port))
        scanner.send(files, lambda _p: None)
        job = wait_for(lambda: [j for j in node.queue.list() if j.state is JobState.SENT], 60, what="job sent")[0]
        assert job.payload["study_uid"] == study
        held = sorted(p.name for p in (tmp_path / "toybox").iterdir())
        assert held == ["000-seg.dcm", "001-sr.dcm"]
        assert build(cfg.destinations[0]).find_series(study) == ["CT", "CT"]  # the fake analysis copies the CT
    finally:
        node.stop()


def test_an_installed_package_registers_the_toy_type_for_every_process(tmp_path):
    """``register`` reaches one process; an entry point (group ``ich_node.destinations``) of an installed
    package reaches all: a separate ``ich-node config check`` knows the toy type, validates its own keys
    with the toy's Config, and a package cannot take over a built-in name."""
    import os
    import subprocess
    import sys

    site = tmp_path / "site"
    dist = site / "ich_toy_site-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ich-toy-site\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[ich_node.destinations]\n"
        "toy = tests.dicomnode.deliver.test_toy_destination:ToyDestination\n"
        "dimse = not_the_real_one:Destination\n")  # a built-in name: ignored, with a warning
    repo = Path(__file__).resolve().parents[3]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICH_NODE")}
    ich_node = shutil.which("ich-node", path=str(Path(sys.executable).parent))
    assert ich_node, "the ich-node command is installed with the package"

    def check(config: Path, installed: bool) -> subprocess.CompletedProcess:
        path = [str(site)] if installed else []
        return subprocess.run([ich_node, "config", "check", str(config), "--show"],
                              cwd=repo, capture_output=True, text=True, timeout=120,
                              env={**env, "PYTHONPATH": os.pathsep.join([*path, str(repo)])})

    good = toml(tmp_path)
    without = check(good, installed=False)
    assert without.returncode == 1 and "unknown destination type 'toy'" in without.stderr
    r = check(good, installed=True)
    assert r.returncode == 0, r.stderr
    assert '"type": "toy"' in r.stdout and '"max_files": 100' in r.stdout  # the toy's own Config filled it in
    bad = toml(tmp_path, extra="max_files = 0")
    r = check(bad, installed=True)
    assert r.returncode == 1 and "destinations.0.max_files" in r.stderr
    dimse = tmp_path / "dimse.toml"
    dimse.write_text('[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 4242\n')
    r = check(dimse, installed=True)
    assert r.returncode == 0 and '"type": "dimse"' in r.stdout, r.stderr
    assert "plug-ins ignored, the names are taken: dimse" in r.stderr  # the built-in stayed, and said so
