"""Train model 1: a small 3D U-Net for hematoma segmentation on a (synthetic) cohort.

Cohort = a folder with ``manifest.csv`` (``ich-node synth``): per case a baseline CT series and its
ground-truth mask (and, when present, the follow-up study's, used as extra training volumes). Every
volume goes through the pipeline's own loading, brain extraction and ``preprocess.to_model_grid``, so
the model trains on exactly what it will see at inference; the prepared arrays are cached.

Training: random 3D patches (biased towards hematoma), augmented by rotation, flipping and scaling,
Dice + binary cross-entropy loss, Adam with cosine decay, whole-volume validation Dice after every
epoch, and the best-Dice weights kept. Output is a versioned model directory loadable by
``pipeline.segment.cnn.CNNSegmenter``.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import logging
import math
import queue
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from scipy import ndimage

from pipeline.models import ModelMetadata
from pipeline.segment.config import PreprocessConfig
from pipeline.segment.network import WEIGHTS_FILE, build_unet, configure_threads, device, predict_grid

# no SimpleITK, pydicom or TensorFlow at import: the training loop also runs on a lent GPU machine that
# has none of them (training.segmenter_bundle); only preparing volumes from DICOM needs them

log = logging.getLogger(__name__)

MODEL_NAME = "ich-unet3d"
TARGET_LABELS = (1,)   # synthetic masks: 1 = intracerebral hematoma (the target), 2 = intraventricular blood
NEGATIVE_LABELS = (2,)  # blood that is NOT the target: patches are also centred here (hard negatives)
REPO_ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------- cohort


@dataclass(frozen=True)
class CohortVolume:
    """One CT series of a cohort with its ground-truth hematoma mask."""

    case_id: str
    phase: str                 # "baseline" | "followup"
    series_dir: Path
    mask_path: Path
    volume_ml: float | None


@dataclass(frozen=True)
class Cohort:
    root: Path
    rows: list[dict]           # manifest rows, as read
    volumes: list[CohortVolume]

    @property
    def case_ids(self) -> list[str]:
        return sorted({v.case_id for v in self.volumes})

    def fingerprint(self, case_ids: set[str] | None = None) -> str:
        """sha256 over the manifest rows used (canonical JSON, sorted by case id)."""
        rows = [r for r in self.rows if case_ids is None or r["case_id"] in case_ids]
        text = "\n".join(json.dumps(r, sort_keys=True) for r in sorted(rows, key=lambda r: r["case_id"]))
        return hashlib.sha256(text.encode()).hexdigest()


def read_cohort(root: Path, phases: tuple[str, ...] = ("baseline", "followup")) -> Cohort:
    """Read ``root/manifest.csv``; paths in it are relative to ``root``."""
    root = Path(root)
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{root} is not a cohort: manifest.csv missing (make one with `ich-node synth`)")
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{manifest} lists no cases")
    for col in ("case_id", "baseline_dir", "baseline_mask"):
        if col not in rows[0]:
            raise ValueError(f"{manifest} has no {col!r} column (columns: {sorted(rows[0])})")
    volumes = []
    for row in rows:
        for phase in phases:
            d, m = row.get(f"{phase}_dir"), row.get(f"{phase}_mask")
            if not d or not m:
                continue
            vol = row.get(f"{phase}_volume_ml")
            volumes.append(CohortVolume(row["case_id"], phase, root / d, root / m,
                                        float(vol) if vol not in (None, "") else None))
    return Cohort(root, rows, volumes)


def split_cases(case_ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic case-level split (a case's baseline and follow-up stay together)."""
    ids = sorted(case_ids)
    rng = np.random.default_rng(seed)
    rng.shuffle(ids)
    n_val = max(1, int(round(val_fraction * len(ids)))) if len(ids) > 1 else 0
    return sorted(ids[n_val:]), sorted(ids[:n_val])


# ------------------------------------------------------------------------------------- preparation


@dataclass
class Prepared:
    """One volume on the model grid: input image, soft label and brain mask (z, y, x)."""

    key: str
    image: np.ndarray
    label: np.ndarray
    brain: np.ndarray
    negative: np.ndarray | None = None  # bool: blood of NEGATIVE_LABELS (intraventricular), looks like the target
    window_width_hu: float = 120.0      # HU per unit of ``image`` (PreprocessConfig.window_hu)
    hypodense: np.ndarray | None = field(default=None, repr=False)  # lazily: see hypodense_hematoma


PREPARATION_FIELDS = ("spacing_mm", "window_hu", "margin_mm", "multiple")


def _cache_key(item: CohortVolume, config: PreprocessConfig, labels: tuple[int, ...]) -> str:
    stat = [(p.stat().st_size, int(p.stat().st_mtime)) for p in (item.mask_path,)]
    grid = {k: v for k, v in config.to_dict().items() if k in PREPARATION_FIELDS}  # not inference-only knobs
    blob = json.dumps([item.case_id, item.phase, str(item.series_dir), str(item.mask_path), stat,
                       grid, list(labels), list(NEGATIVE_LABELS)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare_volume(item: CohortVolume, config: PreprocessConfig, cache_dir: Path | None = None,
                   labels: tuple[int, ...] = TARGET_LABELS) -> Prepared:
    """Load → brain extraction → model grid (the inference path) + the label on the same grid; cached."""
    key = _cache_key(item, config, labels)
    width = float(config.window_hu[1] - config.window_hu[0])
    path = Path(cache_dir) / f"{item.case_id}_{item.phase}_{key}.npz" if cache_dir else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            return Prepared(key, z["image"].astype(np.float32), z["label"].astype(np.float32), z["brain"],
                            z["negative"], width)
    import SimpleITK as sitk

    from pipeline.brain import extract_brain
    from pipeline.segment.preprocess import label_to_model_grid, to_model_grid
    from pipeline.volume import load_series

    volume = load_series(item.series_dir).volume
    brain = extract_brain(volume)
    if not brain.any():
        raise ValueError(f"{item.case_id}/{item.phase}: no brain found")
    model_input = to_model_grid(volume.to_sitk(), brain, config)
    mask = sitk.ReadImage(str(item.mask_path))
    label = label_to_model_grid(mask, model_input, labels)
    negative = label_to_model_grid(mask, model_input, NEGATIVE_LABELS) > 0.5
    prepared = Prepared(key, model_input.image, label.astype(np.float16).astype(np.float32), model_input.brain,
                        negative, width)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, image=prepared.image.astype(np.float16), label=label.astype(np.float16),
                            brain=prepared.brain, negative=negative)
        tmp.rename(path)
        prepared.image = prepared.image.astype(np.float16).astype(np.float32)
    return prepared


def _prepare_safe(args) -> Prepared | Exception:
    item, config, cache_dir = args
    try:
        return prepare_volume(item, config, cache_dir, TARGET_LABELS)
    except Exception as exc:  # noqa: BLE001 - reported per volume by the caller
        return exc if isinstance(exc, (ValueError, OSError)) else RuntimeError(f"{type(exc).__name__}: {exc}")


def prepare_all(items: list[CohortVolume], config: PreprocessConfig, cache_dir: Path | None, workers: int = 1,
                show: bool = True) -> list[tuple[CohortVolume, Prepared | Exception]]:
    """Prepare every volume (cached ones load instantly), in ``workers`` spawned processes."""
    from tqdm import tqdm

    jobs = [(item, config, cache_dir) for item in items]
    if workers <= 1 or len(jobs) <= 1:
        results = [_prepare_safe(j) for j in tqdm(jobs, desc="prepare", unit="vol", disable=not show)]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            results = list(tqdm(pool.map(_prepare_safe, jobs), total=len(jobs), desc="prepare", unit="vol",
                                disable=not show))
    return list(zip(items, results))


# ------------------------------------------------------------------------------------ augmentation

HYPODENSE_HU = 15.0  # hematoma voxels this far below the clot's median density count as hypodense


def hypodense_hematoma(item: Prepared) -> np.ndarray:
    """Hematoma voxels at least ``HYPODENSE_HU`` below the hematoma's median density (computed once)."""
    if item.hypodense is None:
        fg = item.label > 0.5
        if fg.sum() < 10:
            item.hypodense = np.zeros(item.image.shape, bool)
        else:
            step = HYPODENSE_HU / (item.window_width_hu)
            item.hypodense = fg & (item.image < np.median(item.image[fg]) - step)
    return item.hypodense


def sample_patch(item: Prepared, patch: tuple[int, int, int], rng: np.random.Generator,
                 lesion_prob: float = 0.6, negative_prob: float = 0.2, hypodense_share: float = 0.0,
                 augment: bool = True, hypodense_weight: float = 1.0,
                 negative_weight: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (patch) crop of image, soft label and per-voxel loss weight, centred on hematoma with ``lesion_prob``, on
    intraventricular blood with ``negative_prob`` (when the volume has any), else on brain; rotated
    (±15° axial, ±5° tilt), scaled (0.85–1.15) and left-right flipped at random. Of the hematoma-centred
    patches, ``hypodense_share`` are centred on its hypodense part when it has one (see
    :func:`hypodense_hematoma`).

    Why the hard negatives: intraventricular blood has the hematoma's density and is not the target;
    random brain patches rarely land on it, and the model then calls it hematoma. Why the hypodense
    centres: blend sign, black hole and other hypodensities are blood at nearly brain density, a small
    share of hematoma voxels, and where held-out Dice was lowest.

    The weight is 1 everywhere except on hypodense hematoma, where it is ``hypodense_weight``: centring
    patches there did not teach the network to call it (docs/model1.md), so its misses cost more; and on
    intraventricular blood, ``negative_weight``: centring patches there did not stop the network calling
    ventricular blood next to a clot hematoma (docs/model1.md, session 15), so those false calls cost more."""
    fg = item.label > 0.5
    u = rng.random()
    if fg.any() and u < lesion_prob:
        pool = fg
        if hypodense_share > 0:  # no extra random draw otherwise: the default keeps the bundled model's stream
            hypo = hypodense_hematoma(item)
            if hypo.any() and rng.random() < hypodense_share:
                pool = hypo
    elif item.negative is not None and item.negative.any() and u < lesion_prob + negative_prob:
        pool = item.negative
    else:
        pool = item.brain
    if not pool.any():
        pool = np.ones(item.image.shape, bool)
    idx = np.flatnonzero(pool)
    centre = np.array(np.unravel_index(idx[rng.integers(len(idx))], item.image.shape), float)
    centre += rng.uniform(-8, 8, size=3)  # do not always put the lesion dead centre
    matrix = np.eye(3)
    if augment:
        az = math.radians(rng.uniform(-15, 15))
        ax = math.radians(rng.uniform(-5, 5))
        rz = np.array([[1, 0, 0], [0, math.cos(az), -math.sin(az)], [0, math.sin(az), math.cos(az)]])
        rx = np.array([[math.cos(ax), -math.sin(ax), 0], [math.sin(ax), math.cos(ax), 0], [0, 0, 1]])
        scale = rng.uniform(0.85, 1.15)
        matrix = (rz @ rx) / scale
        if rng.random() < 0.5:  # left-right flip (x axis)
            matrix = matrix @ np.diag([1.0, 1.0, -1.0])
    half = (np.asarray(patch, float) - 1) / 2
    offset = centre - matrix @ half

    def warp(volume: np.ndarray) -> np.ndarray:  # every array of the patch moves the same way
        return ndimage.affine_transform(volume, matrix, offset, output_shape=patch, order=1, cval=0.0)

    image, label = warp(item.image), warp(item.label)
    if augment:  # small intensity jitter in window units (≈ ±3 HU offset, ±5 % gain)
        image = np.where(image > 0, image * rng.uniform(0.95, 1.05) + rng.uniform(-0.025, 0.025), 0.0)
    weight = np.ones(patch, np.float32)
    if hypodense_weight != 1.0 and hypodense_hematoma(item).any():
        weight += (hypodense_weight - 1.0) * np.clip(warp(hypodense_hematoma(item).astype(np.float32)), 0, 1)
    if negative_weight != 1.0 and item.negative is not None and item.negative.any():
        weight += (negative_weight - 1.0) * np.clip(warp(item.negative.astype(np.float32)), 0, 1)
    return image.astype(np.float32), np.clip(label, 0, 1).astype(np.float32), weight


def _make_batch(items: list[Prepared], patch: tuple[int, int, int], batch_size: int, rng: np.random.Generator,
                **kw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, ys, ws = zip(*(sample_patch(items[rng.integers(len(items))], patch, rng, **kw) for _ in range(batch_size)))
    return np.stack(xs)[..., None], np.stack(ys)[..., None], np.stack(ws)[..., None]


def _sampler_process(items, patch, batch_size, seed, kw, out) -> None:
    rng = np.random.default_rng(seed)
    try:
        while True:
            out.put(_make_batch(items, patch, batch_size, rng, **kw))
    except Exception as exc:  # noqa: BLE001 - handed to the trainer, which raises it
        out.put(RuntimeError(f"{type(exc).__name__}: {exc}"))


def batches(items: list[Prepared], patch: tuple[int, int, int], batch_size: int, seed: int,
            augment: bool = True, prefetch: int = 4, hypodense_share: float = 0.0,
            hypodense_weight: float = 1.0, workers: int = 0,
            negative_weight: float = 1.0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Endless (image, label, weight) batches made in a background thread (numpy/scipy release the GIL
    while TF trains), or with ``workers`` > 0 in that many forked processes (seeds ``[seed, k]``): a GPU
    step is faster than one core can cut patches."""
    kw = dict(augment=augment, hypodense_share=hypodense_share, hypodense_weight=hypodense_weight,
              negative_weight=negative_weight)
    if workers > 0:
        yield from _process_batches(items, patch, batch_size, seed, kw, workers, prefetch)
        return
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def work() -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            try:
                batch = _make_batch(items, patch, batch_size, rng, **kw)
            except Exception as exc:  # hand the error to the trainer instead of letting it wait forever
                q.put(exc)
                return
            while not stop.is_set():
                try:
                    q.put(batch, timeout=0.5)
                    break
                except queue.Full:
                    continue

    thread = threading.Thread(target=work, daemon=True, name="patch-sampler")
    thread.start()
    try:
        yield from _drain(q.get)
    finally:
        stop.set()


def _drain(get) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The batches ``get`` hands over, until a sampler hands an error instead: then that error, raised here."""
    while True:
        batch = get()
        if isinstance(batch, Exception):
            raise RuntimeError(f"patch sampler failed: {batch}") from batch
        yield batch


def _process_batches(items, patch, batch_size, seed, kw, workers, prefetch):
    import multiprocessing as mp

    ctx = mp.get_context("fork")  # the volumes are inherited, not pickled to each worker
    out = ctx.Queue(maxsize=max(prefetch, 2 * workers))
    procs = [ctx.Process(target=_sampler_process, args=(items, patch, batch_size, [seed, k], kw, out),
                         daemon=True, name=f"patch-sampler-{k}") for k in range(workers)]
    for p in procs:
        p.start()
    try:
        yield from _drain(out.get)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(timeout=5)
        out.close()


# ------------------------------------------------------------------------------------------ metrics


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two bool masks; 1.0 when both are empty."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    denom = pred.sum() + truth.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(pred, truth).sum() / denom)


def dice_bce_loss(y_true, y_pred, weight=None):
    """Soft Dice over the whole batch (stable when patches hold no hematoma) + binary cross-entropy,
    each voxel's cross-entropy times ``weight`` (1 when None: the plain mean)."""
    from keras import ops

    y_pred = ops.clip(y_pred, 1e-6, 1.0 - 1e-6)
    inter = ops.sum(y_true * y_pred)
    soft_dice = (2.0 * inter + 1.0) / (ops.sum(y_true) + ops.sum(y_pred) + 1.0)
    ce = y_true * ops.log(y_pred) + (1.0 - y_true) * ops.log(1.0 - y_pred)
    bce = -ops.mean(ce if weight is None else weight * ce)
    return (1.0 - soft_dice) + bce


def packed_loss(target, y_pred):
    """:func:`dice_bce_loss` with the label and the voxel weight packed as two channels of one target
    (Keras' ``compile``/``train_on_batch`` pass one target, on every backend)."""
    return dice_bce_loss(target[..., :1], y_pred, target[..., 1:])


# --------------------------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    epochs: int = 20
    steps_per_epoch: int = 60
    batch_size: int = 2
    learning_rate: float = 1e-3
    base_filters: int = 8
    depth: int = 3
    norm: str = "instance"               # "instance" | "batch" (see pipeline.segment.cnn.build_unet)
    val_fraction: float = 0.15
    seed: int = 0
    max_minutes: float | None = None     # wall-clock cap; the best checkpoint so far is kept
    threads: int | None = None
    workers: int = 1                     # processes preparing volumes (no TensorFlow in them)
    calibration_volumes: int = 8         # whole training volumes that set batch-norm statistics
    init_from: Path | None = None        # a model directory whose weights training starts from
    hypodense_share: float = 0.0         # of hematoma-centred patches, centred on hypodense blood (sample_patch)
    hypodense_weight: float = 1.0        # cross-entropy weight of hypodense hematoma voxels (sample_patch)
    negative_weight: float = 1.0         # cross-entropy weight of intraventricular blood voxels (sample_patch)
    sampler_workers: int = 0             # processes making patches (0: one thread; a GPU needs several)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)


@dataclass
class TrainResult:
    model_dir: Path
    metrics: dict
    metadata: ModelMetadata


def _git_describe() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def calibrate_batchnorm(model, items: list[Prepared]) -> None:
    """Set every batch-norm layer's inference statistics to the plain average of its batch statistics
    over whole volumes.

    Training sees lesion-centred patches, inference sees whole brain-cropped volumes; the running
    averages collected on patches give a model that segments well in training mode but poorly in
    inference mode. Whole-volume statistics make inference match what it will actually be fed.
    """
    from keras import layers

    bns = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    if not bns or not items:
        return
    saved = [layer.momentum for layer in bns]
    try:
        for k, item in enumerate(items):
            for layer in bns:
                layer.momentum = k / (k + 1.0)  # running mean over k+1 volumes
            model(item.image[None, ..., None], training=True)
    finally:
        for layer, m in zip(bns, saved):
            layer.momentum = m


def validate(model, items: list[Prepared], config: PreprocessConfig) -> list[float]:
    """Whole-volume Dice per validation volume on the model grid (label > 0.5 is the truth)."""
    return [dice(p >= config.threshold, item.label > 0.5) for p, item in zip(_probabilities(model, items, config), items)]


def _probabilities(model, items: list[Prepared], config: PreprocessConfig) -> list[np.ndarray]:
    out = []
    for item in items:
        prob = predict_grid(model, item.image, config)
        prob[~item.brain] = 0.0
        out.append(prob)
    return out


THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def tune_threshold(model, items: list[Prepared], config: PreprocessConfig) -> tuple[float, dict[str, float]]:
    """The probability threshold with the best median validation Dice (patch sampling biased towards
    hematoma inflates the probabilities; the threshold is where that is corrected)."""
    probs = _probabilities(model, items, config)
    table = {f"{t:.1f}": float(np.median([dice(p >= t, it.label > 0.5) for p, it in zip(probs, items)]))
             for t in THRESHOLDS}
    best = max(table, key=lambda k: (table[k], -abs(float(k) - 0.5)))
    return float(best), table


def fit(train_items: list[Prepared], val_items: list[Prepared], config: TrainConfig, weights: Path,
        say: Callable[[str], None] = print, deadline: float | None = None) -> dict:
    """The training loop: patches → Dice+BCE → Adam; whole-volume validation Dice after each epoch;
    the best epoch's model is saved to ``weights``. ``deadline`` (time.monotonic) stops it early."""
    pre = config.preprocess
    # sampler processes fork before the backend starts its threads (and never touch it)
    stream = batches(train_items, tuple(pre.patch), config.batch_size, config.seed,
                     hypodense_share=config.hypodense_share, hypodense_weight=config.hypodense_weight,
                     workers=config.sampler_workers, negative_weight=config.negative_weight)
    configure_threads(config.threads)  # TensorFlow starts only now: preparation workers never see it
    import keras

    keras.utils.set_random_seed(config.seed)
    say(f"training on {device()} ({keras.backend.backend()}): {len(train_items)} volumes, patch {pre.patch}, "
        f"batch {config.batch_size}, {config.epochs}×{config.steps_per_epoch} steps")
    if config.init_from is not None:  # fine-tune a parent version instead of starting from scratch
        model = keras.models.load_model(Path(config.init_from) / WEIGHTS_FILE, compile=False)
        say(f"starting from the weights of {config.init_from}")
    else:
        model = build_unet(config.base_filters, config.depth, norm=config.norm)
    total = max(1, config.epochs * config.steps_per_epoch)
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, total, alpha=0.05)
    # Keras' own train step (compiled by TensorFlow, plain PyTorch elsewhere): no backend code of ours
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=packed_loss, jit_compile=False)

    history, best, best_epoch, stopped = [], -float("inf"), 0, None
    pick = np.random.default_rng(config.seed).permutation(len(train_items))[: config.calibration_volumes]
    calibration = [train_items[i] for i in sorted(pick)]
    try:
        for epoch in range(1, config.epochs + 1):
            t0, losses = time.monotonic(), []
            for _ in range(config.steps_per_epoch):
                x, y, w = next(stream)
                losses.append(float(model.train_on_batch(x, np.concatenate([y, w], axis=-1))))
            t_steps = time.monotonic() - t0
            calibrate_batchnorm(model, calibration)
            # epochs are compared without test-time flips (half the time; the ranking is what counts);
            # the threshold below is tuned the way inference will run, flips included
            val = validate(model, val_items, replace(pre, tta_flips=())) if val_items else []
            val_dice = float(np.median(val)) if val else float("nan")
            score = val_dice if val else -float(np.mean(losses))  # no validation set: lowest loss
            improved = score > best
            if improved:
                best, best_epoch = score, epoch
                model.save(weights)
            history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_median_dice": val_dice,
                            "val_mean_dice": float(np.mean(val)) if val else float("nan"),
                            "seconds": round(time.monotonic() - t0, 1), "train_seconds": round(t_steps, 1)})
            say(f"epoch {epoch}/{config.epochs}  loss {np.mean(losses):.4f}  val median Dice {val_dice:.4f}"
                f"{'  *best*' if improved else ''}  ({time.monotonic() - t0:.0f} s)")
            if deadline is not None and time.monotonic() > deadline:
                stopped = f"time cap of {config.max_minutes} min reached after epoch {epoch}"
                say(stopped)
                break
    finally:  # sampler processes stop with the loop, also when it raises
        stream.close()
    threshold, table = pre.threshold, {}
    if weights.is_file():  # without the optimizer's state: a third of the size, and nothing inference reads
        best_model = keras.models.load_model(weights, compile=False)
        best_model.save(weights)
        if val_items:
            threshold, table = tune_threshold(best_model, val_items, pre)
            best = table[f"{threshold:.1f}"]
            say(f"threshold {threshold} (validation median Dice by threshold: {table})")
    return {"history": history, "best": best if val_items else None, "best_epoch": best_epoch, "stopped": stopped,
            "threshold": threshold, "threshold_table": table}


@dataclass
class TrainingSet:
    """The prepared volumes of one training run, and what ``metadata.json`` says they came from."""

    train: list[Prepared]
    val: list[Prepared]
    training_data: dict           # ModelMetadata.training_data: cohorts, fingerprints, case counts
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0          # spent preparing


def prepare_training_set(cohort_dir: Path, config: TrainConfig, *, extra_cohorts: Sequence[Path] = (),
                         cache_dir: Path | None = None, say: Callable[[str], None] = print, show: bool = True,
                         train_phases: tuple[str, ...] = ("baseline", "followup")) -> TrainingSet:
    """Read the cohorts, split the first one by case (validation: baselines only, like the evaluation),
    prepare every volume through the runtime's own preprocessing (cached)."""
    t_start = time.monotonic()
    cohort = read_cohort(cohort_dir)
    train_ids, val_ids = split_cases(cohort.case_ids, config.val_fraction, config.seed)
    explicit_cache = cache_dir is not None
    cache_dir = Path(cache_dir) if cache_dir else Path(cohort_dir) / ".cache" / "segmenter"
    extras = [read_cohort(d) for d in extra_cohorts]
    jobs = [(v, cache_dir, v.case_id in val_ids) for v in cohort.volumes
            if (v.phase == "baseline" if v.case_id in val_ids else v.phase in train_phases)]
    for extra in extras:
        jobs += [(v, Path(cache_dir) if explicit_cache else extra.root / ".cache" / "segmenter", False)
                 for v in extra.volumes if v.phase in train_phases]
    say(f"preparing {len(jobs)} volumes ({len(train_ids)} train / {len(val_ids)} validation cases"
        f"{f', {sum(len(e.case_ids) for e in extras)} more training cases from {len(extras)} other cohort(s)' if extras else ''}"
        f", {config.workers} worker(s))")
    train_items, val_items, skipped = [], [], []
    for cache in dict.fromkeys(c for _, c, _ in jobs):  # one preparation pass per cache folder
        group = [(v, is_val) for v, c, is_val in jobs if c == cache]
        prepared_all = prepare_all([v for v, _ in group], config.preprocess, cache, config.workers, show=show)
        for (item, prepared), (_, is_val) in zip(prepared_all, group):
            if isinstance(prepared, Exception):  # a case the pipeline cannot read is reported, not fatal
                skipped.append(f"{item.case_id}/{item.phase}: {prepared}")
                log.warning("skipping %s/%s: %s", item.case_id, item.phase, prepared)
            elif is_val:
                val_items.append(prepared)
            else:
                train_items.append(prepared)
    if not train_items:
        raise ValueError(f"no usable training volumes in {cohort_dir} ({len(skipped)} skipped: {skipped[:3]})")
    used = set(train_ids) | set(val_ids)
    data = {"source": "synthetic", "fingerprint": cohort.fingerprint(used),
            "cases": len(used) + sum(len(e.case_ids) for e in extras),
            "volumes": len(train_items) + len(val_items), "cohort": Path(cohort_dir).name}
    if extras:
        data["extra_cohorts"] = [{"cohort": e.root.name, "fingerprint": e.fingerprint(), "cases": len(e.case_ids)}
                                 for e in extras]
    return TrainingSet(train_items, val_items, data, skipped, time.monotonic() - t_start)


def train_segmenter(cohort_dir: Path, out_dir: Path, config: TrainConfig | None = None, *,
                    version: str | None = None, parent_version: str | None = None,
                    cache_dir: Path | None = None, progress: Callable[[str], None] | None = print,
                    extra_cohorts: Sequence[Path] = ()) -> TrainResult:
    """Train on ``cohort_dir`` and write a versioned model directory to ``out_dir``.

    Every case of ``extra_cohorts`` trains (e.g. one rich in a lesion kind the first cohort has few
    of); validation stays the first cohort's split, so runs with and without them compare."""
    config = config or TrainConfig()
    say = progress or (lambda _msg: None)
    out_dir = Path(out_dir)
    if (out_dir / "metadata.json").exists():
        raise FileExistsError(f"{out_dir} already holds a model; choose a new version directory")
    t_start = time.monotonic()
    data = prepare_training_set(cohort_dir, config, extra_cohorts=extra_cohorts, cache_dir=cache_dir, say=say,
                                show=progress is not None)
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = t_start + config.max_minutes * 60 if config.max_minutes is not None else None
    t_train = time.monotonic()
    fitted = fit(data.train, data.val, config, out_dir / WEIGHTS_FILE, say, deadline)
    seconds = {"prepare": round(data.seconds, 1), "train": round(time.monotonic() - t_train, 1),
               "total": round(time.monotonic() - t_start, 1)}
    return write_model_dir(out_dir, data, config, fitted, seconds=seconds, device_name=device(),
                           version=version, parent_version=parent_version, say=say)


def write_model_dir(out_dir: Path, data: TrainingSet, config: TrainConfig, fitted: dict, *, seconds: dict,
                    device_name: str, version: str | None = None, parent_version: str | None = None,
                    say: Callable[[str], None] = print) -> TrainResult:
    """Everything beside the weights (``out_dir/model.keras``, written by :func:`fit`): preprocess.json
    with the tuned threshold, metadata.json, metrics.json, the model card."""
    out_dir = Path(out_dir)
    version = version or (out_dir.name if out_dir.name.isdigit() else "1")
    history, best, best_epoch, stopped = fitted["history"], fitted["best"], fitted["best_epoch"], fitted["stopped"]
    pre = replace(config.preprocess, threshold=fitted["threshold"])
    config = replace(config, preprocess=pre)
    metrics = {
        "validation": {"median_dice": best, "best_epoch": best_epoch, "threshold": pre.threshold,
                       "dice_by_threshold": fitted["threshold_table"],
                       **({"dice_tuned_threshold": fitted["dice_tuned_threshold"]} if "dice_tuned_threshold" in fitted else {}),
                       "cases": len(data.val), "grid": f"model grid {pre.spacing_mm} mm"},
        "train_volumes": len(data.train),
        "skipped": data.skipped,
        "history": history,
        "stopped_early": stopped,
        "seconds": seconds,
        "device": device_name,
        "train_config": {k: v for k, v in asdict(config).items() if k != "preprocess"},
    }
    metadata = ModelMetadata(
        kind="segmenter", version=str(version), name=MODEL_NAME,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        training_data=data.training_data,
        metrics={"val_median_dice": metrics["validation"]["median_dice"]},
        code_version=_git_describe(), parent_version=parent_version,
        extra={"framework": "keras", "architecture": f"3D U-Net depth {config.depth}, "
                                                   f"{config.base_filters} base filters, {config.norm} norm",
               "weights": WEIGHTS_FILE, "target_labels": list(TARGET_LABELS),
               "target": "intracerebral hematoma (intraventricular blood excluded)"},
    )
    pre.write(out_dir)
    metadata.write(out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    write_model_card(out_dir, metadata, metrics, config)
    say(f"wrote {out_dir} (best val median Dice {best} at epoch {best_epoch}, {seconds.get('total', 0) / 60:.1f} min)")
    return TrainResult(out_dir, metrics, metadata)


def write_model_card(out_dir: Path, metadata: ModelMetadata, metrics: dict, config: TrainConfig) -> Path:
    val = metrics["validation"]
    text = f"""# Model card: {metadata.name} v{metadata.version} (hematoma segmenter, model 1)

**Research use only. Trained exclusively on SYNTHETIC head CT (`ich-node synth`); no clinical accuracy
is claimed, and none has been measured on real hemorrhages.**

- Task: voxel-wise intracerebral hematoma segmentation on non-contrast head CT, inside the brain mask.
- Architecture: {metadata.extra['architecture']} (Keras 3; TensorFlow at inference), sigmoid output,
  threshold {config.preprocess.threshold}{f" (validation Dice would pick {val['dice_tuned_threshold']})" if 'dice_tuned_threshold' in val else ''}.
- Input: brain-extracted CT resampled to {config.preprocess.spacing_mm} mm isotropic, HU window
  {tuple(config.preprocess.window_hu)} → [0, 1] (`preprocess.json`, shared with the runtime).
- Training: Dice + binary cross-entropy, Adam (lr {config.learning_rate}, cosine decay), patches
  {tuple(config.preprocess.patch)}, augmentation by rotation, scaling, left-right flip and intensity jitter;
  60 % of patches centred on hematoma, 20 % on intraventricular blood (hard negatives), the rest on brain{
  f"; of the hematoma patches {config.hypodense_share:.0%} centred on its hypodense part" if config.hypodense_share else ""}{
  f"; cross-entropy on hypodense hematoma voxels weighted {config.hypodense_weight:g}×" if config.hypodense_weight != 1 else ""}{
  f"; on intraventricular blood {config.negative_weight:g}×" if config.negative_weight != 1 else ""}{
  f"; fine-tuned from the weights of version {config.init_from.name}" if config.init_from else ""}.
  Trained on {metrics.get('device', '?')}, {config.epochs} × {config.steps_per_epoch} steps of batch {config.batch_size}.
- Data: {metadata.training_data['cases']} synthetic cases (fingerprint `{metadata.training_data['fingerprint'][:16]}…`).
- Validation (synthetic, model grid): median Dice {val['median_dice']} on {val['cases']} held-out volumes,
  best epoch {val['best_epoch']}.
- Code version: `{metadata.code_version}`; created {metadata.created}.
- Limits: the synthetic lesions and heads are simplified; real scans differ (artefacts, calcifications,
  postoperative changes, other pathologies). Evaluate on your own data before any use; see
  `ich-node evaluate segmenter` and `evaluation/` beside this card when present.
"""
    path = Path(out_dir) / "MODEL_CARD.md"
    path.write_text(text)
    return path
