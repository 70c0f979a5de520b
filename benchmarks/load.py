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
import json
import os
import re
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

from benchmarks.peers import (PHANTOM_5MM as PHANTOM, SEG_CLASS as SEG, SR_PREFIX as SR, OrthancServer, PeakRSS,  # noqa: E402
                              copy_study, free_port, start_node as start, stop, storescu, wait_echo)


def make_studies(root: Path, n: int, source: str) -> list[tuple[str, Path]]:
    from dicomnode.observe.heartbeat import synthetic_head_ct

    out = []
    for i in range(n):
        d = root / f"study{i:02d}"
        if source == "heartbeat":
            uid, _ = synthetic_head_ct(d, seed=i)
        else:
            uid, _ = copy_study(PHANTOM, d)
        out.append((uid, d))
    return out


def run_mode(mode: str, studies: list[tuple[str, Path]], work: Path, opts) -> dict:
    work.mkdir(parents=True)
    orthanc = OrthancServer(work / "orthanc", free_port)
    orthanc.start()
    redis = None
    procs: list[subprocess.Popen] = []
    port = free_port()
    env = {**os.environ, "ICH_NODE__NODE__DATA_DIR": str(work / "var"), "ICH_NODE__STORAGE__MIN_FREE_BYTES": "0",
           "ICH_NODE__SCHEDULER__SWEEP_SECONDS": "0.5", "ICH_NODE__SCHEDULER__RETRY_SECONDS": "2",
           "ICH_NODE__METRICS__ENABLED": "false", "ICH_NODE__WORKER__THREADS": str(opts.threads),
           "TCP_NODELAY": "1"}
    if mode == "celery":
        from tests.conftest import RedisServer  # the tests' redis-server runner (REPO is on sys.path)

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
        try:
            wait_echo(port, node, timeout=300, period=0.5)
        except RuntimeError:
            raise RuntimeError(f"node did not start: {(work / 'node.log').read_text()[-2000:]}") from None
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
            storescu(port, [folder], env=env)
            pushed[uid] = time.time()
        push_s = time.time() - t0
        done: dict[str, float] = {}
        deadline = time.monotonic() + opts.timeout
        while len(done) < len(studies) and time.monotonic() < deadline:
            for uid, _ in studies:
                if uid not in done and "SR" in orthanc.study_modalities(uid):
                    done[uid] = time.time()
            time.sleep(0.25)
        rss.halt.set()
        rss.sample()
        time.sleep(2)  # anything sent twice would arrive now
        losses = []
        for uid, _ in studies:
            classes = orthanc.study_sop_classes(uid)
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
