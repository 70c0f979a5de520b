"""An index, spool, queue and completion sweep on tmp_path, with a fixed selection answer (sweep tests)."""

from __future__ import annotations

from dicomnode.store.index import Index, InstanceRecord
from dicomnode.queue.sqlite import SQLiteQueue
from dicomnode.select import Decision, Sweeper
from dicomnode.store.spool import Spool

STUDY = "1.2.826.0.1.3680043.10.1"


def rec(sop: str, series: str = STUDY + ".1", study: str = STUDY, sha: str = "a", n: int = 1) -> InstanceRecord:
    return InstanceRecord(sop_uid=sop, sop_class="1.2.840.10008.5.1.4.1.1.2", transfer_syntax="1.2.840.10008.1.2.1",
                          study_uid=study, series_uid=series, patient_hash="p1", modality="CT",
                          path=f"aa/bb/{sop}.dcm", digest=sha, size=10, instance_number=n)


class Env:
    def __init__(self, tmp_path, decision=Decision("analyze", series_uid=STUDY + ".1"), release_grace_s=None):
        self.index = Index(tmp_path / "index.sqlite3")
        self.spool = Spool(tmp_path / "spool")
        self.queue = SQLiteQueue(tmp_path / "queue.sqlite3")
        self.decision = decision
        self.calls = 0
        self.sweeper = Sweeper(self.index, self.queue, self.spool.abspath, self.decide, quiet_seconds=10,
                               release_grace_s=release_grace_s)

    def decide(self, study_uid, series):
        self.calls += 1
        return self.decision
