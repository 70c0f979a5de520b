"""``python -m deploy.viewer`` (``make viewer``): OHIF + Orthanc on loopback with the sample studies analysed.

    python -m deploy.viewer [--port 8080] [--workdir var/viewer] [--skip-samples]
    python -m deploy.viewer fetch            # only install OHIF's dist/ from npm (make test does it)

Prints the study links and serves until Ctrl-C; everything lives under ``--workdir`` and is removed
at the next start. Loopback only: nothing is reachable from another machine.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
from pathlib import Path

from deploy.viewer import samples as sample_studies
from deploy.viewer.stack import REPO, MissingTool, Orthanc, ViewerServer, ohif_dist, study_url


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.viewer", description=__doc__.split("\n\n")[0])
    ap.add_argument("action", nargs="?", choices=["serve", "fetch"], default="serve")
    ap.add_argument("--port", type=int, default=8080, help="OHIF on http://127.0.0.1:PORT (default 8080)")
    ap.add_argument("--workdir", type=Path, default=REPO / "var" / "viewer")
    ap.add_argument("--skip-samples", action="store_true", help="start empty (upload with Orthanc's REST API)")
    args = ap.parse_args(argv)
    try:
        dist = ohif_dist(fetch=True)
        if args.action == "fetch":
            print(dist)
            return 0
        shutil.rmtree(args.workdir, ignore_errors=True)
        studies = {} if args.skip_samples else sample_studies.prepare(args.workdir / "samples")
        orthanc = Orthanc(args.workdir / "orthanc").start()
    except MissingTool as exc:
        print(f"missing: {exc}", file=sys.stderr)
        return 2
    server = None
    try:
        sample_studies.upload(orthanc, studies)
        server = ViewerServer(dist, orthanc.http_port, port=args.port).start()
        print(f"\nOHIF {server.url}/  (Orthanc REST {orthanc.url}, DICOM {orthanc.aet}@127.0.0.1:{orthanc.dicom_port})")
        for name, s in studies.items():
            summary = s.result.get("reason") or f"{s.result['volume_ml']} mL, risk {s.result.get('risk')}"
            print(f"  {name:14} {study_url(server.url, s.study_uid)}\n  {'':14} {s.result['status']}: {summary}")
        print("Ctrl-C stops it.")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    finally:
        if server is not None:
            server.stop()
        orthanc.stop()
    return 0


if __name__ == "__main__":        # the pipeline's process pool re-imports __main__: keep this guard
    sys.exit(main())
