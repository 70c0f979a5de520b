"""``NodeConfig``: the whole configuration, the sections and plug-in tables put together."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from .plugins import _QUEUE, AnyDestination, AnyQueue
from .sections import (HeartbeatSection, LoggingSection, MetricsSection, ModelsSection, NodeSection,
                       SchedulerSection, SecuritySection, SelectionSection, StorageSection, TrainingSection,
                       WorkerSection, _Section)


class NodeConfig(_Section):
    """The whole configuration. ``NodeConfig()`` is the embedded default used by ``make run``."""

    node: NodeSection = Field(default_factory=NodeSection)
    security: SecuritySection = Field(default_factory=SecuritySection)
    storage: StorageSection = Field(default_factory=StorageSection)
    selection: SelectionSection = Field(default_factory=SelectionSection)
    queue: AnyQueue = Field(default_factory=lambda: _QUEUE.validate_python({}))  # dicomnode.queue: one class per backend
    worker: WorkerSection = Field(default_factory=WorkerSection)
    destinations: list[AnyDestination] = Field(default_factory=list)  # dicomnode.deliver: one class per type
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection)
    models: ModelsSection = Field(default_factory=ModelsSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    heartbeat: HeartbeatSection = Field(default_factory=HeartbeatSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)

    @model_validator(mode="after")
    def _cross(self) -> "NodeConfig":
        names = [d.name for d in self.destinations]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"destination names must be unique; repeated: {', '.join(dup)}")
        return self

    @property
    def models_dir(self) -> Path:
        return self.models.registry_dir or (self.node.data_dir / "models")

    @property
    def results_dir(self) -> Path:
        """Where the analysis of each job writes its SEG, SR, SC and result.json."""
        return Path(self.node.data_dir) / "results"

    @property
    def ledger_path(self) -> Path:
        """The delivery ledger (which result went to which destination)."""
        return Path(self.node.data_dir) / "deliveries.sqlite3"
