"""The verdict lane: coded "cannot assess" reports written in the node's own thread, no model loaded."""

from __future__ import annotations

from typing import Any

from .process import AnalysisFailed, ModelSource, _model_paths, predecessor_files


class LocalVerdicts:
    """The analysis process's interface for verdict jobs, run in the node's own thread: the coded
    "cannot assess" SR of a series that selection already judged (``pipeline.verdict``). No model is
    loaded, so a burst of such series is answered at once and never queues in front of, or behind, a
    real head CT in the analysis process. The SR names the models the analysis process would use
    (read from their metadata.json, registry promotions included)."""

    ready = True
    model_info: dict[str, Any] = {}

    def __init__(self, models: ModelSource | None = None, *, installation_id: str | None = None) -> None:
        self.models = models or ModelSource()
        self.installation_id = installation_id
        self._watcher: Any = None
        self._identity: Any = None

    def identity(self):
        """The models' names and versions, read once and again only after a promotion (as the analysis
        child does: one stat() of the registry per job when nothing changed)."""
        from pipeline.verdict import ModelIdentity

        if self._identity is None:
            paths, self._watcher = _model_paths(self.models)
            self._identity = ModelIdentity.of(paths)
        elif self._watcher is not None and self._watcher.poll():
            self._identity = ModelIdentity.of(self._watcher.paths)
        return self._identity

    def start(self) -> None:
        """Nothing to start (the interface of ``AnalysisProcess``)."""

    def stop(self, timeout_s: float = 10.0) -> None:
        """Nothing to stop."""

    def refresh(self, timeout_s: float = 0.0) -> bool:
        return False

    def analyze(self, files: list[str], out_dir: str, *, predecessor: Any = None, cannot_assess: dict | None = None,
                **_: Any) -> str:
        from pipeline.encode.common import DeviceInfo
        from pipeline.result import CannotAssess
        from pipeline.verdict import report_cannot_assess

        if not cannot_assess:
            raise AnalysisFailed("not a verdict job: only 'cannot assess' reports are written here", retryable=False)
        device = DeviceInfo(installation_id=self.installation_id) if self.installation_id else None
        try:
            result = report_cannot_assess(
                files, out_dir, CannotAssess(cannot_assess["code"], cannot_assess["message"]),
                self.identity(), device=device,
                predecessor=predecessor_files(predecessor) if predecessor else None)
        except (ValueError, TypeError, KeyError, FileNotFoundError) as exc:
            raise AnalysisFailed(f"{type(exc).__name__}: {exc}", retryable=False) from exc
        return result.to_json()
