"""Load benchmark: the embedded queue against Celery + two workers, same studies, same run.

    .venv/bin/python benchmarks/load.py [--studies 20] [--source phantom|heartbeat] [--quiet 2]
                                        [--processes 2] [--modes embedded,celery]

For each mode, on loopback: a fresh Orthanc (the PACS), a fresh data directory, ``ich-node serve``
(embedded: ``worker.processes = --processes`` analysis children; celery: a redis-server plus
``--processes`` ``ich-node worker`` processes of one pool process each, so both modes analyse the same
number of studies at once), then ``--studies`` studies pushed back to back by ``storescu`` (one
association per study). A study is "done" when its SR is in Orthanc (REST polling every 0.25 s).

Printed per mode: median and p95 time from the study's last instance (storescu finished) to its SR
in Orthanc, studies/min (first push to last result), peak RSS of each process (VmHWM, sampled; the
node, each worker, and the largest child), losses (studies without exactly one SEG and one SR), and
the ratios Celery/embedded. Studies: ``phantom`` = copies of philips-phantom-5mm (28 × 512², real
pixels) with new UIDs; ``heartbeat`` = the node's synthetic 24 × 128² head CT.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).with_name("ich-node")
PHANTOM = REPO.parent / "shared" / "data" / "ct" / "philips-phantom-5mm"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SR = "1.2.840.10008.5.1.4.1.1.88."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_class():
    spec = importlib.util.spec_from_file_location("integration_conftest", REPO / "tests" / "integration" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.OrthancServer


def make_studies(root: Path, n: int, source: str) -> list[tuple[str, Path]]:
    import pydicom
    from pydicom.uid import generate_uid

    from dicomnode.heartbeat import synthetic_head_ct

    out = []
    for i in range(n):
        d = root / f"study{i:02d}"
        if source == "heartbeat":
            uid, _ = synthetic_head_ct(d, seed=i)
        else:
            d.mkdir(parents=True)
            uid, series, frame = generate_uid(), generate_uid(), generate_uid()
            for p in sorted(PHANTOM.iterdir()):
                if p.name == "DIRFILE":
                    continue
                ds = pydicom.dcmread(p)
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uid, series, frame
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                ds.save_as(d / p.name)
        out.append((uid, d))
    return out


class PeakRSS(threading.Thread):
    """Samples VmHWM of a process tree every 0.5 s; keeps the peak per role."""

    def __init__(self, roots: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.peak: dict[str, float] = {}
        self.halt = threading.Event()

    @staticmethod
    def _tree(pid: int) -> list[int]:
        kids = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        out, todo = [], [pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo += kids.get(p, [])
        return out

    @staticmethod
    def _hwm_mib(pid: int) -> float:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def sample(self) -> None:
        for role, pid in self.roots.items():
            tree = self._tree(pid)
            self.peak[role] = max(self.peak.get(role, 0.0), self._hwm_mib(pid))
            children = [self._hwm_mib(c) for c in tree[1:]]
            if children:
                key = f"{role} (largest child)"
                self.peak[key] = max(self.peak.get(key, 0.0), max(children))

    def run(self) -> None:
        while not self.halt.wait(0.5):
            self.sample()


def start(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([str(EXE), *args], stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def sop_classes(orthanc, study_uid: str) -> list[str]:
    import requests

    found = requests.post(f"{orthanc.url}/tools/find", timeout=30, json={
        "Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": False}).json()
    return [requests.get(f"{orthanc.url}/instances/{i}/metadata/SopClassUid", timeout=30).text for i in found]


def has_sr(orthanc, study_uid: str) -> bool:
    import requests

    series = requests.post(f"{orthanc.url}/tools/find", timeout=30, json={
        "Level": "Series", "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}}).json()
    return bool(series)


def run_mode(mode: str, studies: list[tuple[str, Path]], work: Path, opts) -> dict:
    work.mkdir(parents=True)
    orthanc = orthanc_class()(work / "orthanc", free_port)
    orthanc.start()
    redis = None
    procs: list[subprocess.Popen] = []
    port = free_port()
    env = {**os.environ, "ICH_NODE__NODE__DATA_DIR": str(work / "var"), "ICH_NODE__STORAGE__MIN_FREE_BYTES": "0",
           "ICH_NODE__SCHEDULER__SWEEP_SECONDS": "0.5", "ICH_NODE__SCHEDULER__RETRY_SECONDS": "2",
           "ICH_NODE__METRICS__ENABLED": "false", "ICH_NODE__WORKER__THREADS": str(opts.threads),
           "TCP_NODELAY": "1"}
    if mode == "celery":
        sys.path.insert(0, str(REPO / "tests" / "dicomnode"))
        from test_queue_celery import RedisServer

        redis = RedisServer(work / "redis", free_port()).start()
        env.update({"ICH_NODE__QUEUE__BACKEND": "celery", "ICH_NODE__QUEUE__REDIS_URL": redis.url,
                    "ICH_NODE__WORKER__PROCESSES": "1"})
    else:
        env["ICH_NODE__WORKER__PROCESSES"] = str(opts.processes)
    try:
        node = start(["serve", "--host", "127.0.0.1", "--port", str(port), "--destination", orthanc.address,
                      "--quiet-seconds", str(opts.quiet)], work / "node.log", env)
        procs.append(node)
        roles = {"node": node.pid}
        if mode == "celery":
            for i in range(opts.processes):
                w = start(["worker", "--name", f"bench{i}@load"], work / f"worker{i}.log", env)
                procs.append(w)
                roles[f"worker{i}"] = w.pid
        deadline = time.monotonic() + 300
        while subprocess.run(["echoscu", "-aec", "ICHNODE", "127.0.0.1", str(port)], capture_output=True).returncode:
            if time.monotonic() > deadline or node.poll() is not None:
                raise RuntimeError(f"node did not start: {(work / 'node.log').read_text()[-2000:]}")
            time.sleep(0.5)
        # both modes: every analysis process has loaded its models before the first push
        logs = [work / f"worker{i}.log" for i in range(opts.processes)] if mode == "celery" else [work / "node.log"]
        while sum(log.read_text().count("ready (models") for log in logs) < opts.processes:
            if time.monotonic() > deadline:
                raise RuntimeError(f"analysis processes did not start: {logs[0].read_text()[-2000:]}")
            time.sleep(0.5)
        rss = PeakRSS(roles)
        rss.start()
        pushed: dict[str, float] = {}
        t0 = time.time()
        for uid, folder in studies:
            r = subprocess.run(["storescu", "-aec", "ICHNODE", "+sd", "127.0.0.1", str(port), str(folder)],
                               capture_output=True, text=True, env=env)
            if r.returncode != 0:
                raise RuntimeError(f"storescu failed: {r.stderr[-500:]}")
            pushed[uid] = time.time()
        push_s = time.time() - t0
        done: dict[str, float] = {}
        deadline = time.monotonic() + opts.timeout
        while len(done) < len(studies) and time.monotonic() < deadline:
            for uid, _ in studies:
                if uid not in done and has_sr(orthanc, uid):
                    done[uid] = time.time()
            time.sleep(0.25)
        rss.halt.set()
        rss.sample()
        time.sleep(2)  # anything sent twice would arrive now
        losses = []
        for uid, _ in studies:
            classes = sop_classes(orthanc, uid)
            if classes.count(SEG) != 1 or sum(c.startswith(SR) for c in classes) != 1:
                losses.append((uid[-12:], classes.count(SEG), sum(c.startswith(SR) for c in classes)))
        analysed = [float(m) for log in logs for m in re.findall(r"analysed in ([0-9.]+) s", log.read_text())]
        ttr = sorted(done[u] - pushed[u] for u in done)
        span = (max(done.values()) - t0) if done else float("nan")
        return {"mode": mode, "studies": len(studies), "delivered": len(done), "push_s": push_s,
                "median_s": statistics.median(ttr) if ttr else float("nan"),
                "p95_s": ttr[min(len(ttr) - 1, int(round(0.95 * (len(ttr) - 1))))] if ttr else float("nan"),
                "studies_per_min": 60 * len(done) / span if done else 0.0, "peak_rss_mib": rss.peak,
                "analysis_median_s": statistics.median(analysed) if analysed else float("nan"),
                "load_avg_1m_end": os.getloadavg()[0],
                "losses": losses}
    finally:
        for p in reversed(procs):
            stop(p)
        if redis is not None:
            redis.stop()
        orthanc.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=20)
    ap.add_argument("--source", choices=("phantom", "heartbeat"), default="phantom")
    ap.add_argument("--quiet", type=float, default=2.0, help="selection.quiet_seconds (part of the time to result)")
    ap.add_argument("--processes", type=int, default=2, help="analyses at once, in both modes")
    ap.add_argument("--threads", type=int, default=1, help="worker.threads (BLAS/TF) per analysis")
    ap.add_argument("--modes", default="embedded,celery")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", type=Path, help="also write the results here")
    opts = ap.parse_args()
    for tool in ("storescu", "echoscu", "redis-server"):
        if shutil.which(tool) is None and not Path(f"/usr/bin/{tool}").exists():
            sys.exit(f"{tool} is needed (make test installs it)")
    results = []
    with tempfile.TemporaryDirectory(prefix="ich-load-") as tmp:
        studies = make_studies(Path(tmp) / "studies", opts.studies, opts.source)
        for mode in opts.modes.split(","):
            print(f"== {mode}: {opts.studies} {opts.source} studies, {opts.processes} analyses at once, "
                  f"quiet period {opts.quiet:g} s", flush=True)
            res = run_mode(mode, studies, Path(tmp) / mode, opts)
            results.append(res)
            print(json.dumps(res, indent=2), flush=True)
    print(f"\n{'mode':<10}{'delivered':>10}{'median s':>10}{'p95 s':>8}{'studies/min':>13}{'analysis s':>12}"
          f"{'load':>6}  peak RSS MiB")
    for r in results:
        rss = ", ".join(f"{k} {v:.0f}" for k, v in r["peak_rss_mib"].items())
        print(f"{r['mode']:<10}{r['delivered']:>6}/{r['studies']:<3}{r['median_s']:>10.1f}{r['p95_s']:>8.1f}"
              f"{r['studies_per_min']:>13.1f}{r['analysis_median_s']:>12.1f}{r['load_avg_1m_end']:>6.1f}  {rss}; "
              f"losses {len(r['losses'])}")
    by = {r["mode"]: r for r in results}
    if {"embedded", "celery"} <= set(by):
        e, c = by["embedded"], by["celery"]
        print(f"\nratio celery/embedded: median {c['median_s'] / e['median_s']:.2f}, p95 {c['p95_s'] / e['p95_s']:.2f}, "
              f"studies/min {c['studies_per_min'] / e['studies_per_min']:.2f}, node peak RSS "
              f"{c['peak_rss_mib']['node'] / e['peak_rss_mib']['node']:.2f}")
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
