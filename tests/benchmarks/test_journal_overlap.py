"""benchmarks/journal_overlap.py in its smallest configuration: the node's own checks and journal on real
CT slices, each of the three ways timed per round, and every journaled entry marked done (the journal
would refuse to wrap otherwise). Missing data fails under CI."""

from __future__ import annotations

import json
import shutil

from benchmarks.journal_overlap import main


def test_journal_overlap_times_every_way_on_real_slices(tmp_path, ct_data):
    data = tmp_path / "slices"
    data.mkdir()
    for src in sorted((ct_data / "philips-phantom-thin").glob("I*"))[:3]:
        shutil.copy(src, data / src.name)
    out = tmp_path / "overlap.json"
    assert main(["--data", str(data), "--rounds", "2", "--dir", str(tmp_path / "work"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["ms_per_image"]) == {"sequential", "thread", "thread_yield"}
    assert all(len(v) == 2 and min(v) > 0 for v in result["per_round_ms"].values())
    assert result["images_per_round"] == 9 and result["data_set_bytes_median"] > 100_000
    assert result["checks_alone_ms"] > 0
    assert not any((tmp_path / "work").iterdir())  # the scratch journal is gone
