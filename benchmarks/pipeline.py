"""Pipeline benchmark: seconds per stage and peak memory for one study, against a peer in the same run.

    .venv/bin/python benchmarks/pipeline.py [--data ../shared/data/ct/philips-phantom-thin]
                                            [--repeats 3] [--threads 2]

Each repeat runs ``pipeline.analyze.Analyzer(...).analyze`` in a fresh child process, so peak RSS is
that of one analysis: with ``--segmenter bundled`` (default) the shipped model 1 (3D CNN), with
``--segmenter classical`` the baseline; never the classifier (the bar excludes the fusion classifier).
Stages are the ones ``result.json`` reports (load, brain, segmentation, encoding). The peer is
SimpleITK's GDCM ``ImageSeriesReader`` reading the same slices into a volume in the same run: the
``load`` ratio says what our geometry checks and HU conversion cost over a bare reader. The bar
(issue 3): everything except the classifier ≤ 10 s on 2 CPU cores for this 140-slice study.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ct" / "philips-phantom-thin"
BAR_S = 10.0

CHILD = r"""
import json, resource, sys, time
from contextlib import contextmanager
t0 = time.perf_counter()
import pipeline.analyze as A
from pipeline.analyze import Analyzer
cpu = {}
_wall = A._timed
@contextmanager
def _timed(timings, stage):          # also record CPU seconds (all threads) per stage
    c = time.process_time()
    with _wall(timings, stage):
        yield
    cpu[stage] = cpu.get(stage, 0.0) + time.process_time() - c
A._timed = _timed
from pipeline.models import ModelPaths
analyzer = Analyzer(ModelPaths(segmenter=ModelPaths.bundled().segmenter if sys.argv[3] == "bundled" else None))
setup = time.perf_counter() - t0
result = analyzer.analyze(sys.argv[1], sys.argv[2])
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"timings": result.timings_s, "cpu": cpu, "setup": setup, "volume_ml": result.volume_ml, "cpu_s": ru.ru_utime + ru.ru_stime,
                  "status": result.status.value, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

PEER = r"""
import json, resource, sys, time
import SimpleITK as sitk
t = time.perf_counter()
reader = sitk.ImageSeriesReader()
files = reader.GetGDCMSeriesFileNames(sys.argv[1])
reader.SetFileNames(files)
img = reader.Execute()
arr = sitk.GetArrayFromImage(img)
print(json.dumps({"load": time.perf_counter() - t, "shape": list(arr.shape),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(code: str, *args: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--segmenter", choices=("bundled", "classical"), default="bundled",
                    help="model 1 as shipped (models/segmenter/<highest>) or the classical baseline")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads allowed (OMP, SimpleITK/ITK, BLAS)")
    args = ap.parse_args()
    n = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": n, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": n,
           "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n, "PYTHONPATH": str(REPO)}
    ours, peers = [], []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as out:
            # alternate who goes first so page-cache warmth favours neither
            if i % 2:
                peers.append(run(PEER, str(args.data), env=env))
                ours.append(run(CHILD, str(args.data), out, args.segmenter, env=env))
            else:
                ours.append(run(CHILD, str(args.data), out, args.segmenter, env=env))
                peers.append(run(PEER, str(args.data), env=env))
    stages = sorted({k for r in ours for k in r["timings"]})
    med = {k: statistics.median(r["timings"].get(k, 0.0) for r in ours) for k in stages}
    total = sum(med.values())
    peer_load = statistics.median(p["load"] for p in peers)
    print(f"study: {args.data}  ({ours[0]['status']}, volume {ours[0]['volume_ml']} mL)  repeats={args.repeats} threads={n}")
    cpu = {k: statistics.median(r["cpu"].get(k, 0.0) for r in ours) for k in stages}
    print(f"  {'stage':<14} {'wall':>7}   {'cpu':>7}")
    for k in stages:
        print(f"  {k:<14} {med[k]:7.2f} s {cpu[k]:7.2f} s")
    print(f"  {'total':<14} {total:7.2f} s {sum(cpu.values()):7.2f} s   (bar {BAR_S:.0f} s wall on 2 cores: ratio wall/bar = {total / BAR_S:.2f}, cpu/bar = {sum(cpu.values()) / BAR_S:.2f})")
    print(f"  cpu (user+sys) {statistics.median(r['cpu_s'] for r in ours):7.2f} s   whole child process incl. imports; wall > cpu/2 means other load")
    print(f"  model setup    {statistics.median(r['setup'] for r in ours):7.2f} s   (once per worker, not per study)")
    print(f"  peak RSS       {max(r['peak_rss_mb'] for r in ours):7.0f} MB  (peer reader {max(p['peak_rss_mb'] for p in peers):.0f} MB)")
    print(f"  peer load      {peer_load:7.2f} s   SimpleITK/GDCM ImageSeriesReader; ratio load/peer = {med.get('load', 0) / peer_load:.2f}")


if __name__ == "__main__":
    main()
