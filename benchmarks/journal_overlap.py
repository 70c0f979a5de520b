"""Can the journal's durable write overlap the checks before a C-STORE's answer? (issue 13 part 6)

    .venv/bin/python benchmarks/journal_overlap.py [--data ../shared/data/ct/philips-phantom-thin]
                                                   [--rounds 10] [--json OUT]

Up to the answer the node runs, one after the other, the header scan (``parse_header``), the structure
walk (``check_complete``) and the journal's O_DSYNC append (``Journal.append``). The append mostly waits
on the disk, outside the GIL, so handing it to a thread could hide the checks behind it. This measures
that idea with the node's own functions on real CT slices (no network, no SCP), per image, three ways:

* ``sequential`` — what the node does: checks, then append;
* ``thread`` — the append handed to a waiting thread, checks meanwhile, then wait for it;
* ``thread_yield`` — the same with ``time.sleep(0)`` after the hand-off: the checks are pure Python and
  hold the GIL, so without an explicit yield the thread may not even reach its system call until the
  main thread blocks (CPython only forces a switch after ``sys.getswitchinterval()``, 5 ms).

Rounds alternate the three; the median of per-round medians is printed with each round's value.
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

from benchmarks.peers import dicom_files  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "ct" / "philips-phantom-thin"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def data_sets(data: Path, limit: int = 40) -> list[tuple[str, str, str, bytes]]:
    """(SOP class, SOP instance, transfer syntax, encoded data set without file meta) per slice."""
    import pydicom
    from pydicom.filebase import DicomBytesIO

    out = []
    for path in dicom_files(data)[:limit]:
        ds = pydicom.dcmread(path)
        ts = str(ds.file_meta.TransferSyntaxUID)
        buf = DicomBytesIO()
        pydicom.filewriter.write_dataset(buf, ds)  # the data set as it travels: no preamble, no file meta
        out.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID), ts, buf.getvalue()))
    return out


def run(data: Path, rounds: int, work: Path) -> dict:
    from dicomnode.receive.header import check_complete, parse_header
    from dicomnode.store.journal import Journal

    slices = data_sets(data)
    journal = Journal(work / "journal", size=64 << 20, checkpoint_every_s=3600)
    journal.open()
    journal.checkpoint()
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    results: queue.SimpleQueue = queue.SimpleQueue()

    def writer() -> None:
        while True:
            args = jobs.get()
            if args is None:
                return
            results.put(journal.append(*args))

    thread = threading.Thread(target=writer, daemon=True, name="journal-writer")
    thread.start()

    def checks(ts: str, blob: bytes) -> None:
        hdr = parse_header([blob], ts)
        check_complete([blob], ts, hdr.checked)

    def sequential(sop_class, sop_uid, ts, blob) -> int:
        checks(ts, blob)
        return journal.append(sop_class, sop_uid, ts, "BENCH", time.time(), [blob])

    def handed(sop_class, sop_uid, ts, blob, yield_gil: bool = False) -> int:
        jobs.put((sop_class, sop_uid, ts, "BENCH", time.time(), [blob]))
        if yield_gil:
            time.sleep(0)
        checks(ts, blob)
        return results.get()

    ways = {"sequential": sequential, "thread": handed,
            "thread_yield": lambda *a: handed(*a, yield_gil=True)}
    per_round: dict[str, list[float]] = {k: [] for k in ways}
    for r in range(rounds):
        order = list(ways) if r % 2 == 0 else list(reversed(ways))
        for name in order:
            times = []
            for sop_class, sop_uid, ts, blob in slices * 3:
                t0 = time.perf_counter()
                seq = ways[name](sop_class, sop_uid, ts, blob)
                times.append(time.perf_counter() - t0)
                journal.done(seq)
            journal.checkpoint()
            per_round[name].append(statistics.median(times) * 1e3)
    jobs.put(None)
    thread.join()
    journal.close()
    # the parts alone, for scale
    t_checks = []
    for sop_class, sop_uid, ts, blob in slices:
        t0 = time.perf_counter()
        checks(ts, blob)
        t_checks.append(time.perf_counter() - t0)
    size = statistics.median(len(s[3]) for s in slices)
    return {
        "images_per_round": len(slices) * 3, "rounds": rounds, "data_set_bytes_median": size,
        "checks_alone_ms": round(statistics.median(t_checks) * 1e3, 3),
        "ms_per_image": {k: round(statistics.median(v), 3) for k, v in per_round.items()},
        "per_round_ms": {k: [round(x, 3) for x in v] for k, v in per_round.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--dir", type=Path, default=REPO / "var", help="where the scratch journal lives (the data disk)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="journal-overlap-") as tmp:
        out = run(args.data, args.rounds, Path(tmp))
    base = out["ms_per_image"]["sequential"]
    print(f"checks alone {out['checks_alone_ms']:.3f} ms; up to the answer, per image (median of {args.rounds} rounds):")
    for name, ms in out["ms_per_image"].items():
        print(f"  {name:>12}: {ms:.3f} ms  ({ms - base:+.3f} vs sequential)  rounds {out['per_round_ms'][name]}")
    if args.json:
        out["command"] = "benchmarks/journal_overlap.py " + " ".join(sys.argv[1:] if argv is None else argv)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
