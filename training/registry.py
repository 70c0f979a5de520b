"""Versioned model bundles, and which version of each kind the node serves.

Layout of a registry directory (config ``models.registry_dir``, default ``<data_dir>/models``)::

    <root>/segmenter/1/metadata.json ...   one directory per version (a ``pipeline.models`` model dir)
    <root>/classifier/1/...
    <root>/promoted.json                   {"current": {kind: version}, "previous": {kind: [...]}, "generation": n}
    <root>/history.jsonl                   one line per add / promote / rollback
    <root>/.lock                           flock for read-modify-write of the two files above

The bundled defaults (``models/<kind>/<n>/`` in the repository) are copied in while a kind has no
version yet, so they are version 1 of each and a later code update never
silently changes what a site serves. ``promoted.json`` is replaced by write-temp-fsync-rename, so a reader
(the worker) sees either the old or the new state, never half of one. Version directories are immutable
once added: a new model is staged in a hidden directory and renamed into place.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from pipeline.models import BUNDLED_ROOT, KINDS, ModelMetadata, ModelPaths

from ichutil.files import atomic_write_text  # noqa: F401 - training's writers use it from here

PROMOTED = "promoted.json"
HISTORY = "history.jsonl"


class RegistryError(ValueError):
    """A registry operation that cannot be done as asked (unknown version, nothing to roll back to...)."""


@dataclass(frozen=True)
class ModelVersion:
    kind: str
    version: str
    path: Path
    metadata: ModelMetadata


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise RegistryError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")
    return kind


def check_version(version: str | int) -> str:
    text = str(version).strip()
    if not text.isdigit() or int(text) < 1:
        raise RegistryError(f"model version must be a positive integer, got {version!r}")
    return str(int(text))


class Registry:
    """A registry directory; cheap to construct, safe to share between processes."""

    def __init__(self, root: Path | str, bundled_root: Path | str | None = BUNDLED_ROOT) -> None:
        self.root = Path(root)
        self.bundled_root = Path(bundled_root) if bundled_root is not None else None

    # ------------------------------------------------------------------ locking and state files
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _read_state(self) -> dict:
        path = self.root / PROMOTED
        if not path.is_file():
            return {"current": {}, "previous": {}, "generation": 0, "updated": None}
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{path} is not valid JSON ({exc}); restore it from {HISTORY}") from exc
        state.setdefault("current", {})
        state.setdefault("previous", {})
        state.setdefault("generation", 0)
        return state

    def _write_state(self, state: dict) -> None:
        state["generation"] = int(state.get("generation", 0)) + 1
        state["updated"] = now_iso()
        atomic_write_text(self.root / PROMOTED, json.dumps(state, indent=2, sort_keys=True) + "\n")

    def _log(self, event: dict) -> None:
        line = json.dumps({"time": now_iso(), **event}, sort_keys=True)
        with open(self.root / HISTORY, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    # ------------------------------------------------------------------ versions
    def _kind_dir(self, kind: str) -> Path:
        return self.root / check_kind(kind)

    def _import_bundled(self, kind: str) -> None:
        """First use of a kind: copy the bundled default versions in (under the lock)."""
        kind_dir = self._kind_dir(kind)
        if kind_dir.is_dir() and any(p.name.isdigit() for p in kind_dir.iterdir()):
            return
        kind_dir.mkdir(parents=True, exist_ok=True)
        src_root = self.bundled_root / kind if self.bundled_root else None
        if src_root is None or not src_root.is_dir():
            return
        imported = []
        for src in sorted(src_root.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1):
            if not (src.name.isdigit() and (src / "metadata.json").is_file()):
                continue
            staging = kind_dir / f".staging-bundled-{src.name}"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(src, staging)  # a copy, not links: editing the repo's files never reaches a site
            os.replace(staging, kind_dir / src.name)
            self._log({"action": "add", "kind": kind, "version": src.name, "source": "bundled"})
            imported.append(src.name)
        state = self._read_state()
        if imported and not state["current"].get(kind):
            # The newest bundled version is the code's default (as ModelPaths.bundled); it is served until
            # something else is promoted, the older bundled ones stay installed for an admin to choose.
            state["current"][kind] = imported[-1]
            self._write_state(state)
            self._log({"action": "promote", "kind": kind, "version": imported[-1], "previous": None,
                       "reason": "bundled default", "actor": "registry", "generation": state["generation"]})

    def _ensure(self, kind: str) -> Path:
        kind_dir = self._kind_dir(kind)
        if not kind_dir.is_dir() or not any(p.name.isdigit() for p in kind_dir.iterdir()):
            with self._locked():
                self._import_bundled(kind)
        return kind_dir

    def versions(self, kind: str) -> list[ModelVersion]:
        """All versions of ``kind``, oldest first."""
        kind_dir = self._ensure(kind)
        out = []
        for path in kind_dir.iterdir():
            if path.name.isdigit() and (path / "metadata.json").is_file():
                out.append(ModelVersion(kind, path.name, path, ModelMetadata.read(path)))
        return sorted(out, key=lambda v: int(v.version))

    def get(self, kind: str, version: str | int) -> ModelVersion:
        version = check_version(version)
        path = self._ensure(kind) / version
        if not (path / "metadata.json").is_file():
            known = ", ".join(v.version for v in self.versions(kind)) or "none"
            raise RegistryError(f"no {kind} version {version} in {self.root} (known: {known})")
        return ModelVersion(kind, version, path, ModelMetadata.read(path))

    def staging_dir(self, kind: str) -> Path:
        """A fresh hidden directory inside the registry for a trainer to write a model into.

        Same file system as the versions, so ``add(..., move=True)`` is a rename.
        """
        kind_dir = self._ensure(kind)
        self._sweep_staging(kind_dir)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=kind_dir))

    @staticmethod
    def _sweep_staging(kind_dir: Path, max_age_s: float = 2 * 86400) -> None:
        """Remove staging folders left by a killed trainer (older than any training run)."""
        import time

        for p in kind_dir.glob(".staging-*"):
            try:
                if time.time() - p.stat().st_mtime > max_age_s:
                    shutil.rmtree(p, ignore_errors=True)
            except FileNotFoundError:
                pass

    def add(
        self,
        kind: str,
        model_dir: Path | str,
        *,
        move: bool = False,
        parent_version: str | None = None,
        training_data: dict | None = None,
        metrics: dict | None = None,
        extra: dict | None = None,
    ) -> ModelVersion:
        """Register ``model_dir`` as the next version of ``kind`` (not promoted).

        The directory must already be a model directory (``metadata.json``) of the same kind, as the
        trainers write them; the registry sets ``version`` (and optionally parent, data, metrics).
        """
        model_dir = Path(model_dir)
        meta = ModelMetadata.read(model_dir)
        if meta.kind != kind:
            raise RegistryError(f"{model_dir} holds a {meta.kind!r} model, not a {kind!r} model")
        kind_dir = self._ensure(kind)
        with self._locked():
            taken = [int(p.name) for p in kind_dir.iterdir() if p.name.isdigit()]
            version = str(max(taken, default=0) + 1)
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=kind_dir))
            try:
                if move:
                    staging.rmdir()
                    shutil.move(str(model_dir), staging)
                else:
                    staging.rmdir()
                    shutil.copytree(model_dir, staging)
                merged_extra = {**(meta.extra or {}), **(extra or {})} or None
                new_meta = replace(
                    meta,
                    version=version,
                    parent_version=parent_version if parent_version is not None else meta.parent_version,
                    training_data=training_data if training_data is not None else meta.training_data,
                    metrics=metrics if metrics is not None else meta.metrics,
                    extra=merged_extra,
                )
                new_meta.write(staging)
                os.replace(staging, kind_dir / version)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self._log({"action": "add", "kind": kind, "version": version, "parent": new_meta.parent_version,
                       "source": (new_meta.training_data or {}).get("source")})
        return self.get(kind, version)

    # ------------------------------------------------------------------ promotion
    def promoted(self) -> dict[str, str | None]:
        """The served version of each kind (the bundled default until another is promoted); None = none installed.

        A version that was only added (a retrain candidate) is never served implicitly.
        """
        for kind in KINDS:
            self._ensure(kind)  # first use imports and serves the bundled default
        state = self._read_state()
        return {kind: state["current"].get(kind) for kind in KINDS}

    def promote(self, kind: str, version: str | int, *, reason: str = "", actor: str = "cli") -> ModelVersion:
        """Make ``version`` the served one; the old one is kept for ``rollback``."""
        target = self.get(kind, version)
        with self._locked():
            state = self._read_state()
            current = state["current"].get(kind)
            if current == target.version:
                raise RegistryError(f"{kind} version {target.version} is already promoted")
            if current is not None:
                state["previous"].setdefault(kind, []).append(current)
            state["current"][kind] = target.version
            self._write_state(state)
            self._log({"action": "promote", "kind": kind, "version": target.version, "previous": current,
                       "reason": reason, "actor": actor, "generation": state["generation"]})
        return target

    def rollback(self, kind: str, *, reason: str = "", actor: str = "cli") -> ModelVersion:
        """Serve the previously promoted version of ``kind`` again."""
        check_kind(kind)
        with self._locked():
            state = self._read_state()
            stack = state["previous"].get(kind) or []
            if not stack:
                raise RegistryError(f"nothing to roll back to: {kind} has no earlier promoted version")
            current = state["current"].get(kind)
            back = stack.pop()
            self.get(kind, back)  # still there?
            state["current"][kind] = back
            self._write_state(state)
            self._log({"action": "rollback", "kind": kind, "version": back, "previous": current,
                       "reason": reason, "actor": actor, "generation": state["generation"]})
        return self.get(kind, back)

    def history(self, kind: str | None = None) -> list[dict]:
        path = self.root / HISTORY
        if not path.is_file():
            return []
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [e for e in events if kind is None or e.get("kind") == kind]

    # ------------------------------------------------------------------ what the pipeline uses
    def current_paths(self) -> ModelPaths:
        """The model directories the pipeline should load now."""
        promoted = self.promoted()
        return ModelPaths(**{
            kind: (self.get(kind, version).path if version is not None else None)
            for kind, version in promoted.items()
        })

    def generation(self) -> tuple[int, int]:
        """Cheap change marker (one ``stat``): compare between jobs, reload models when it differs."""
        try:
            st = os.stat(self.root / PROMOTED)
        except FileNotFoundError:
            return (0, 0)
        return (st.st_ino, st.st_mtime_ns)


class ModelWatcher:
    """What a worker holds: the current ``ModelPaths`` and whether they changed since the last look.

    Usage between jobs (never during one)::

        watcher = ModelWatcher(Registry(settings.models.registry_dir))
        analyzer = Analyzer(watcher.paths)
        ...
        if watcher.poll():                # one stat() when nothing changed
            analyzer = Analyzer(watcher.paths)
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._generation = registry.generation()
        self.paths = registry.current_paths()

    def poll(self) -> bool:
        generation = self.registry.generation()
        if generation == self._generation:
            return False
        paths = self.registry.current_paths()
        self._generation = generation
        changed = paths != self.paths
        self.paths = paths
        return changed
