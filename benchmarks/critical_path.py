"""What is on the sender's critical path: the node with and without its work after each answer, vs storescp.

    .venv/bin/python benchmarks/critical_path.py [--data ../shared/data/ct/philips-phantom-thin]
                                                 [--repeats 4] [--json OUT]

With one association ``storescu`` sends the next image only once the answer has arrived, so what a
receiver does *up to the answer* adds to every image's time; what it does after the answer overlaps
``storescu`` reading and encoding the next file, as long as it takes less. This measures how much
moving the node's after-answer work (spool file, index row, digest, duplicate check) out of the
receiving thread could give at most: the node's SCP runs in this process four ways —
``storage.journal_write`` ``dataset`` / ``stream`` × after-answer work done / skipped (skipped = the
journal entry is marked done and nothing else happens: a measuring device, the instances are then in
the journal only, never a product configuration) — and dcmtk ``storescp`` in the same alternating
repeats. Each repeat sends the series once to each over one association (``TCP_NODELAY=1``), into a
fresh directory after a ``sync``. CPU per image is this process's (all the node's threads).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

from benchmarks.ingest import DEFAULT_DATA, ENV, run_storescp  # noqa: E402
from benchmarks.peers import dicom_files  # noqa: E402

VARIANTS = [("dataset", True), ("dataset", False), ("stream", True), ("stream", False)]


def name(journal_write: str, after: bool) -> str:
    return f"node-{journal_write}" + ("" if after else "-no-after-work")


def run_node(work: Path, files: list[Path], journal_write: str, after: bool) -> tuple[float, float]:
    """(seconds, CPU ms per image) of one send to the node's SCP started in this process."""
    from dicomnode.config import NodeConfig
    from dicomnode.receive.receiver import Receiver
    from dicomnode.scp import start_scp
    from dicomnode.store.index import Index
    from dicomnode.store.spool import Spool

    cfg = NodeConfig.model_validate({"node": {"data_dir": str(work), "host": "127.0.0.1", "port": 0},
                                     "storage": {"min_free_bytes": 0, "journal_write": journal_write},
                                     "logging": {"level": "WARNING"}})
    index = Index(cfg.node.index_path)
    server = start_scp(cfg, index, Spool(cfg.node.spool_dir, 0))
    real = Receiver._after_answer
    if not after:  # this process only, for this send
        Receiver._after_answer = lambda self, seq, materialise: self.journal.done(seq)
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        subprocess.run(["storescu", "-aet", "BENCH", "-aec", "ICHNODE", "127.0.0.1", str(server.port),
                        *map(str, files)], env=ENV, check=True, capture_output=True)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        Receiver._after_answer = real
        server.stop()
    stats = server.receiver.journal.stats
    journaled = stats["streamed"] + stats["journaled"]
    indexed = index.counts()["instances"]
    if journaled != len(files) or indexed != (len(files) if after else 0):
        raise RuntimeError(f"{name(journal_write, after)}: journaled {journaled}, indexed {indexed} of {len(files)}")
    return dt, cpu / len(files) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    files = dicom_files(args.data)
    root = args.workdir or (REPO / "var" / "bench")
    root.mkdir(parents=True, exist_ok=True)
    peers = ["storescp"] + [name(*v) for v in VARIANTS]
    seconds: dict[str, list[float]] = {p: [] for p in peers}
    cpu: dict[str, list[float]] = {p: [] for p in peers[1:]}
    for r in range(args.repeats):
        for peer in (peers if r % 2 == 0 else peers[::-1]):
            os.sync()
            work = Path(tempfile.mkdtemp(prefix=f"{peer}-", dir=root))
            try:
                if peer == "storescp":
                    seconds[peer].append(run_storescp(work, files, 1))
                else:
                    dt, ms = run_node(work, files, *VARIANTS[peers.index(peer) - 1])
                    seconds[peer].append(dt)
                    cpu[peer].append(ms)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        print(f"  repeat {r + 1}: " + "   ".join(f"{p} {len(files) / seconds[p][-1]:.0f} img/s" for p in peers))
    ratios = {p: [s / t for s, t in zip(seconds["storescp"], seconds[p])] for p in peers[1:]}
    print(f"{len(files)} images from {args.data}, one association, {args.repeats} alternating repeats")
    print(f"{'receiver':32s} {'img/s':>7s} {'ratio to storescp':>18s} {'CPU ms/image':>13s}")
    print(f"{'storescp':32s} {len(files) / statistics.median(seconds['storescp']):7.0f}")
    for p in peers[1:]:
        print(f"{p:32s} {len(files) / statistics.median(seconds[p]):7.0f} {statistics.median(ratios[p]):18.2f} "
              f"{statistics.median(cpu[p]):13.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": " ".join(sys.argv), "images": len(files), "repeats": args.repeats, "seconds": seconds,
            "ratio_per_repeat": ratios, "ratio_median": {p: statistics.median(v) for p, v in ratios.items()},
            "cpu_ms_per_image": cpu, "load_average": os.getloadavg(),
        }, indent=1))


if __name__ == "__main__":
    main()
