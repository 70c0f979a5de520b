"""Train model 1 away from its DICOM: prepared volumes packed into one file, fitted on any Keras backend,
finished into a model directory back here.

Why: a lent GPU machine has PyTorch but neither TensorFlow nor SimpleITK, and only 64 MiB travel to it.
``pack`` stores the prepared model-grid volumes of a training run (the same split and preprocessing as
``ich-node train segmenter``) as uint8 in one xz-compressed file, ≈ 0.3 MB a volume; ``fit`` runs
:func:`training.segmenter.fit` there (``KERAS_BACKEND=torch``, patches cut by forked processes) and
writes the best epoch's ``model.keras`` with ``fitted.json``; ``finish`` writes the versioned model
directory here exactly as ``train_segmenter`` does. The packed image is quantised to 1/255 of the HU
window (0.47 HU at 0–120 HU), far below CT noise.

    python -m training.segmenter_bundle pack --cohort C [--extra-cohort E] --out B.npz.xz [--phases baseline]
    KERAS_BACKEND=torch python -m training.segmenter_bundle fit --bundle B.npz.xz --out FITTED [--epochs …]
    python -m training.segmenter_bundle finish --bundle B.npz.xz --fitted FITTED --out models/segmenter/N
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np

from pipeline.segment.config import PreprocessConfig
from pipeline.segment.network import WEIGHTS_FILE, device
from training.segmenter import Prepared, TrainConfig, TrainingSet, fit, write_model_dir

FORMAT = "ich-segmenter-bundle/1"
FITTED_FILE = "fitted.json"


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(a, np.float32) * 255.0), 0, 255).astype(np.uint8)


def pack(data: TrainingSet, preprocess: PreprocessConfig, path: Path) -> Path:
    """One file: every volume's image and soft label as uint8, brain and intraventricular masks as bits."""
    arrays: dict[str, np.ndarray] = {}
    index = []
    for split, items in (("train", data.train), ("val", data.val)):
        for k, item in enumerate(items):
            key = f"{split}{k:04d}"
            neg = item.negative if item.negative is not None else np.zeros(item.image.shape, bool)
            arrays[f"{key}_image"], arrays[f"{key}_label"] = _u8(item.image), _u8(item.label)
            arrays[f"{key}_brain"], arrays[f"{key}_negative"] = np.packbits(item.brain), np.packbits(neg)
            index.append({"key": key, "split": split, "shape": list(item.image.shape), "id": item.key,
                          "window_width_hu": item.window_width_hu})
    header = {"format": FORMAT, "preprocess": preprocess.to_dict(), "training_data": data.training_data,
              "skipped": data.skipped, "prepare_seconds": data.seconds, "volumes": index}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(lzma.compress(buf.getvalue(), preset=6))
    tmp.rename(path)
    return path


def load(path: Path) -> tuple[TrainingSet, PreprocessConfig]:
    """The training set and preprocessing a bundle was packed with (float32 again, as training expects)."""
    with np.load(io.BytesIO(lzma.decompress(Path(path).read_bytes())), allow_pickle=False) as z:
        header = json.loads(z["header"].tobytes())
        if header.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file (format {header.get('format')!r})")
        out: dict[str, list[Prepared]] = {"train": [], "val": []}
        for v in header["volumes"]:
            key, shape, n = v["key"], tuple(v["shape"]), int(np.prod(v["shape"]))
            out[v["split"]].append(Prepared(
                v["id"], z[f"{key}_image"].astype(np.float32) / 255.0, z[f"{key}_label"].astype(np.float32) / 255.0,
                np.unpackbits(z[f"{key}_brain"], count=n).reshape(shape).astype(bool),
                np.unpackbits(z[f"{key}_negative"], count=n).reshape(shape).astype(bool),
                float(v["window_width_hu"])))
    data = TrainingSet(out["train"], out["val"], header["training_data"], header["skipped"],
                       float(header["prepare_seconds"]))
    return data, PreprocessConfig.from_dict(header["preprocess"])


def fit_bundle(bundle: Path, out_dir: Path, config: TrainConfig, say=print) -> dict:
    """Train on a bundle (any Keras backend): ``out_dir/model.keras`` (best epoch) + ``fitted.json``."""
    t0 = time.monotonic()
    data, pre = load(bundle)
    # the threshold is tuned as inference will run: with the left-right flip (finish's default)
    config = replace(config, preprocess=replace(pre, patch=config.preprocess.patch, tta_flips=((2,),)))
    say(f"bundle: {len(data.train)} training / {len(data.val)} validation volumes ({time.monotonic() - t0:.0f} s to load)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = t0 + config.max_minutes * 60 if config.max_minutes is not None else None
    fitted = fit(data.train, data.val, config, out_dir / WEIGHTS_FILE, say, deadline)
    record = {"fitted": fitted, "device": device(), "seconds": {"train": round(time.monotonic() - t0, 1)},
              "train_config": {k: v for k, v in asdict(config).items() if k != "preprocess"},
              "patch": list(config.preprocess.patch)}
    (out_dir / FITTED_FILE).write_text(json.dumps(record, indent=2, default=str))
    return record


def finish(bundle: Path, fitted_dir: Path, out_dir: Path, *, version: str | None = None,
           parent_version: str | None = None, refine: bool = True, tta: bool = True,
           threshold: float | None = None, say=print):
    """The versioned model directory from a bundle and what ``fit`` wrote (another machine, maybe).

    ``threshold`` replaces the one ``fit`` tuned for validation Dice (e.g. one chosen for volume
    agreement on other validation cases); metrics.json keeps both."""
    out_dir = Path(out_dir)
    if (out_dir / "metadata.json").exists():
        raise FileExistsError(f"{out_dir} already holds a model; choose a new version directory")
    record = json.loads((Path(fitted_dir) / FITTED_FILE).read_text())
    if threshold is not None:
        fitted = record["fitted"]
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        fitted["dice_tuned_threshold"], fitted["threshold"] = fitted["threshold"], threshold
        fitted["best"] = fitted["threshold_table"].get(f"{threshold:.1f}", fitted["best"])
    data, pre = load(bundle)
    pre = replace(pre, patch=tuple(record["patch"]), refine=refine, tta_flips=((2,),) if tta else ())
    known = {f.name for f in fields(TrainConfig)}
    kept = {k: v for k, v in record["train_config"].items() if k in known}
    if kept.get("init_from"):  # the parent a fit started from, for the model card
        kept["init_from"] = Path(kept["init_from"])
    config = TrainConfig(**kept, preprocess=pre)
    out_dir.mkdir(parents=True, exist_ok=True)
    import keras  # re-saved without any optimizer state a fit may have stored beside the weights

    keras.models.load_model(Path(fitted_dir) / WEIGHTS_FILE, compile=False).save(out_dir / WEIGHTS_FILE)
    seconds = {"prepare": round(data.seconds, 1), **record["seconds"]}
    seconds["total"] = round(seconds["prepare"] + seconds["train"], 1)
    return write_model_dir(out_dir, data, config, record["fitted"], seconds=seconds, device_name=record["device"],
                           version=version, parent_version=parent_version, say=say)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.segmenter_bundle", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="prepare a training run's volumes here and pack them into one file")
    p.add_argument("--cohort", type=Path, required=True)
    p.add_argument("--extra-cohort", type=Path, action="append", default=[])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--phases", default="baseline,followup", help="training phases packed (validation: baselines)")
    p.add_argument("--spacing", type=float, default=1.5)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    f = sub.add_parser("fit", help="train on a bundle (any Keras backend)")
    f.add_argument("--bundle", type=Path, required=True)
    f.add_argument("--out", type=Path, required=True)
    for name, default in (("epochs", 26), ("steps-per-epoch", 100), ("batch-size", 4), ("base-filters", 8),
                          ("patch", 48), ("sampler-workers", 0), ("seed", 0)):
        f.add_argument(f"--{name}", type=int, default=default)
    for name, default in (("learning-rate", 1e-3), ("hypodense-weight", 1.0), ("hypodense-share", 0.0),
                          ("negative-weight", 1.0)):
        f.add_argument(f"--{name}", type=float, default=default)
    f.add_argument("--max-minutes", type=float, default=None)
    f.add_argument("--init-from", type=Path, default=None, help="a model directory to fine-tune")
    d = sub.add_parser("finish", help="write the model directory from a bundle and a fit")
    d.add_argument("--bundle", type=Path, required=True)
    d.add_argument("--fitted", type=Path, required=True)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--version", default=None)
    d.add_argument("--parent-version", default=None)
    d.add_argument("--threshold", type=float, default=None, help="instead of the Dice-tuned one")
    a = ap.parse_args(argv)
    if a.cmd == "pack":
        from training.segmenter import prepare_training_set

        config = TrainConfig(val_fraction=a.val_fraction, seed=a.seed, workers=a.workers,
                             preprocess=PreprocessConfig(spacing_mm=a.spacing))
        data = prepare_training_set(a.cohort, config, extra_cohorts=a.extra_cohort,
                                    train_phases=tuple(a.phases.split(",")))
        path = pack(data, config.preprocess, a.out)
        print(f"packed {len(data.train)} + {len(data.val)} volumes → {path} ({path.stat().st_size / 1e6:.1f} MB)")
    elif a.cmd == "fit":
        config = TrainConfig(epochs=a.epochs, steps_per_epoch=a.steps_per_epoch, batch_size=a.batch_size,
                             base_filters=a.base_filters, seed=a.seed, learning_rate=a.learning_rate,
                             hypodense_weight=a.hypodense_weight, hypodense_share=a.hypodense_share,
                             negative_weight=a.negative_weight, init_from=a.init_from,
                             sampler_workers=a.sampler_workers, max_minutes=a.max_minutes,
                             preprocess=PreprocessConfig(patch=(a.patch,) * 3))
        fit_bundle(a.bundle, a.out, config)
    else:
        finish(a.bundle, a.fitted, a.out, version=a.version, parent_version=a.parent_version, threshold=a.threshold)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
