"""Where the receive path's time goes, per image: thread CPU and wall time of each step of one C-STORE.

    .venv/bin/python benchmarks/receive_profile.py [--data ../shared/data/ct/philips-phantom-thin]
                                                   [--associations 1] [--json OUT]

Starts the node's Storage SCP in this process (``start_scp``, the bare SCP's defaults: journal on, one
receiver), wraps the functions of each step with ``time.thread_time()`` / ``perf_counter()`` (no
profiler: cProfile's per-call cost would swamp the 200 element reads of a header), sends the series with
dcmtk ``storescu`` over ``--associations`` parallel associations and prints CPU and wall milliseconds per
image for each step, and the process's whole CPU per image. Wrapping costs ≈ 1 µs per call.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

from benchmarks.peers import dicom_files, free_port, wait_echo  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "ct" / "philips-phantom-thin"
ENV = {**os.environ, "TCP_NODELAY": "1"}

# (module, attribute path, label, before/after the answer)
STEPS = [
    ("dicomnode.receive.fastpath", "_recv_exact", "reading PDUs (with the guard)", "before"),
    ("dicomnode.receive.fastpath", "_read_one_pdu", "all PDU handling, store included", ""),
    ("dicomnode.receive.fast_store", "FastStore._finish", "one data set: answer, response, after-answer work", ""),
    ("dicomnode.receive.receiver", "Receiver.store", "store up to the answer", "before"),
    ("dicomnode.receive.receiver", "Receiver.check", "header scan, UID checks, pseudonym", "before"),
    ("dicomnode.receive.receiver", "check_complete", "structure check", "before"),
    ("dicomnode.store.journal", "JournalStream.write", "journal: fragments as they arrive (write-out started)", "before"),
    ("dicomnode.store.journal", "JournalStream.commit", "journal commit (fdatasync)", "before"),
    ("dicomnode.store.journal", "Journal.append", "journal append (O_DSYNC; storage.journal_write = dataset)", "before"),
    ("dicomnode.receive.receiver", "Receiver._after_answer", "after the answer, all", "after"),
    ("dicomnode.store.digest", "digest", "digest", "after"),
    ("dicomnode.store.spool", "Spool.write", "spool file", "after"),
    ("dicomnode.store.index", "Index.record_instance", "index row", "after"),
    ("dicomnode.store.index", "Index.lookup_digest", "duplicate check", "after"),
]


def wrap_steps(acc: dict) -> None:
    """Replace each step's function by a timing wrapper (this process only; a measuring device)."""
    import importlib

    for module, path, label, _ in STEPS:
        owner = importlib.import_module(module)
        *parents, name = path.split(".")
        for p in parents:
            owner = getattr(owner, p)
        fn = getattr(owner, name)

        def timed(*a, __fn=fn, __label=label, **k):
            c0, w0 = time.thread_time(), time.perf_counter()
            try:
                return __fn(*a, **k)
            finally:
                row = acc[__label]
                row[0] += 1
                row[1] += time.thread_time() - c0
                row[2] += time.perf_counter() - w0

        setattr(owner, name, timed)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--associations", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--journal-write", choices=("dataset", "stream"), default=None,
                    help="storage.journal_write (default: the node's default)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    acc: dict = collections.defaultdict(lambda: [0, 0.0, 0.0])
    wrap_steps(acc)  # before the SCP binds the functions it calls (check_complete is imported by name)

    from dicomnode.config import load_config
    from dicomnode.receive.server import start_scp
    from dicomnode.store.index import Index
    from dicomnode.store.spool import Spool

    files = dicom_files(args.data)
    root = args.workdir or REPO / "var" / "bench"
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="receive-profile-", dir=root))
    cfg = load_config(None)
    cfg.node.data_dir, cfg.node.host, cfg.node.port, cfg.logging.level = str(work), "127.0.0.1", free_port(), "WARNING"
    if args.journal_write:
        cfg.storage.journal_write = args.journal_write
    index, spool = Index(cfg.node.index_path), Spool(cfg.node.spool_dir, cfg.storage.min_free_bytes)
    server = start_scp(cfg, index, spool)
    try:
        wait_echo(server.port, None, 30, env=ENV)
        os.sync()
        acc.clear()
        chunks = [files[i::args.associations] for i in range(args.associations)]
        c0, t0 = time.process_time(), time.perf_counter()
        procs = [subprocess.Popen(["storescu", "-aet", "BENCH", "-aec", cfg.node.ae_title, "127.0.0.1", str(server.port),
                                   *map(str, c)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in chunks]
        for p in procs:
            _, err = p.communicate()
            if p.returncode:
                raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        server.stop()
        index.close()
    n = len(files)
    stored = server.stats.snapshot()["stored"]
    if stored != n:
        raise RuntimeError(f"stored {stored} of {n}")
    rows = [{"step": label, "when": when, "calls": acc[label][0], "cpu_ms_per_image": 1e3 * acc[label][1] / n,
             "wall_ms_per_image": 1e3 * acc[label][2] / n} for _, _, label, when in STEPS]
    print(f"{n} images over {args.associations} association(s): {n / wall:.0f} img/s, "
          f"process CPU {1e3 * cpu / n:.2f} ms per image (all threads)")
    print(f"{'step':52s} {'when':6s} {'calls':>6s} {'CPU ms':>7s} {'wall ms':>8s}  (per image)")
    for r in rows:
        print(f"{r['step']:52s} {r['when']:6s} {r['calls']:6d} {r['cpu_ms_per_image']:7.3f} {r['wall_ms_per_image']:8.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "images": n, "associations": args.associations,
                                         "images_per_s": n / wall, "process_cpu_ms_per_image": 1e3 * cpu / n,
                                         "steps": rows, "load_average": os.getloadavg()}, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
