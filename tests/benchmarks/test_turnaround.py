"""benchmarks/turnaround.py end to end in its smallest configuration (issue 15, part 4): Orthanc and the
node started, the 5 mm study sent cold and once more, a finite turnaround printed and the JSON holding the
node's stage breakdown, the cold start and the peak RSS. Missing tools or data fail under CI."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import require_tool, unavailable

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STAGES = ("receive_to_queued", "queued_to_analysed", "analysed_to_delivered", "time_to_result")


def test_turnaround_runs_end_to_end_and_reports_the_stages(tmp_path, ct_data):
    require_tool("storescu")
    require_tool("echoscu")
    if shutil.which("Orthanc") is None and not Path("/usr/sbin/Orthanc").exists():
        unavailable("Orthanc not installed (make test installs it)")
    out = tmp_path / "turnaround.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "turnaround.py"), "--repeats", "1", "--studies", "5mm",
                        "--quiet-seconds", "1", "--workdir", str(tmp_path), "--json", str(out)],
                       capture_output=True, text=True, timeout=400, cwd=REPO,
                       env={**os.environ, "ICH_CT_DATA": str(ct_data)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = re.search(r"^RESULT 5mm median_s=([0-9.]+)$", r.stdout, re.M)
    assert m and math.isfinite(float(m.group(1))) and float(m.group(1)) > 0, r.stdout[-2000:]

    report = json.loads(out.read_text())
    assert report["machine"]["cores"] >= 1 and len(report["git"]["commit"]) == 40
    assert report["settings"]["quiet_seconds"] == 1
    (row,) = report["repeats"]
    assert row["study"] == "5mm" and row["slices"] == 28 and row["deliveries_counted"] == 1
    assert {"SEG", "SR"} <= set(row["series_in_orthanc"])
    assert set(row["stages_s"]) == set(STAGES)
    # the node's stages add up to its time to result, which covers our turnaround (storescu exit -> SEG + SR)
    parts = sum(row["stages_s"][s] for s in STAGES[:3])
    assert abs(parts - row["stages_s"]["time_to_result"]) < 0.05
    assert row["stages_s"]["time_to_result"] >= row["turnaround_s"] - 2  # REST polling lag
    assert report["summary"]["5mm"]["median_s"] == pytest.approx(float(m.group(1)), abs=0.01)
    cold = report["cold_start"]
    assert 0 < cold["healthz_ok_s"] < cold["first_result_s"] and cold["studies"][0]["study"] == "5mm"
    assert report["peak_rss_mib"]["node"] > 0 and report["peak_rss_mib"]["analysis process (largest child)"] > 0
    assert not list(tmp_path.glob("ich-turnaround-*")), "the run folder is removed"
