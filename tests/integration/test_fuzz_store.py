"""The C-STORE fuzz harness (benchmarks/fuzz_store.py), smaller, in ``make test`` (issue 13 part 5).

150 mutated data sets (every mutation class) plus controls and protocol-level garbage, over several
associations two at a time, against ``ich-node serve`` with a real Orthanc as destination. Fails when
any of the harness's checks fails: the node alive (same PID, C-ECHO), no association carrying a data set
aborted, controls stored and hostile UIDs never, nothing written outside the data dir, every
acknowledged instance indexed with a digest matching its spool file, and a valid head CT sent afterwards
analysed with its SEG and SR in Orthanc. Missing tools fail the test (they are part of ``make test``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def ct_data_dir() -> Path | None:
    for c in (os.environ.get("ICH_CT_DATA"), REPO.parent / "shared" / "data" / "ct", "/work/shared/data/ct"):
        if c and (Path(c) / "philips-phantom-5mm").is_dir():
            return Path(c)
    return None


def harness():
    spec = importlib.util.spec_from_file_location("fuzz_store", REPO / "benchmarks" / "fuzz_store.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module
    spec.loader.exec_module(module)
    return module


def test_fuzzed_c_stores_leave_the_node_alive_clean_and_delivering(tmp_path):
    for tool in ("Orthanc",):
        if shutil.which(tool) is None and not Path("/usr/sbin/Orthanc").exists():
            pytest.fail(f"{tool} is not installed: `make test` installs it (make debs)")
    ct = ct_data_dir()
    if ct is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("real CT data (../shared/data/ct) not available")
    fz = harness()
    report = fz.run(count=150, associations=6, parallel=2, seed=13, ct_data=ct, workdir=tmp_path,
                    valid_timeout=300, keep_failed=True)
    fz.print_summary(report)
    assert report["mutated_data_sets_sent"] >= 150
    for klass in fz.DATASET_CLASSES:
        assert report["per_class"][klass]["sent"] >= 10, klass
    failed = {name: check for name, check in report["checks"].items() if not check["ok"]}
    assert not failed, json.dumps(failed, indent=1, default=str)[:6000] + f"\nrun folder: {report['run_folder']}"
