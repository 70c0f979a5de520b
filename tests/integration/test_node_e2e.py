"""End to end with real parts: `ich-node serve` (subprocess) + real pipeline.analyze + dcmtk + Orthanc.

storescu +sd philips-phantom-5mm → node → SEG + SR in Orthanc (REST API), valid per dciodvfy;
Orthanc down → retries → up → delivered; late instance → re-analysis whose SR references the earlier
one; kill -9 of the node during analysis → restart → each result in Orthanc exactly once.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from tests.conftest import wait_for
from tests.integration.conftest import NodeProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
]

SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34",
              "1.2.840.10008.5.1.4.1.1.88.11"}
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def orthanc_objects(orthanc) -> dict[str, list[dict]]:
    """Instances in Orthanc by kind ('seg', 'sr', 'other') with their tags."""
    out: dict[str, list[dict]] = {"seg": [], "sr": [], "other": []}
    for iid in orthanc.instances():
        tags = orthanc.get(f"/instances/{iid}/simplified-tags")
        kind = "seg" if tags.get("SOPClassUID") == SEG_CLASS else "sr" if tags.get("SOPClassUID") in SR_CLASSES else "other"
        out[kind].append({"id": iid, **tags})
    return out


def dciodvfy_errors(path: Path) -> set[str]:
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return {re.sub(r"\s+", " ", line.strip()) for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")}


def all_uids(ds: pydicom.Dataset) -> set[str]:
    found = set()
    for elem in ds.iterall():
        if elem.VR == "UI" and elem.value:
            found.update(str(v) for v in (elem.value if elem.VM > 1 else [elem.value]))
    return found


@pytest.fixture
def phantom(ct_data, tmp_path) -> tuple[Path, Path]:
    """The 5 mm phantom folder as a scanner export has it (with DIRFILE, which the node refuses), and a
    changed copy of its last slice (same SOP Instance UID, new bytes) to arrive after the analysis."""
    src = ct_data / "philips-phantom-5mm"
    late = tmp_path / "late"
    late.mkdir()
    ds = pydicom.dcmread(src / "I280")
    ds.ImageComments = "corrected after the first analysis"
    ds.save_as(late / "I280")
    return src, late


def send_study(dcmtk, port: int, folder: Path) -> None:
    """``storescu +sd`` as the issue states it, with ``-nh``: the node answers DIRFILE (a DICOMDIR) with a
    failure status, after which plain storescu would halt and leave the rest of the study unsent."""
    r = dcmtk("storescu", "-aec", "ICHNODE", "-nh", "+sd", "127.0.0.1", port, folder)
    assert r.returncode == 0, r.stderr


def test_phantom_results_reach_orthanc_valid_after_outage_and_late_instance(tmp_path, free_port, orthanc, phantom,
                                                                           dcmtk, ct_data):
    study, late = phantom
    orthanc.stop()  # the PACS is down when the study arrives
    node = NodeProcess(tmp_path, free_port(), orthanc.address).start(dcmtk)
    try:
        t0 = time.monotonic()
        send_study(dcmtk, node.port, study)
        t_sent = time.monotonic()
        q = node.queue()
        job = wait_for(lambda: [j for j in q.list() if j.state.value == "failed" and j.stage.value == "send"], 600,
                       step=0.5, what="first delivery attempt fails")[0]
        t_encoded = time.monotonic()
        orthanc.start()
        wait_for(lambda: q.get(job.id).state.value == "sent", 120, step=0.5, what="delivery after Orthanc is back")
        t_delivered = time.monotonic()
        result = (Path(q.get(job.id).result_dir) / "result.json").read_text()
        objs = orthanc_objects(orthanc)
        assert len(objs["sr"]) == 1, (objs, result)
        analysed = '"status": "analyzed"' in result
        assert len(objs["seg"]) == (1 if analysed else 0), result
        source_errors = dciodvfy_errors(ct_data / "philips-phantom-5mm" / "I10")
        for obj in objs["seg"] + objs["sr"]:
            path = tmp_path / f"{obj['id']}.dcm"
            path.write_bytes(orthanc.file(obj["id"]))
            assert dciodvfy_errors(path) - source_errors == set(), obj["SOPClassUID"]
        first_sr = objs["sr"][0]["SOPInstanceUID"]
        print(f"\nE2E timings: storescu {t_sent - t0:.1f} s, analysis done {t_encoded - t_sent:.1f} s after send, "
              f"delivered {t_delivered - t_encoded:.1f} s after Orthanc restart")

        # late (changed) instance → new analysis whose results reference the earlier ones
        t1 = time.monotonic()
        dcmtk("storescu", "-aec", "ICHNODE", "127.0.0.1", node.port, *late.iterdir())
        wait_for(lambda: len(orthanc_objects(orthanc)["sr"]) == 2, 600, step=0.5, what="second SR after late instance")
        print(f"E2E re-analysis after a late instance: {time.monotonic() - t1:.1f} s to the new SR in Orthanc")
        objs = orthanc_objects(orthanc)
        new_sr = next(o for o in objs["sr"] if o["SOPInstanceUID"] != first_sr)
        ds = pydicom.dcmread(__import__("io").BytesIO(orthanc.file(new_sr["id"])))
        assert first_sr in all_uids(ds), "the new SR does not reference the SR it replaces"
        assert len(objs["seg"]) == (2 if analysed else 0)
    finally:
        node.stop()
    assert "node stopped" in node.log.read_text()


def test_kill_9_during_analysis_then_restart_delivers_exactly_once(tmp_path, free_port, orthanc, phantom, dcmtk):
    study, _ = phantom
    node = NodeProcess(tmp_path, free_port(), orthanc.address).start(dcmtk)
    try:
        send_study(dcmtk, node.port, study)
        q = node.queue()
        wait_for(lambda: [j for j in q.list() if j.state.value == "running"], 120, step=0.2, what="analysis running")
        node.kill9()
        assert orthanc.instances() == []
        t0 = time.monotonic()
        node.start(dcmtk)
        job = wait_for(lambda: [j for j in q.list() if j.state.value == "sent"], 600, step=0.5, what="delivery after restart")[0]
        print(f"\nE2E restart after kill -9 → delivered in {time.monotonic() - t0:.1f} s")
        time.sleep(3)
        objs = orthanc_objects(orthanc)
        assert len(objs["sr"]) == 1 and len(objs["seg"]) <= 1
        # exactly the objects of the one delivered result: nothing from the killed run, nothing twice
        produced = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                    for p in Path(job.result_dir).rglob("*.dcm")
                    if p.name != "sr_tid1411.dcm"}  # the destination asked for the default "ohif" SR profile
        in_orthanc = [o["SOPInstanceUID"] for kind in objs.values() for o in kind]
        assert sorted(in_orthanc) == sorted(produced)
        assert len(q.list()) == 1  # one job, analysed again after the crash, not a second one
        assert "restarted" in (job.last_error or "")
    finally:
        node.stop()
