"""Model registry: bundled defaults as version 1, add, atomic promote, rollback, history, watcher."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import pytest

from pipeline.models import BUNDLED_ROOT, ModelMetadata, ModelPaths
from model_dirs import make_model
from training.registry import ModelWatcher, Registry, RegistryError


@pytest.fixture()
def bundled(tmp_path: Path) -> Path:
    root = tmp_path / "bundled"
    for kind in ("segmenter", "classifier"):
        make_model(root / kind / "1", kind, "1", payload=f"bundled-{kind}")
    return root


@pytest.fixture()
def registry(tmp_path: Path, bundled: Path) -> Registry:
    return Registry(tmp_path / "registry", bundled_root=bundled)


def test_bundled_defaults_are_version_1_and_served(registry: Registry, bundled: Path) -> None:
    assert [v.version for v in registry.versions("segmenter")] == ["1"]
    assert registry.promoted() == {"segmenter": "1", "classifier": "1"}
    paths = registry.current_paths()
    assert paths.segmenter == registry.root / "segmenter" / "1"
    assert (paths.classifier / "weights.bin").read_text() == "bundled-classifier"
    # copied in: deleting the code's bundled copy does not change what is served
    (bundled / "segmenter" / "1" / "weights.bin").unlink()
    assert (registry.current_paths().segmenter / "weights.bin").read_text() == "bundled-segmenter"


def test_a_fresh_registry_serves_the_newest_bundled_version(tmp_path: Path, bundled: Path) -> None:
    """The code's default is its highest bundled version (ModelPaths.bundled); older ones are installed too."""
    for v in ("2", "10"):
        make_model(bundled / "classifier" / v, "classifier", v, payload=f"bundled-classifier-{v}")
    reg = Registry(tmp_path / "registry", bundled_root=bundled)
    assert reg.promoted() == {"segmenter": "1", "classifier": "10"}
    assert [v.version for v in reg.versions("classifier")] == ["1", "2", "10"]
    assert (reg.current_paths().classifier / "weights.bin").read_text() == "bundled-classifier-10"


def test_real_bundled_models_when_shipped(tmp_path: Path) -> None:
    shipped = ModelPaths.bundled()
    reg = Registry(tmp_path / "r")
    for kind in ("segmenter", "classifier"):
        src = getattr(shipped, kind)
        if src is None:
            assert reg.promoted()[kind] is None
            continue
        assert reg.get(kind, "1").metadata.kind == kind
        assert BUNDLED_ROOT in src.parents


def test_add_promote_rollback_history(registry: Registry, tmp_path: Path) -> None:
    v2 = registry.add("classifier", make_model(tmp_path / "new", "classifier", payload="v2"), parent_version="1",
                      metrics={"auc": 0.8})
    assert v2.version == "2" and v2.metadata.version == "2" and v2.metadata.parent_version == "1"
    assert registry.promoted()["classifier"] == "1", "adding must not promote"
    registry.promote("classifier", "2", reason="test")
    assert registry.promoted() == {"segmenter": "1", "classifier": "2"}
    assert (registry.current_paths().classifier / "weights.bin").read_text() == "v2"
    with pytest.raises(RegistryError, match="already promoted"):
        registry.promote("classifier", "2")
    back = registry.rollback("classifier", reason="worse on site data")
    assert back.version == "1" and registry.promoted()["classifier"] == "1"
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback("classifier")
    actions = [(e["action"], e["kind"], e["version"]) for e in registry.history("classifier")]
    assert actions == [("add", "classifier", "1"), ("promote", "classifier", "1"), ("add", "classifier", "2"),
                       ("promote", "classifier", "2"), ("rollback", "classifier", "1")]
    state = json.loads((registry.root / "promoted.json").read_text())
    assert state["current"]["classifier"] == "1" and state["generation"] == 4  # 2 bundled + promote + rollback


def test_a_candidate_is_never_served_implicitly(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r", bundled_root=None)
    assert reg.promoted() == {"segmenter": None, "classifier": None}
    assert reg.current_paths() == ModelPaths(None, None)  # classical segmenter, no expansion probability
    reg.add("classifier", make_model(tmp_path / "c", "classifier"))
    assert reg.promoted()["classifier"] is None
    reg.promote("classifier", "1")
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback("classifier")


def test_rollback_walks_back_through_several_promotions(registry: Registry, tmp_path: Path) -> None:
    for i in (2, 3):
        registry.add("segmenter", make_model(tmp_path / f"m{i}", "segmenter", payload=str(i)))
        registry.promote("segmenter", str(i))
    assert registry.rollback("segmenter").version == "2"
    assert registry.rollback("segmenter").version == "1"


def test_precise_errors(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no segmenter version 7 .*known: 1"):
        registry.promote("segmenter", "7")
    with pytest.raises(RegistryError, match="positive integer"):
        registry.get("segmenter", "../1")
    with pytest.raises(RegistryError, match="unknown model kind"):
        registry.versions("detector")
    with pytest.raises(RegistryError, match="holds a 'segmenter' model"):
        registry.add("classifier", make_model(tmp_path / "s", "segmenter"))
    with pytest.raises(FileNotFoundError, match="metadata.json missing"):
        registry.add("classifier", tmp_path)


def test_stale_staging_folders_are_swept(registry: Registry) -> None:
    import os

    old = registry.staging_dir("segmenter")
    os.utime(old, (time.time() - 3 * 86400,) * 2)
    fresh = registry.staging_dir("segmenter")
    assert not old.exists() and fresh.exists()
    assert [v.version for v in registry.versions("segmenter")] == ["1"]


def test_watcher_sees_promotion_with_one_stat(registry: Registry, tmp_path: Path) -> None:
    watcher = ModelWatcher(registry)
    assert not watcher.poll()
    registry.add("segmenter", make_model(tmp_path / "n", "segmenter"))
    assert not watcher.poll(), "an unpromoted version must not reload the worker"
    registry.promote("segmenter", "2")
    assert watcher.poll() and watcher.paths.segmenter.name == "2"
    assert not watcher.poll()
    registry.rollback("segmenter")
    assert watcher.poll() and watcher.paths.segmenter.name == "1"


def _promote_many(root: str, bundled: str, kind: str, n: int) -> None:
    reg = Registry(root, bundled_root=bundled)
    for _ in range(n):
        reg.promote(kind, "2")
        reg.rollback(kind)


def test_concurrent_promotions_never_tear_promoted_json(registry: Registry, bundled: Path, tmp_path: Path) -> None:
    for kind in ("segmenter", "classifier"):
        registry.add(kind, make_model(tmp_path / kind, kind))
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_promote_many, args=(str(registry.root), str(bundled), k, 15))
             for k in ("segmenter", "classifier")]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs):
        assert set(registry.promoted().values()) <= {"1", "2"}  # a torn file would raise
        reads += 1
        time.sleep(0.001)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert registry.promoted() == {"segmenter": "1", "classifier": "1"}
    assert json.loads((registry.root / "promoted.json").read_text())["generation"] == 62
    assert reads > 0


def test_models_cli_list_show_promote_rollback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from dicomnode.cli import app

    monkeypatch.setenv("ICH_NODE__NODE__DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("COLUMNS", "250")
    reg = Registry(tmp_path / "var" / "models")
    for kind in ("segmenter", "classifier"):
        for i in range(2):  # with or without shipped defaults, the newest version is not the served one
            reg.add(kind, make_model(tmp_path / f"{kind}{i}", kind, payload="new"), metrics={"validation": {"auc": 0.81}})
    run = CliRunner().invoke
    out = run(app, ["models", "list", "--kind", "classifier"])
    assert out.exit_code == 0, out.output
    assert "classifier" in out.output and "auc 0.810" in out.output
    top = max(int(v.version) for v in reg.versions("classifier"))
    if reg.promoted()["classifier"] is None:  # no shipped default in this checkout: serve version 1 first
        assert run(app, ["models", "promote", "1", "--kind", "classifier"]).exit_code == 0
    out = run(app, ["models", "promote", str(top), "--kind", "classifier", "--reason", "site review"])
    assert out.exit_code == 0 and f"version {top} promoted" in out.output
    assert reg.promoted()["classifier"] == str(top)
    out = run(app, ["models", "show", f"classifier:{top}"])
    assert out.exit_code == 0 and "served" in out.output and "site review" in out.output
    out = run(app, ["models", "rollback", "--kind", "classifier"])
    assert out.exit_code == 0 and f"from version {top}" in out.output
    assert reg.promoted()["classifier"] != str(top)
    out = run(app, ["models", "rollback", "--kind", "classifier"])
    assert out.exit_code == 1 and "nothing to roll back to" in out.output
    out = run(app, ["models", "promote", "99", "--kind", "segmenter"])
    assert out.exit_code == 1 and "no segmenter version 99" in out.output
    out = run(app, ["models", "promote", "2"])
    assert out.exit_code == 2 and "--kind" in out.output


def test_models_cli_add_installs_a_newer_model_without_serving_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A site that already serves version 1 takes a newer release's model with `models add`: the next free
    number (its own retrain may hold "2"), provenance recorded, served only after `promote`."""
    from typer.testing import CliRunner

    from dicomnode.cli import app

    monkeypatch.setenv("ICH_NODE__NODE__DATA_DIR", str(tmp_path / "var"))
    reg = Registry(tmp_path / "var" / "models")
    reg.add("segmenter", make_model(tmp_path / "site-retrain", "segmenter", payload="site"))
    served = reg.promoted()["segmenter"]
    release = make_model(tmp_path / "release" / "2", "segmenter", "2", payload="release")
    run = CliRunner().invoke
    out = run(app, ["models", "add", str(release)])
    assert out.exit_code == 0, out.output
    new = str(max(int(v.version) for v in reg.versions("segmenter")))
    assert f"added as version {new}" in out.output and "not served" in out.output
    assert reg.promoted()["segmenter"] == served
    v = reg.get("segmenter", new)
    assert (v.path / "weights.bin").read_text() == "release" and v.metadata.version == new
    assert v.metadata.extra["added_path"] == str(release.resolve())
    assert run(app, ["models", "promote", f"segmenter:{new}"]).exit_code == 0
    assert reg.promoted()["segmenter"] == new
    (tmp_path / "empty").mkdir()
    out = run(app, ["models", "add", str(tmp_path / "empty")])
    assert out.exit_code == 1 and "metadata.json" in out.output
