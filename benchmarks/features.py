"""Benchmark: model-2 radiomics (ours) vs stock pyradiomics, same image + mask, same run; CNN time per case.

    .venv/bin/python benchmarks/features.py [--repeats 3] [--head DIR]

A real head CT (../shared/data/ct/ge-human-head-tilted, loaded by the node's own loader) with a
textured ~35 mL hematoma inserted. Stock = ``RadiomicsFeatureExtractor.execute`` single-threaded (BLAS
and SimpleITK limited to 1 thread); ours = ``pipeline.features.radiomics.RadiomicsExtractor`` with a
2-process pool (started once, as in a worker). Asserts identical feature values; bar: ours >= 3x.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_HEAD = Path(os.environ.get("ICH_CT_DATA") or ROOT.parent / "shared" / "data" / "ct") / "ge-human-head-tilted"


def head_with_hematoma(head_dir: Path, target_ml: float = 35.0, seed: int = 0):
    """(Volume, mask): the real head with an inserted, textured hyperdense ellipsoid of ~target_ml."""
    from pipeline.volume import load_series

    vol = load_series(head_dir).volume
    hu = vol.hu.copy()
    brain = (hu > 20) & (hu < 45)
    cz, cy, cx = (np.array(np.nonzero(brain)).mean(axis=1)).round().astype(int)
    sx, sy, sz = vol.spacing
    z, y, x = np.indices(hu.shape, dtype=np.float32)
    d = lambda a, b, c: (((x - cx - 20 / sx) * sx / a) ** 2 + ((y - cy) * sy / b) ** 2 + ((z - cz) * sz / c) ** 2)  # noqa: E731
    r = (target_ml * 1000 * 3 / (4 * np.pi * 1.2 * 0.9)) ** (1 / 3)
    mask = (d(1.2 * r, r, 0.9 * r) < 1) & (hu > -200)
    rng = np.random.default_rng(seed)
    hu[mask] = 62 + 8 * np.sin(x[mask] * sx / 3) * np.cos(y[mask] * sy / 4) + rng.normal(0, 6, int(mask.sum()))
    return vol.with_hu(hu), mask.astype(np.uint8)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--head", type=Path, default=DEFAULT_HEAD)
    ap.add_argument("--no-cnn", action="store_true")
    args = ap.parse_args()
    if not args.head.is_dir():
        print(f"real head CT not found at {args.head} (set ICH_CT_DATA)", file=sys.stderr)
        return 2

    from pipeline.features.radiomics import RadiomicsExtractor, stock_features

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    vol, mask = head_with_hematoma(args.head)
    image = vol.to_sitk()
    m = sitk.GetImageFromArray(mask)
    m.CopyInformation(image)
    ml = mask.sum() * vol.voxel_volume_ml
    print(f"image {vol.shape[::-1]} (x, y, z) spacing {tuple(round(s, 3) for s in vol.spacing)} mm, "
          f"hematoma {ml:.1f} mL ({int(mask.sum())} voxels), cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")

    ours = RadiomicsExtractor(workers=2)
    t0 = time.perf_counter()
    ours.warm_up()
    print(f"ours: pool start (once per worker process) {time.perf_counter() - t0:.2f} s")
    ours.extract(image, m)  # first call pays lazy imports inside the workers
    t_ours, t_stock, a, b = [], [], None, None
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        t0 = time.perf_counter()
        a = ours.extract(image, m)
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = stock_features(image, m)
        t_stock.append(time.perf_counter() - t0)
    so, ss = statistics.median(t_ours), statistics.median(t_stock)
    n_types = len({k.split("_")[0].split("-")[0] for k in a})
    print(f"radiomics, {len(a)} features, {n_types} image-type families:")
    print(f"  stock pyradiomics (1 thread): {ss:6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in t_stock)})")
    print(f"  ours (crop + 2 processes)   : {so:6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in t_ours)})")
    print(f"  speed-up: {ss / so:.2f}x  (bar >= 3x)")
    same = list(a) == list(b) and all((a[k] == b[k]) or (a[k] != a[k] and b[k] != b[k]) for k in a)
    print(f"  identical feature values: {same}")
    if not same:
        return 1

    if not args.no_cnn:
        from pipeline.features import backbones, cnn

        model_dir = ROOT / "models" / "classifier" / "1"
        for name in ("resnet50", "inception_v3"):
            found = sorted(model_dir.glob(f"{name}-warmup.npz")) + sorted(model_dir.glob(f"backbones/{name}-*.npz"))
            npz = found[0] if found else None
            t0 = time.perf_counter()
            if npz is not None:
                ext = cnn.CnnFeatureExtractor(name, backbones.WarmupWeights(npz))
            else:  # no shipped backbone: time the same network from its seeded initialisation
                ext = cnn.CnnFeatureExtractor.__new__(cnn.CnnFeatureExtractor)
                ext.backbone, ext.input_size, ext.dim = backbones.get_backbone(name), backbones.get_backbone(name).input_size, 2048
                ext.model = backbones.build_seeded(ext.backbone, 1)
            load = time.perf_counter() - t0
            ext.features(vol.hu, mask)
            times = []
            for _ in range(max(3, args.repeats)):
                t0 = time.perf_counter()
                ext.features(vol.hu, mask)
                times.append(time.perf_counter() - t0)
            print(f"cnn {name}: load once {load:.1f} s, features per case {statistics.median(times):.2f} s "
                  f"(3 slices, {ext.input_size} px)")
    return 0 if ss / so >= 3 else 3


if __name__ == "__main__":
    raise SystemExit(main())
