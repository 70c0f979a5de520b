"""Turnaround: seconds from the last C-STORE response to SEG + SR stored in the PACS (issue 15, part 4).

    .venv/bin/python benchmarks/turnaround.py [--repeats 5] [--quiet-seconds S] [--studies 5mm,1mm]
                                              [--json benchmarks/results/turnaround.json]

On loopback: a throw-away Orthanc (the PACS) and ``ich-node serve`` as ``make run`` starts it (embedded
defaults, no config file, ``ICH_NODE*`` variables of the caller's environment removed), changed only where a
benchmark must: listen on 127.0.0.1 on free ports (DICOM and ``/metrics``), a fresh data dir, Orthanc as
the destination, and ``selection.quiet_seconds`` when ``--quiet-seconds`` is given.

Studies, each sent by one ``storescu`` association, one at a time (the next only once the node has
delivered the previous one), every time with fresh study/series/SOP UIDs so the node sees a new study:

    5mm  ../shared/data/ct/philips-phantom-5mm (28 × 512², 5 mm, real pixels)
    1mm  a head CT with a hematoma from the project's generator (``ich-node synth --cases 1 --thickness 1
         --tilt-fraction 0 --seed 7``: its baseline, 164 × 512² at 1 mm, lobar hematoma ≈ 6 mL)

Per study: ``turnaround`` = storescu's exit (the association released after the last C-STORE response)
→ both a SEG and an SR series of the study in Orthanc (REST polled every 0.1 s); and the node's own stage
breakdown from ``/metrics``: the increase of ``ichnode_stage_seconds_sum`` per stage over that study
(exactly one delivery between two scrapes, so the increase is that study's value): ``receive_to_queued``
(last instance → job created: the completion decision), ``queued_to_analysed`` (→ result.json written),
``analysed_to_delivered`` (→ everything sent, overlay SC included) and ``time_to_result`` (their sum).

Cold start, reported apart: the node is launched, ``/healthz`` polled until it answers 200 (it answers 503
"warming" while the analysis process loads and warms its models; C-STOREs are taken already), then one study
of each kind is sent right away; their figures (and launch → first SEG + SR) are the cold start, and only
the repeats that follow make the medians. Peak RSS: VmHWM of the node process (with the SCP in it) and
of its largest child (the analysis process), sampled every 0.5 s over the whole run.

Prints the medians of ``--repeats`` and writes every per-study figure, the settings, the machine (cores,
CPU, memory, load average) and the git commit (with the node code's uncommitted changes, if any) to
``--json``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

from benchmarks.peers import (EXE, PHANTOM_5MM, OrthancServer, PeakRSS, copy_study, dicom_files,  # noqa: E402
                              free_port, start_node, stop, storescu)

STAGES = ("receive_to_queued", "queued_to_analysed", "analysed_to_delivered", "time_to_result")
SYNTH_SEED = 7  # case 0 of cohort seed 7 at 1 mm, no tilt: 164 slices, lobar hematoma ≈ 6 mL
POLL_S = 0.1
GOALS_S = {"5mm": 10.0, "1mm": 20.0}  # issue 15


def node_default_quiet_seconds() -> float | None:
    try:
        from dicomnode.config import NodeConfig

        return float(NodeConfig().selection.quiet_seconds)
    except Exception:  # noqa: BLE001 - only reported
        return None


def synth_study(out: Path, seed: int = SYNTH_SEED) -> dict:
    """One synthetic 1 mm head CT with a hematoma (``ich-node synth``); its baseline series folder."""
    r = subprocess.run([str(EXE), "synth", "--cases", "1", "--seed", str(seed), "--thickness", "1",
                        "--tilt-fraction", "0", "--out", str(out)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ich-node synth failed: {r.stderr[-2000:]}")
    with open(out / "manifest.csv", newline="") as f:
        row = next(csv.DictReader(f))
    return {"folder": out / row["baseline_dir"], "source": f"ich-node synth --cases 1 --seed {seed} --thickness 1 "
            "--tilt-fraction 0 (baseline)", "hematoma_ml": float(row["baseline_volume_ml"]),
            "location": row["location"], "slice_thickness_mm": float(row["slice_thickness_mm"])}


def scrape(port: int) -> dict:
    """The node's stage histograms (sum and count per stage) and delivered counter, from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict = {"sum": {}, "count": {}, "delivered": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "ichnode_stage_seconds_sum":
                out["sum"][s.labels["stage"]] = s.value
            elif s.name == "ichnode_stage_seconds_count":
                out["count"][s.labels["stage"]] = s.value
            elif s.name == "ichnode_studies_delivered_total":
                out["delivered"] = s.value
    return out


def healthz(port: int) -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")[:500]
    except (OSError, ValueError) as exc:
        return 0, str(exc)


def machine() -> dict:
    info: dict = {"cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0))}
    try:
        cpu = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
        info["memory_gib"] = round(kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return info


def git_state() -> dict:
    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return r.stdout.rstrip() if r.returncode == 0 else ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "dicomnode", "pipeline", "models").splitlines()]
    return {"commit": git("rev-parse", "HEAD").strip(), "uncommitted_node_code": dirty}


class Run:
    """Orthanc + the node, the studies sent one at a time, the figures collected."""

    def __init__(self, root: Path, quiet_s: float | None, timeout: float, classifier: str | None = None) -> None:
        self.root, self.timeout, self.classifier = root, timeout, classifier
        self.orthanc = OrthancServer(root / "orthanc")
        self.port, self.metrics_port = free_port(), free_port()
        self.log = root / "node.log"
        self.args = ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(root / "var"),
                     "--destination", self.orthanc.address] + ([] if quiet_s is None else ["--quiet-seconds", f"{quiet_s:g}"])
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ICH_NODE")}  # embedded defaults
        self.env["ICH_NODE__METRICS__PORT"] = str(self.metrics_port)
        self.node: subprocess.Popen | None = None
        self.rss: PeakRSS | None = None
        self.launched = 0.0
        self.analysis_ready_s: float | None = None  # /healthz 200: analysis processes warmed (503 "warming" before)
        self.answered_s: float | None = None

    def overrides(self) -> dict:
        return {"node.host": "127.0.0.1", "node.port": self.port, "node.data_dir": "<fresh temp dir>",
                "destinations": ["ORTHANC@127.0.0.1:<free port>"], "metrics.port": self.metrics_port,
                **({"selection.quiet_seconds": float(self.args[-1])} if "--quiet-seconds" in self.args else {}),
                **({"served classifier": self.classifier} if self.classifier is not None else {})}

    def _watch(self) -> None:
        """Between polls: the node still runs."""
        if self.node.poll() is not None:
            raise RuntimeError(f"the node exited with {self.node.returncode}:\n{self.log.read_text()[-3000:]}")

    def start(self) -> dict:
        self.orthanc.start()
        if self.classifier is not None:  # a bundled version other than the newest, promoted as an admin would
            r = subprocess.run([str(EXE), "models", "promote", f"classifier:{self.classifier}",
                                "--data-dir", str(self.root / "var"), "--reason", "turnaround benchmark"],
                               capture_output=True, text=True, env=self.env, cwd=REPO, timeout=300)
            if r.returncode != 0:
                raise RuntimeError(f"ich-node models promote classifier:{self.classifier} failed: {r.stderr[-2000:]}")
        self.launched = time.time()
        self.node = start_node(self.args, self.log, self.env, cwd=REPO)
        self.rss = PeakRSS({"node": self.node.pid})
        self.rss.start()
        deadline = time.monotonic() + 600
        while True:
            self._watch()
            code, body = healthz(self.metrics_port)
            if code in (200, 503) and self.answered_s is None:  # receiving; 503 "warming" until the models are
                self.answered_s = round(time.time() - self.launched, 2)
            if code == 200:  # ... loaded and warmed in the analysis process
                self.analysis_ready_s = time.time() - self.launched
                return {"healthz_first_answer_s": self.answered_s, "healthz_ok_s": round(self.analysis_ready_s, 2),
                        "healthz": body}
            if time.monotonic() > deadline:
                raise RuntimeError(f"/healthz not ok within 600 s ({code} {body}):\n{self.log.read_text()[-3000:]}")
            time.sleep(POLL_S)

    def study(self, kind: str, uid: str, folder: Path, slices: int) -> dict:
        before = scrape(self.metrics_port)
        t0 = time.time()
        storescu(self.port, [folder], env={**os.environ, "TCP_NODELAY": "1"})
        last = time.time()
        deadline = time.monotonic() + self.timeout
        modalities: list[str] = []
        while not {"SEG", "SR"} <= set(modalities):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind}: no SEG + SR in Orthanc within {self.timeout:.0f} s (has {modalities}):\n"
                                   f"{self.log.read_text()[-3000:]}")
            self._watch()
            time.sleep(POLL_S)
            modalities = self.orthanc.study_modalities(uid)
        done = time.time()
        after = scrape(self.metrics_port)  # the node counts the delivery once every series is sent
        while after["delivered"] <= before["delivered"] and time.monotonic() < deadline:
            self._watch()
            time.sleep(0.2)
            after = scrape(self.metrics_port)
        deliveries = after["delivered"] - before["delivered"]
        stages = {s: round(after["sum"].get(s, 0.0) - before["sum"].get(s, 0.0), 3) for s in STAGES
                  if after["count"].get(s, 0.0) - before["count"].get(s, 0.0) == 1} if deliveries == 1 else {}
        return {"study": kind, "slices": slices, "send_s": round(last - t0, 3), "turnaround_s": round(done - last, 3),
                "stages_s": stages, "deliveries_counted": deliveries,
                "series_in_orthanc": sorted(self.orthanc.study_modalities(uid)),
                "load_avg_1m": round(os.getloadavg()[0], 2), "since_launch_s": round(done - self.launched, 2)}

    def stop(self) -> None:
        if self.rss is not None:
            self.rss.sample()
            self.rss.halt.set()
        if self.node is not None:
            stop(self.node)
        self.orthanc.stop()


def summarise(rows: list[dict]) -> dict:
    out = {}
    for kind in dict.fromkeys(r["study"] for r in rows):
        mine = [r for r in rows if r["study"] == kind]
        ts = [r["turnaround_s"] for r in mine]
        out[kind] = {"repeats": len(ts), "slices": mine[0]["slices"], "median_s": round(statistics.median(ts), 2),
                     "min_s": min(ts), "max_s": max(ts),
                     "stages_median_s": {s: round(statistics.median(v), 2) for s in STAGES
                                         if (v := [r["stages_s"][s] for r in mine if s in r["stages_s"]])},
                     "goal_s": GOALS_S.get(kind)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="measured studies of each kind (after the cold ones)")
    ap.add_argument("--quiet-seconds", type=float, default=None,
                    help="selection.quiet_seconds of the node (default: the node's own default)")
    ap.add_argument("--studies", default="5mm,1mm", help="which studies, in this order: 5mm, 1mm or both")
    ap.add_argument("--timeout", type=float, default=900, help="seconds a study may take before the run fails")
    ap.add_argument("--workdir", type=Path, help="where the run folder is made (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the run folder (node log, data dir, studies)")
    ap.add_argument("--json", type=Path, help="write the raw per-study results here")
    ap.add_argument("--classifier", help="serve this bundled classifier version (default: the newest, as a new node)")
    opts = ap.parse_args(argv)
    kinds = [k.strip() for k in opts.studies.split(",") if k.strip()]
    if not kinds or set(kinds) - {"5mm", "1mm"} or opts.repeats < 1:
        ap.error("--studies takes 5mm, 1mm or both; --repeats at least 1")
    for tool in ("storescu", "echoscu"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (dcmtk; make test installs it)")
    if "5mm" in kinds and not PHANTOM_5MM.is_dir():
        sys.exit(f"{PHANTOM_5MM} not found (the project's shared CT data)")

    root = Path(tempfile.mkdtemp(prefix="ich-turnaround-", dir=opts.workdir))
    quiet = opts.quiet_seconds if opts.quiet_seconds is not None else node_default_quiet_seconds()
    report: dict = {"benchmark": "turnaround", "command": "benchmarks/turnaround.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(), "git": git_state(), "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}
    run = None
    try:
        sources: dict[str, dict] = {}
        if "5mm" in kinds:
            sources["5mm"] = {"folder": PHANTOM_5MM, "source": str(PHANTOM_5MM.relative_to(REPO.parent))}
        if "1mm" in kinds:
            print("generating the 1 mm study (ich-node synth) ...", flush=True)
            sources["1mm"] = synth_study(root / "synth")
        for s in sources.values():
            s["slices"] = len(dicom_files(s["folder"]))
        print("copying the studies with fresh UIDs ...", flush=True)
        copies = {k: [copy_study(s["folder"], root / "studies" / f"{k}-{i}") for i in range(opts.repeats + 1)]
                  for k, s in sources.items()}
        run = Run(root, opts.quiet_seconds, opts.timeout, opts.classifier)
        report["settings"] = {
            "repeats": opts.repeats, "quiet_seconds": quiet,
            "quiet_seconds_from": "--quiet-seconds" if opts.quiet_seconds is not None else "the node's default",
            "node": "ich-node serve, embedded defaults except " + json.dumps(run.overrides()),
            "poll_interval_s": POLL_S, "order": "one study at a time; in each repeat " + ", ".join(kinds),
            "studies": {k: {kk: (str(v) if isinstance(v, Path) else v) for kk, v in s.items() if kk != "folder"}
                        for k, s in sources.items()}}
        print(f"starting Orthanc and the node (quiet_seconds {quiet:g} s, {report['settings']['quiet_seconds_from']}) ...",
              flush=True)
        cold = run.start()
        print(f"  /healthz ok {cold['healthz_ok_s']:.1f} s after launch; cold studies ...", flush=True)
        cold_rows = []
        for k in kinds:
            uid, files = copies[k][0]
            cold_rows.append(run.study(k, uid, files[0].parent, len(files)))
            print(f"  cold {k}: {cold_rows[-1]['turnaround_s']:.1f} s", flush=True)
        cold.update({"analysis_process_ready_s": None if run.analysis_ready_s is None else round(run.analysis_ready_s, 2),
                     "first_result_s": cold_rows[0]["since_launch_s"], "studies": cold_rows})
        report["cold_start"] = cold
        rows = []
        for i in range(opts.repeats):
            for k in kinds:
                uid, files = copies[k][i + 1]
                rows.append({"repeat": i + 1, **run.study(k, uid, files[0].parent, len(files))})
                r = rows[-1]
                print(f"  repeat {i + 1} {k}: {r['turnaround_s']:.1f} s  "
                      + ", ".join(f"{s} {v:.1f}" for s, v in r["stages_s"].items()), flush=True)
        run.rss.sample()
        report["peak_rss_mib"] = {("analysis process (largest child)" if "child" in k else k): round(v)
                                  for k, v in run.rss.peak.items()}
        report["summary"] = summarise(rows)
        report["repeats"] = rows
        report["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        report["note"] = ("Measured on a shared machine: other work may have used the CPUs during the run; "
                          "see the load averages. The node ran this working tree's code (git.uncommitted_node_code).")
    finally:
        if run is not None:
            run.stop()
        if opts.keep:
            print(f"run folder kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print_report(report)
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return 0


def print_report(report: dict) -> None:
    s = report["settings"]
    print(f"\nturnaround: storescu exit (last C-STORE answered) -> SEG + SR in Orthanc, median of {s['repeats']}, "
          f"quiet_seconds {s['quiet_seconds']:g} ({s['quiet_seconds_from']}); {report['machine'].get('cores')} cores")
    for kind, v in report["summary"].items():
        stages = ", ".join(f"{k} {x:.1f}" for k, x in v["stages_median_s"].items())
        goal = v["goal_s"]
        verdict = "" if goal is None else f"  (goal <= {goal:g} s: {'met' if v['median_s'] <= goal else 'missed'})"
        print(f"  {kind} ({v['slices']} slices): {v['median_s']:.1f} s [{v['min_s']:.1f}-{v['max_s']:.1f}]{verdict}")
        print(f"      node stages, median s: {stages}")
    c = report["cold_start"]
    ready = c["analysis_process_ready_s"]
    print(f"cold start: /healthz answers {c.get('healthz_first_answer_s')} s after launch (receiving), ok (analysis "
          f"warmed) {ready:.1f} s; first SEG + SR {c['first_result_s']:.1f} s after launch; first studies "
          + ", ".join(f"{r['study']} {r['turnaround_s']:.1f} s" for r in c["studies"]))
    print("peak RSS (VmHWM): " + ", ".join(f"{k} {v} MiB" for k, v in report["peak_rss_mib"].items()))
    for kind, v in report["summary"].items():
        assert math.isfinite(v["median_s"])
        print(f"RESULT {kind} median_s={v['median_s']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
