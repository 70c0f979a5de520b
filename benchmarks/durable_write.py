"""What one durable write of a CT image costs on this disk, against a page-cache write (storescp's way).

    .venv/bin/python benchmarks/durable_write.py [--size 532000] [--count 60] [--dir var/bench]

A single-association C-STORE sender waits for each acknowledgement, so whatever a durable write
costs is added to every image. Printed per method: median and p90 milliseconds per image, and
the ratio to the page-cache write measured in the same run:

* page cache      open/write/close, no sync (what dcmtk storescp does)
* node spool      temp file → write → fsync → rename → fsync(dir) (dicomnode.store.spool, the acked path)
* journal         O_DSYNC overwrite of a pre-written journal file (the cheapest durable write:
                  no metadata changes; what a write-ahead journal would cost)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(fn, count: int) -> list[float]:
    out = []
    for i in range(count):
        t0 = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t0) * 1e3)
    return sorted(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=532_000, help="bytes per image (philips-phantom-thin ≈ 532 kB)")
    ap.add_argument("--count", type=int, default=60)
    ap.add_argument("--dir", type=Path, default=REPO / "var" / "bench")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="durable-", dir=args.dir))
    from dicomnode.store.spool import Spool

    buf = os.urandom(args.size)
    spool = Spool(work / "spool")
    slots = 8
    jfd = os.open(work / "journal", os.O_RDWR | os.O_CREAT | os.O_DSYNC, 0o640)
    os.write(jfd, b"\0" * args.size * slots)  # really written, so later writes change no metadata
    os.fsync(jfd)

    def cache(i: int) -> None:
        fd = os.open(work / f"c{i}", os.O_WRONLY | os.O_CREAT, 0o640)
        os.write(fd, buf)
        os.close(fd)

    def node(i: int) -> None:
        spool.write(f"a/b/{i}.dcm", [buf], digest="-")

    def journal(i: int) -> None:
        os.pwrite(jfd, buf, (i % slots) * args.size)

    try:
        node(-1)  # create the directories outside the timing
        results = {name: timed(fn, args.count) for name, fn in
                   (("page cache", cache), ("node spool", node), ("journal", journal))}
    finally:
        os.close(jfd)
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(results["page cache"])
    print(f"{args.count} writes of {args.size / 1e3:.0f} kB under {args.dir}")
    for name, ms in results.items():
        med = statistics.median(ms)
        print(f"  {name:10s}  median {med:6.2f} ms   p90 {ms[int(0.9 * (len(ms) - 1))]:6.2f} ms   "
              f"{med / base:5.1f}x page cache")


if __name__ == "__main__":
    main()
