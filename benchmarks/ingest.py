"""Ingest benchmark: the node's Storage SCP against dcmtk ``storescp``, same sender, same run.

    .venv/bin/python benchmarks/ingest.py [--data ../shared/data/ct/philips-phantom-thin]
                                          [--repeats 5] [--associations 1] [--diagnose] [--ceiling]
                                          [--minimal-write dataset|writeback|fragment ...]
                                          [--node-journal-write stream|dataset ...]
                                          [--receivers N] [--separate] [--json OUT]

Both receivers run as subprocesses on loopback with ``TCP_NODELAY=1``; the same ``storescu``
command line sends the same files to each (DIRFILE left out), alternating which peer goes first,
each repeat into a fresh, empty directory (so the node really writes, never "duplicate"). The
time is the sender's wall time (association to release); images/s for both and the ratio
node/storescp (median over repeats) are printed.

Not the same work: before it acknowledges, the node validates the data set and makes it durable
(in its write-ahead journal: each fragment as it arrives and one fdatasync, or one O_DSYNC write per
data set with ``storage.journal_write = "dataset"``; with ``storage.journal_mb = 0`` it writes the spool
file, fsyncs it and its directory and commits the index instead); right after the acknowledgement,
before it reads the next request, it writes the spool file (temp → rename) and commits the SQLite
index. storescp writes to the page cache and acknowledges (no fsync at all). Before each receiver
runs, ``sync`` flushes what earlier runs left dirty. ``--associations N`` splits the files over N
parallel storescu processes (both receivers then serve N associations at once; storescp with ``--fork``).

``--diagnose`` adds a third receiver, the same node with its journal off and ``os.fsync`` turned
into a no-op (NOT durable, never a configuration of the product): the gap between it and storescp
is what the Python receive path costs, the gap between it and the node is what durability costs.

``--ceiling`` adds ``benchmarks/minimal_scp.py``: a hand-written Python upper layer that does nothing
per image but one O_DSYNC journal write before the response (no validation, index or spool). It is the
most any durable receiver written in Python can reach here — the test of whether the bar is within
reach of Python at all. ``--minimal-write dataset writeback fragment`` times one such peer per way of
making a data set durable (see ``minimal_scp.Journal``) in the same alternating repeats.

``--node-journal-write stream dataset`` times the node once per ``storage.journal_write`` (the first
is the peer called ``node``, the others ``node-<mode>``) in the same alternating repeats: each fragment
journaled as it arrives and one fdatasync (``stream``) against one O_DSYNC write per data set
(``dataset``, the default).

``--separate`` adds one independent node per association (own port, journal and index): the load
spread perfectly over processes with nothing shared, i.e. the most ``--receivers`` could give.
"""

from __future__ import annotations

import argparse
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

from benchmarks.peers import dicom_files, free_port, hwm_mib, process_tree, stop, wait_echo  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "ct" / "philips-phantom-thin"
ENV = {**os.environ, "TCP_NODELAY": "1"}


LAST_CPU: list[float] = []  # receiver CPU seconds (user + system) of the latest send()
LAST_RSS: list[float] = []  # peak RSS (MB) of each receiver process after the latest send()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process tree (all threads; children that ended and were waited for
    count through their parent's cutime/cstime), from /proc."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> list[float]:
    """Peak resident memory (VmHWM) of each live process of the receiver's tree, MB."""
    return [m for m in map(hwm_mib, process_tree(pid)) if m]


def send(port: int | list[int], files: list[Path], associations: int,
         receiver_pid: int | list[int] | None = None) -> float:
    """Send ``files`` over ``associations`` parallel storescu processes (association k to ``port[k]``
    when ports are listed: one per receiver); returns the wall time."""
    chunks = [files[i::associations] for i in range(associations)]
    ports = port if isinstance(port, list) else [port] * associations
    pids = receiver_pid if isinstance(receiver_pid, list) else [receiver_pid] if receiver_pid else []
    c0 = sum(map(cpu_seconds, pids))
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aet", "BENCH", "-aec", "ICHNODE", "127.0.0.1", str(p), *map(str, c)],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for p, c in zip(ports, chunks) if c]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed ({p.returncode}): {err.decode()[-500:]}")
    dt = time.perf_counter() - t0
    LAST_CPU[:] = [sum(map(cpu_seconds, pids)) - c0] if pids else []
    LAST_RSS[:] = [m for pid in pids for m in peak_rss_mb(pid)]
    return dt


def timed(cmd: list[str] | list[list[str]], port: int | list[int], files: list[Path], associations: int,
          env: dict | None = None, cwd: Path | None = None) -> tuple[float, list[subprocess.Popen]]:
    """Start the receiver (or one per listed command, each on its listed port), wait for their C-ECHO,
    send every file, stop them; the send's wall time and the processes."""
    cmds, ports = (cmd, port) if isinstance(port, list) else ([cmd], [port])
    procs: list[subprocess.Popen] = []
    try:
        for c in cmds:
            procs.append(subprocess.Popen(c, env=env or ENV, cwd=cwd, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, start_new_session=True))
        for proc, p in zip(procs, ports):
            wait_echo(p, proc, 60, env=ENV)
        dt = send(port, files, associations, [proc.pid for proc in procs])
    finally:
        for proc in procs:
            stop(proc, 20, group=True)
    return dt, procs


def run_storescp(work: Path, files: list[Path], associations: int) -> float:
    out = work / "storescp"
    out.mkdir()
    port = free_port()
    cmd = ["storescp", "-aet", "ICHNODE", "-od", str(out)] + (["--fork"] if associations > 1 else []) + [str(port)]
    dt, _ = timed(cmd, port, files, associations)
    got = len([p for p in out.iterdir() if p.is_file()])
    if got != len(files):
        raise RuntimeError(f"storescp stored {got} of {len(files)}")
    return dt


NOSYNC = ("import os, runpy, sys; os.fsync = lambda fd: None; sys.argv[0] = 'dicomnode.scp'; "
          "runpy.run_module('dicomnode.scp', run_name='__main__')")


def _node_cmd(data_dir: Path, port: int, durable: bool = True) -> list[str]:
    entry = ["-m", "dicomnode.scp"] if durable else ["-c", NOSYNC]
    return [sys.executable, *entry, "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port)]


def _node_env(associations: int, durable: bool = True, **extra: str) -> dict:
    env = {**ENV, "ICH_NODE__LOGGING__LEVEL": "WARNING", "ICH_NODE__NODE__MAX_ASSOCIATIONS": str(max(16, associations)),
           **extra}
    if not durable:  # page cache only: no journal (its O_DSYNC write is durable) and fsync a no-op
        env["ICH_NODE__STORAGE__JOURNAL_MB"] = "0"
    return env


def _count_stored(data_dirs: list[Path]) -> tuple[int, int]:
    """(spool files, index rows) over the given node data directories."""
    import sqlite3

    files = indexed = 0
    for d in data_dirs:
        files += len(list((d / "spool").rglob("*.dcm")))
        with sqlite3.connect(d / "index.sqlite3") as db:
            indexed += db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    return files, indexed


def run_node(work: Path, files: list[Path], associations: int, durable: bool = True,
             journal_write: str | None = None) -> float:
    data_dir = work / "node"
    port = free_port()
    extra = {"ICH_NODE__STORAGE__JOURNAL_WRITE": journal_write} if journal_write else {}
    dt, (proc,) = timed(_node_cmd(data_dir, port, durable), port, files, associations,
                        env=_node_env(associations, durable, **extra), cwd=REPO)
    got, indexed = _count_stored([data_dir])
    if got != len(files) or indexed != len(files):
        raise RuntimeError(f"node stored {got} and indexed {indexed} of {len(files)}: "
                           f"{proc.stderr.read().decode()[-1000:]}")
    return dt


def run_separate_nodes(work: Path, files: list[Path], associations: int) -> float:
    """One independent node per association (own port, data directory, journal and index; one receiver
    each): the node's rate with the load spread perfectly and nothing shared — a diagnosis, not a setup."""
    dirs = [work / f"node-{k}" for k in range(associations)]
    ports = [free_port() for _ in dirs]
    dt, _ = timed([_node_cmd(d, p) for d, p in zip(dirs, ports)], ports, files, associations,
                  env=_node_env(1, ICH_NODE__NODE__RECEIVERS="1"), cwd=REPO)
    got, indexed = _count_stored(dirs)
    if got != len(files) or indexed != len(files):
        raise RuntimeError(f"separate nodes stored {got} and indexed {indexed} of {len(files)}")
    return dt


def run_minimal(work: Path, files: list[Path], associations: int, write: str = "dataset") -> float:
    """benchmarks/minimal_scp.py: hand-written upper layer + durable journal, nothing else (a floor);
    ``write``: how it makes each data set durable (``minimal_scp.py --write``)."""
    port = free_port()
    cmd = [sys.executable, str(REPO / "benchmarks" / "minimal_scp.py"), "--port", str(port), "--dir", str(work),
           "--journal-mb", "128", "--write", write]
    return timed(cmd, port, files, associations)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--associations", type=int, default=1)
    ap.add_argument("--diagnose", action="store_true",
                    help="also time the node with fsync disabled (not durable): where the time goes")
    ap.add_argument("--ceiling", action="store_true",
                    help="also time benchmarks/minimal_scp.py: the least a durable Python receiver can do")
    ap.add_argument("--minimal-write", choices=("dataset", "fragment", "writeback"), nargs="+", default=["dataset"],
                    help="with --ceiling: one durable write per data set, one per fragment as it arrives, or "
                         "fragments written out as they arrive and one fdatasync (minimal_scp.py --write); "
                         "several: one minimal peer each, in the same alternating repeats")
    ap.add_argument("--node-journal-write", choices=("stream", "dataset"), nargs="+", default=None,
                    help="the node's storage.journal_write; several: one node peer each (the first is 'node'), "
                         "in the same alternating repeats")
    ap.add_argument("--workdir", type=Path, default=None, help="where received files go (default: a temp dir under the repo's var/)")
    ap.add_argument("--receivers", type=int, default=1, help="the node's receiver processes (node.receivers)")
    ap.add_argument("--separate", action="store_true",
                    help="also time one independent node per association (own port and index): the load spread "
                         "perfectly, nothing shared — what --receivers could reach at best")
    ap.add_argument("--json", type=Path, default=None, help="write the raw figures here (benchmarks/results/…)")
    args = ap.parse_args()
    os.environ["ICH_NODE__NODE__RECEIVERS"] = str(args.receivers)
    ENV["ICH_NODE__NODE__RECEIVERS"] = str(args.receivers)
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: install dcmtk")
    files = dicom_files(args.data)
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    # Same filesystem as the node's default data dir, so fsync costs are the real ones.
    root = args.workdir or (REPO / "var" / "bench")
    root.mkdir(parents=True, exist_ok=True)
    print(f"{len(files)} images, {size_mb:.1f} MB from {args.data}; {args.associations} association(s); "
          f"{args.repeats} repeats; node receiver processes: {args.receivers}; receivers write under {root}")
    minimal_peers = {("minimal" if w == "dataset" else f"minimal-{w}"): w for w in dict.fromkeys(args.minimal_write)}
    modes = list(dict.fromkeys(args.node_journal_write or [None]))
    node_peers = {("node" if i == 0 else f"node-{m}"): m for i, m in enumerate(modes)}
    peers = (["storescp", *node_peers] + (["node-nosync"] if args.diagnose else [])
             + (list(minimal_peers) if args.ceiling else []) + (["separate"] if args.separate else []))
    runners = {"storescp": run_storescp,
               **{peer: (lambda w, f, a, mode=mode: run_node(w, f, a, journal_write=mode))
                  for peer, mode in node_peers.items()},
               "node-nosync": lambda w, f, a: run_node(w, f, a, durable=False),
               **{peer: (lambda w, f, a, mode=mode: run_minimal(w, f, a, mode)) for peer, mode in minimal_peers.items()},
               "separate": run_separate_nodes}
    times: dict[str, list[float]] = {p: [] for p in peers}
    ratios, floor, separate = [], [], []
    minimal: dict[str, list[float]] = {peer: [] for peer in minimal_peers}
    other_nodes: dict[str, list[float]] = {peer: [] for peer in list(node_peers)[1:]}
    cpu: dict[str, list[float]] = {p: [] for p in peers}
    rss: dict[str, list[float]] = {p: [] for p in peers}
    for r in range(args.repeats):
        order = peers if r % 2 == 0 else peers[::-1]
        this = {}
        for peer in order:
            os.sync()  # no peer pays for the write-back of what an earlier one left dirty
            work = Path(tempfile.mkdtemp(prefix=f"{peer}-", dir=root))
            try:
                this[peer] = runners[peer](work, files, args.associations)
                if LAST_CPU:
                    cpu[peer].append(LAST_CPU[0] / len(files) * 1e3)
                if LAST_RSS:
                    rss[peer].append(max(LAST_RSS))
            finally:
                shutil.rmtree(work, ignore_errors=True)
            times[peer].append(this[peer])
        ratios.append(this["storescp"] / this["node"])
        extra = ""
        for peer, got in other_nodes.items():
            got.append(this["storescp"] / this[peer])
            extra += f"   {peer} {len(files) / this[peer]:7.1f} img/s   ratio {got[-1]:.2f}"
        if args.diagnose:
            floor.append(this["storescp"] / this["node-nosync"])
            extra = f"   node-nosync {len(files) / this['node-nosync']:7.1f} img/s   ratio {floor[-1]:.2f}"
        if args.ceiling:
            for peer, got in minimal.items():
                got.append(this["storescp"] / this[peer])
                extra += f"   {peer} {len(files) / this[peer]:7.1f} img/s   ratio {got[-1]:.2f}"
        if args.separate:
            separate.append(this["storescp"] / this["separate"])
            extra += f"   separate {len(files) / this['separate']:7.1f} img/s   ratio {separate[-1]:.2f}"
        print(f"  repeat {r + 1}: storescp {len(files) / this['storescp']:7.1f} img/s   "
              f"node {len(files) / this['node']:7.1f} img/s   ratio {ratios[-1]:.2f}{extra}")
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"storescp: {len(files) / med['storescp']:.1f} images/s ({size_mb / med['storescp']:.1f} MB/s), no fsync")
    how = ("durable in its journal before each ack, spool file + index commit right after it"
           if os.environ.get("ICH_NODE__STORAGE__JOURNAL_MB", "").strip() != "0"
           else "journal off: spool file fsynced (file + directory) and index committed before each ack")
    print(f"node:     {len(files) / med['node']:.1f} images/s ({size_mb / med['node']:.1f} MB/s), {how}"
          + (f"; storage.journal_write = {node_peers['node']}" if node_peers["node"] else ""))
    for peer, got in other_nodes.items():
        print(f"{peer}: {len(files) / med[peer]:.1f} images/s; ratio to storescp {statistics.median(got):.2f}x "
              f"(storage.journal_write = {node_peers[peer]})")
    bar = "0.9x with one association" if args.associations == 1 else "1.0x of storescp --fork"
    print(f"ratio node/storescp: {statistics.median(ratios):.2f}x (median of per-repeat ratios; issue 13's bar: >= {bar})")
    if args.diagnose:
        print(f"node-nosync: {len(files) / med['node-nosync']:.1f} images/s; ratio to storescp "
              f"{statistics.median(floor):.2f}x = the ceiling of this receive path with durability for free")
    if any(cpu.values()):
        print("receiver CPU per image (user + system, median; load-independent, unlike wall time): "
              + ", ".join(f"{p} {statistics.median(v):.2f} ms" for p, v in cpu.items() if v))
    if any(rss.values()):
        print("peak RSS per receiver process (largest, median over repeats): "
              + ", ".join(f"{p} {statistics.median(v):.0f} MB" for p, v in rss.items() if v))
    if args.ceiling:
        for peer, mode in minimal_peers.items():
            print(f"{peer}:  {len(files) / med[peer]:.1f} images/s; ratio to storescp {statistics.median(minimal[peer]):.2f}x "
                  f"= hand-written upper layer + a durable journal (--minimal-write {mode}), nothing else")
    if args.separate:
        print(f"separate: {len(files) / med['separate']:.1f} images/s; ratio to storescp {statistics.median(separate):.2f}x "
              f"= {args.associations} independent nodes, one association each (nothing shared)")
    if args.json:
        import json

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": " ".join(sys.argv), "images": len(files), "megabytes": round(size_mb, 1),
            "associations": args.associations, "receivers": args.receivers, "repeats": args.repeats,
            "seconds": times, "ratio_per_repeat": ratios, "ratio_median": statistics.median(ratios),
            "cpu_ms_per_image": cpu, "peak_rss_mb": rss, "load_average": os.getloadavg(),
            **({"minimal_peers": minimal_peers, "minimal_ratio_per_repeat": minimal} if args.ceiling else {}),
            **({"node_peers": node_peers, "node_ratio_per_repeat": other_nodes} if args.node_journal_write else {}),
        }, indent=1))


if __name__ == "__main__":
    main()
