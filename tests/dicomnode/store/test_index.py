"""Index: idempotent records, completion by quiet period, compare-and-set claims, threads."""

from __future__ import annotations

import threading

from dicomnode.store.index import Index, InstanceRecord, StoreOutcome


def rec(sop: str, series: str = "1.2.3.1", study: str = "1.2.3", sha: str = "a", n: int | None = None) -> InstanceRecord:
    return InstanceRecord(sop_uid=sop, sop_class="1.2.840.10008.5.1.4.1.1.2", transfer_syntax="1.2.840.10008.1.2.1",
                          study_uid=study, series_uid=series, patient_hash="p1", modality="CT",
                          path=f"x/{sop}.dcm", digest=sha, size=10, instance_number=n)


def test_new_duplicate_replaced(tmp_path):
    ix = Index(tmp_path / "i.db")
    assert ix.record_instance(rec("1.1", sha="a"), now=100) is StoreOutcome.NEW
    assert ix.record_instance(rec("1.1", sha="a"), now=101) is StoreOutcome.DUPLICATE
    assert ix.series("1.2.3.1").last_received_at == 100  # a duplicate does not restart the quiet period
    assert ix.record_instance(rec("1.1", sha="b"), now=102) is StoreOutcome.REPLACED
    assert ix.lookup_digest("1.1") == "b"
    assert ix.counts()["instances"] == 1


def test_quiet_period_and_claim(tmp_path):
    ix = Index(tmp_path / "i.db")
    for i in range(3):
        ix.record_instance(rec(f"1.{i}", n=3 - i), now=100 + i)
    assert ix.series_ready(10, now=105) == []
    [s] = ix.series_ready(10, now=112)
    assert s.instance_count == 3 and s.analysis_generation == 0
    assert [i.instance_number for i in ix.instances_of(s.series_uid)] == [1, 2, 3]
    # an instance arrives between "ready" and "claim": the claim fails, nothing is lost
    ix.record_instance(rec("1.9"), now=113)
    assert ix.claim_series(s.series_uid, s.last_received_at) is None
    [s] = ix.series_ready(10, now=130)
    assert ix.claim_series(s.series_uid, s.last_received_at) == 1
    assert ix.series_ready(10, now=130) == []
    ix.mark_series_analyzed(s.series_uid, 1)
    assert ix.series(s.series_uid).state == "analyzed"
    # a changed instance after analysis makes the series ready again, next generation
    ix.record_instance(rec("1.9", sha="changed"), now=140)
    [s] = ix.series_ready(10, now=151)
    assert ix.claim_series(s.series_uid, s.last_received_at) == 2


def test_study_waits_for_all_series(tmp_path):
    ix = Index(tmp_path / "i.db")
    ix.record_instance(rec("1.1", series="9.1"), now=100)
    ix.record_instance(rec("1.2", series="9.2"), now=108)
    assert ix.studies_ready(10, now=111) == []
    [st] = ix.studies_ready(10, now=119)
    assert st.changed_series == ("9.1", "9.2") and st.analysis_generation == 0
    assert ix.claim_study(st.study_uid, st.last_received_at) == 1
    assert ix.studies_ready(10, now=200) == []
    assert {s.analysis_generation for s in ix.series_of_study(st.study_uid)} == {1}


def test_forget_series(tmp_path):
    ix = Index(tmp_path / "i.db")
    ix.record_instance(rec("1.1"), now=100)
    [s] = ix.series_ready(0, now=100)
    ix.claim_series(s.series_uid, s.last_received_at)
    ix.mark_series_analyzed(s.series_uid)
    assert [x.series_uid for x in ix.series_older_than(200)] == ["1.2.3.1"]
    assert ix.forget_series("1.2.3.1") == ["x/1.1.dcm"]
    assert ix.counts() == {"patients": 0, "studies": 0, "series": 0, "instances": 0, "bytes": 0, "series_pending": 0}


def test_threads_and_reopen(tmp_path):
    ix = Index(tmp_path / "i.db")
    errors = []

    def work(t):
        try:
            for i in range(50):
                ix.record_instance(rec(f"{t + 1}.{i}", series=f"5.{t}"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    ix.close()
    ix2 = Index(tmp_path / "i.db")
    assert ix2.counts()["instances"] == 200 and ix2.counts()["series"] == 4


def test_an_index_from_schema_1_is_migrated_and_keeps_its_sha256_digests(tmp_path):
    import hashlib
    import sqlite3

    from dicomnode.store.digest import matches

    path = tmp_path / "i.db"
    Index(path).record_instance(rec("1.1", sha="will-be-legacy"), now=100)
    with sqlite3.connect(path) as db:  # what a schema-1 node left behind
        db.execute("ALTER TABLE instances RENAME COLUMN digest TO sha256")
        db.execute("UPDATE instances SET sha256 = ?", (hashlib.sha256(b"slice").hexdigest(),))
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    ix = Index(path)
    assert matches(ix.lookup_digest("1.1"), [b"slice"])
    assert ix.instance("1.1").digest == hashlib.sha256(b"slice").hexdigest()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"
