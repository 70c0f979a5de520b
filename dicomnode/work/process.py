"""Runs analyses away from the SCP: a long-lived child process per worker that loads the models once.

Why a child process and not a thread: the analysis holds the GIL for long stretches (NumPy, TF),
may leak or fragment memory, and can hang on a hostile series. In a child it can be killed at the
per-job timeout and restarted after ``max_jobs_per_process`` jobs, which returns its memory to the
system, while the SCP in the parent keeps answering. ``spawn`` (not fork) because the parent has
threads and open SQLite handles.

Flow of one job: ``Worker`` claims it (lease) → ``AnalysisProcess.analyze`` in the child writes
seg.dcm / sr.dcm / sc/*.dcm / result.json into the job's directory (named from hashes, never UIDs)
→ ``mark_encoded`` → ``on_encoded`` (the sender and the index are told). The lease is renewed while
the child works, so a worker that dies (kill -9) leaves a job that is claimed again.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..plugins import load_target

log = logging.getLogger(__name__)

DEFAULT_ANALYZER = "pipeline.analyze:Analyzer"


class AnalysisFailed(Exception):
    """The analysis of one job did not produce results; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class AnalysisTimeout(AnalysisFailed):
    pass


class AnalysisStopped(AnalysisFailed):
    """The child was stopped by SIGTERM/SIGINT (the node's process group is shutting down, or an admin):
    not a fault of the models, so callers report it below error level."""


@dataclass(frozen=True)
class ModelSource:
    """Where the child finds its models: the registry's promoted versions, else the bundled ones."""

    registry_dir: str | None = None
    bundled_fallback: bool = True


def _model_paths(source: ModelSource):
    """The ModelPaths to load and a watcher to notice promotions (None when there is no registry)."""
    from pipeline.models import BUNDLED_ROOT, ModelPaths

    if source.registry_dir:
        try:
            from training.registry import ModelWatcher, Registry

            watcher = ModelWatcher(Registry(source.registry_dir,
                                            bundled_root=BUNDLED_ROOT if source.bundled_fallback else None))
            return watcher.paths, watcher
        except ImportError:  # a node installed without training/
            pass
    return (ModelPaths.bundled() if source.bundled_fallback else ModelPaths()), None


def predecessor_files(result_dir: str | Path) -> list[str]:
    """The DICOM objects of an earlier result (SR, SEG, overlays) that a re-analysis replaces and references."""
    import json

    root = Path(result_dir)
    try:
        outputs = json.loads((root / "result.json").read_text()).get("outputs") or {}
    except (OSError, ValueError):
        return []
    kinds = sorted(outputs, key=lambda k: (not k.startswith("sr"), k != "seg", k))  # SRs (every profile), SEG, rest
    files = [root / rel for kind in kinds for rel in outputs[kind] or [] if str(rel).endswith(".dcm")]
    return [str(f) for f in files if f.is_file()]


def _analyze_kwargs(analyzer: Any, request: dict) -> dict:
    """Optional arguments, passed only when given and when this analyzer accepts them."""
    import inspect

    params = inspect.signature(analyzer.analyze).parameters
    kwargs: dict[str, Any] = {}
    if request.get("predecessor"):
        kwargs["predecessor"] = predecessor_files(request["predecessor"])
    if request.get("cannot_assess") and "cannot_assess" in params:
        from pipeline.result import CannotAssess

        kwargs["cannot_assess"] = CannotAssess(request["cannot_assess"]["code"], request["cannot_assess"]["message"])
    return kwargs


def with_device(build: Callable, installation_id: str | None) -> Callable:
    """``build(paths)``, naming this installation as the outputs' device when the analyzer accepts one."""
    import inspect

    try:
        accepts = "device" in inspect.signature(build).parameters
    except (TypeError, ValueError):
        accepts = False
    if installation_id is None or not accepts:
        return build
    from pipeline.encode.common import DeviceInfo

    return lambda paths: build(paths, device=DeviceInfo(installation_id=installation_id))


def die_with_parent() -> None:
    """Linux: SIGKILL this child when the node dies (kill -9), so no orphan keeps writing outputs."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def bound_threads(threads: int) -> None:
    """An analysis process's numpy/BLAS/TensorFlow thread pools (set before any of them loads; an admin's
    own values win) and TF's C++ log kept to errors."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ.setdefault(var, str(threads))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _child_main(conn, analyzer_target: str, source: ModelSource, threads: int, parent_pid: int | None = None,
                installation_id: str | None = None) -> None:
    """Child process: load the models once, then answer requests until told to stop (``None``)."""
    die_with_parent()
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl took effect
        return
    bound_threads(threads)
    try:
        build = with_device(load_target(analyzer_target), installation_id)
        paths, watcher = _model_paths(source)
        analyzer = build(paths)
        warmed = _warm(analyzer)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which logs it
        conn.send({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    conn.send({"ready": True, "models": {k: str(v) if v else None for k, v in vars(paths).items()}, "warm_s": warmed})
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        reloaded = False
        if watcher is not None and watcher.poll():  # a promotion: reload between jobs, never during one
            analyzer = build(watcher.paths)
            _warm(analyzer)
            reloaded = True
        if request.get("refresh"):  # the parent, idle: load a promoted model now, not with the next study
            conn.send({"ok": True, "reloaded": reloaded})
            continue
        try:
            result = analyzer.analyze(request["files"], request["out_dir"], **_analyze_kwargs(analyzer, request))
            conn.send({"ok": True, "result": result.to_json()})
        except BaseException as exc:  # noqa: BLE001
            retryable = not isinstance(exc, (ValueError, TypeError, FileNotFoundError))
            conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}", "retryable": retryable})
        finally:
            gc.collect()


def _warm(analyzer: Any) -> dict[str, float] | None:
    """One inference on a synthetic head (``Analyzer.warm``) so no study pays for lazy set-up."""
    warm = getattr(analyzer, "warm", None)
    return warm() if callable(warm) else None


class AnalysisProcess:
    """Parent-side handle on one long-lived analysis child."""

    def __init__(self, analyzer: str = DEFAULT_ANALYZER, models: ModelSource | None = None, *,
                 max_jobs: int = 50, start_timeout_s: float = 600.0, threads: int = 2,
                 installation_id: str | None = None) -> None:
        self.analyzer = analyzer
        self.installation_id = installation_id  # the SRs' Device Observer (Pseudonymizer.installation_id)
        self.models = models or ModelSource()
        self.max_jobs = max_jobs
        self.start_timeout_s = start_timeout_s
        self.threads = threads
        self._proc: mp.process.BaseProcess | None = None
        self._conn = None
        self._jobs = 0
        self.model_info: dict[str, Any] = {}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    def start(self) -> None:
        """Start the child and wait until its models are loaded (not counted in any job's timeout)."""
        if self._proc is not None and self._proc.is_alive():
            return
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child_main, args=(child, self.analyzer, self.models, self.threads, os.getpid(), self.installation_id),
                           name="ich-analysis", daemon=True)
        proc.start()
        child.close()
        if not parent.poll(self.start_timeout_s):
            proc.kill()
            raise AnalysisFailed(f"analysis process did not load its models within {self.start_timeout_s:.0f} s")
        try:
            hello = parent.recv()
        except EOFError:
            proc.join(5)
            if proc.exitcode in (-signal.SIGTERM, -signal.SIGINT):
                raise AnalysisStopped(f"analysis process stopped by {signal.Signals(-proc.exitcode).name} "
                                      f"while loading models") from None
            raise AnalysisFailed(f"analysis process died while loading models (exit code {proc.exitcode})") from None
        if not hello.get("ready"):
            proc.join(5)
            raise AnalysisFailed(f"analysis process cannot load its models: {hello.get('error')}", retryable=False)
        self._proc, self._conn, self._jobs = proc, parent, 0
        self.model_info = hello.get("models", {})
        log.info("analysis process %s ready (models %s, warmed in %s)", proc.pid, self.model_info, hello.get("warm_s"))

    @property
    def ready(self) -> bool:
        """Models loaded and warmed: the next study starts at once."""
        return self.pid is not None

    def refresh(self, timeout_s: float = 600.0) -> bool:
        """Between jobs: let the child load (and warm) a promoted model now; True when it did."""
        if self._proc is None or not self._proc.is_alive():
            return False
        try:
            self._conn.send({"refresh": True})
            if not self._conn.poll(timeout_s):
                self.kill()
                raise AnalysisFailed(f"analysis process did not answer a refresh within {timeout_s:.0f} s")
            reply = self._conn.recv()
        except (OSError, EOFError, ValueError) as exc:
            self.kill()
            raise AnalysisFailed(f"analysis process unreachable: {exc}") from exc
        if reply.get("reloaded"):
            log.info("analysis process %s loaded and warmed a promoted model", self._proc.pid)
        return bool(reply.get("reloaded"))

    def kill(self) -> None:
        """Hard stop (timeout, lost lease): SIGKILL, nothing of the child survives."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(10)
        self._proc = self._conn = None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Polite stop between jobs; the models' memory goes back to the system."""
        if self._proc is None:
            return
        try:
            self._conn.send(None)
        except (OSError, ValueError):
            pass
        self._proc.join(timeout_s)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._proc = self._conn = None

    def analyze(self, files: list[str], out_dir: str, *, predecessor: Any = None, cannot_assess: dict | None = None,
                timeout_s: float = 600.0,
                tick: Callable[[], bool] | None = None, tick_every_s: float = 5.0) -> str:
        """Run one analysis in the child; returns ``result.json`` text.

        ``tick`` is called every ``tick_every_s`` while waiting (lease renewal); when it returns False the
        child is killed and ``AnalysisFailed`` raised. Past ``timeout_s`` the child is killed too.
        """
        self.start()
        try:
            self._conn.send({"files": [str(f) for f in files], "out_dir": str(out_dir), "predecessor": predecessor,
                             "cannot_assess": cannot_assess})
        except (OSError, ValueError) as exc:
            self.kill()
            raise AnalysisFailed(f"analysis process unreachable: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        next_tick = time.monotonic() + tick_every_s
        while True:
            wait = max(0.0, min(deadline, next_tick) - time.monotonic())
            if self._conn.poll(min(wait, 1.0)):
                try:
                    reply = self._conn.recv()
                except EOFError:
                    code = None
                    if self._proc is not None:
                        self._proc.join(5)
                        code = self._proc.exitcode
                    self.kill()
                    raise AnalysisFailed(f"analysis process died (exit code {code})") from None
                break
            if self._proc is not None and not self._proc.is_alive():
                code = self._proc.exitcode
                self.kill()
                raise AnalysisFailed(f"analysis process died (exit code {code})")
            now = time.monotonic()
            if now >= deadline:
                self.kill()
                raise AnalysisTimeout(f"analysis timed out after {timeout_s:.0f} s (process killed)")
            if tick is not None and now >= next_tick:
                next_tick = now + tick_every_s
                if not tick():
                    self.kill()
                    raise AnalysisFailed("lease lost while analysing (another worker owns the job)")
        self._jobs += 1
        if self._jobs >= self.max_jobs:
            self.stop()
        if not reply.get("ok"):
            raise AnalysisFailed(reply.get("error", "unknown error"), retryable=reply.get("retryable", True))
        return reply["result"]
