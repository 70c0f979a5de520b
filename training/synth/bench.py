"""Generation speed: ``python -m training.synth.bench [--matrix 512] [--cases 3] [--real]``.

Prints CPU seconds per rendered series (``time.process_time``: fair on a shared machine) for each
slice thickness, phantom heads and optionally the real head.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from .case import generate_case
from .options import SynthOptions


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--thickness", default="5,2.5,1")
    ap.add_argument("--real", action="store_true", help="also time the real-head source")
    a = ap.parse_args(argv)
    sources = ["phantom", "real"] if a.real else ["phantom"]
    for src in sources:
        for th in (float(t) for t in a.thickness.split(",")):
            opts = SynthOptions(matrix=a.matrix, thickness_mm=(th,), tilt_fraction=0.3, head_source=src)
            generate_case(0, opts, render=False)          # warm caches (real-head atlas)
            cpu, slices = [], []
            for s in range(a.cases):
                t = time.process_time()
                c = generate_case(100 + s, opts)
                cpu.append(time.process_time() - t)
                slices.append(c.baseline.acq.n_slices)
            print(f"{src:8s} {th:4g} mm  {np.mean(cpu) / 2:5.2f} CPU s/series  (~{np.mean(slices):.0f} slices, "
                  f"{a.cases} cases)", flush=True)


if __name__ == "__main__":
    main()
