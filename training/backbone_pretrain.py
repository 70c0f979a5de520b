"""Pretraining the CNN backbones on synthetic head-CT slices, without the expansion label (issue 16 part 4).

The seed used ImageNet backbones; offline there are none, and the BatchNorm-only warm-up
(``backbone_warmup``) leaves every convolution at its random initialisation. Here the whole network
learns an auxiliary task that any annotated head CT supports, per axial slice: is there hematoma, how
large is its section (log area), is there intraventricular blood, and the clot's mean and spread of HU
on that slice. Neither the expansion label nor the marker flags are targets, so Table 2 stays clean.

Slices come from a dedicated synthetic cohort (its own seed; phantom heads, matrices 256/512,
2.5 and 5 mm, half of the cases with the wider appearance model), cut the v1 way (whole matrix) or the v2
way (240 mm field of view) at random, so one backbone serves both feature recipes.

Runs wherever keras runs: TensorFlow on the node, PyTorch on a GPU machine (``KERAS_BACKEND=torch``);
``pipeline.features.backbones.save_pretrained`` writes the weights backend-independently.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.features import backbones, cnn

log = logging.getLogger(__name__)

TARGETS = ("hematoma", "log_area", "ivh", "mean_hu", "sd_hu")
AREA_NORM = float(np.log1p(5000.0))   # mm²: a 50 cm² section is about the largest a clot reaches
MIN_AREA_MM2 = 5.0                    # a slice "has" hematoma / IVH from this section area on
V2_FOV_MM = cnn.SliceGeometry().fov_mm  # the v2 cut (not via recipe.py: it imports SimpleITK, absent on the GPU machine)
DEFAULT_SEED = 4242                   # no evaluation cohort uses it (2024, 7, 2025, 8, 1626, 1646, 1717)


@dataclass(frozen=True)
class PretrainConfig:
    cases: int = 600
    seed: int = DEFAULT_SEED
    slices_per_case: int = 16
    epochs: int = 8
    batch: int = 64
    learning_rate: float = 1e-3
    val_fraction: float = 0.1
    workers: int = 2
    precision: str = "float32"        # mixed_bfloat16 on a GPU
    max_seconds: float | None = None  # per backbone: stop after the epoch that passes it
    markers: bool = False             # also the case's NCCT signs (blend, black hole, ...) on clot slices

    @property
    def targets(self) -> tuple[str, ...]:
        from training.synth.options import MARKERS

        return TARGETS + (tuple(f"marker_{m}" for m in MARKERS) if self.markers else ())

    def __post_init__(self) -> None:
        if self.cases < 4 or self.slices_per_case < 1 or self.epochs < 1 or self.batch < 1:
            raise ValueError(f"PretrainConfig: cases >= 4, slices_per_case, epochs, batch >= 1; got {self}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"PretrainConfig: val_fraction in (0, 0.5), got {self.val_fraction}")


def case_options(index: int):
    """Generator options of case ``index``: defaults for even cases, the wider appearance for odd ones."""
    from training.synth.options import SynthOptions

    if index % 2 == 0:
        return SynthOptions(matrix=(256, 512)[(index // 2) % 2], thickness_mm=(2.5, 5.0), write_followup=False)
    return SynthOptions(matrix=512, matrix_choices=(256, 512), thickness_mm=(2.5, 5.0), write_followup=False,
                        psf_mm=(0.35, 1.0), sharpen=(0.0, 0.8), noise_textures=("ct", "white", "coarse", "fine"),
                        ssp_tail_mm=(0.0, 1.5), lesion_edge_mm=(0.0, 2.0), noise_hu=(3.0, 8.0))


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize with a Gaussian pre-filter when shrinking (close to the runtime's antialiased
    bilinear; no TensorFlow, so it runs in the generator's worker processes)."""
    from scipy import ndimage

    f = img.shape[0] / size
    if f > 1.0:
        img = ndimage.gaussian_filter(img, sigma=0.45 * f)
    return ndimage.zoom(img, (size / img.shape[0], size / img.shape[1]), order=1, grid_mode=True, mode="nearest")


def case_slices(index: int, seed: int, per_case: int, sizes: tuple[int, ...], markers: bool = False) -> dict:
    """One synthetic case's training slices: windowed uint8 images per size and their targets
    (``markers``: the case's NCCT signs follow, set on the slices that hold clot)."""
    from training.synth import MARKERS, case_seed, generate_case

    case = generate_case(case_seed(seed, index), case_options(index), case_id=f"pre{index:05d}")
    s = case.baseline
    signs = [float(bool(case.markers[m])) for m in MARKERS] if markers else []
    rng = np.random.default_rng([seed, index, 1])
    hu, labels = s.hu, s.mask_on_hu_grid()
    px2 = float(s.acq.pixel_mm) ** 2
    hem_area = (labels == 1).reshape(len(labels), -1).sum(1) * px2
    ivh_area = (labels == 2).reshape(len(labels), -1).sum(1) * px2
    brain = ((hu > 0) & (hu < 80)).reshape(len(hu), -1).mean(1)
    with_blood = np.flatnonzero(hem_area >= MIN_AREA_MM2)
    others = np.flatnonzero((hem_area < MIN_AREA_MM2) & (brain > 0.02))
    n_blood = min(len(with_blood), (2 * per_case) // 3)
    pick = list(rng.choice(with_blood, n_blood, replace=False)) if n_blood else []
    pick += list(rng.choice(others, min(len(others), per_case - n_blood), replace=False)) if len(others) else []
    out = {f"s{size}": [] for size in sizes}
    targets = []
    for z in sorted(int(v) for v in pick):
        img = cnn.window(hu[z])
        if rng.random() < 0.5:   # the v2 cut: a 240 mm field of view about the matrix centre
            img = cnn.physical_fov(img[None, ..., None], (s.acq.pixel_mm, s.acq.pixel_mm), V2_FOV_MM, 0.0)[0, ..., 0]
        for size in sizes:
            out[f"s{size}"].append(np.clip(np.rint(_resize(img, size)), 0, 255).astype(np.uint8))
        clot = hu[z][labels[z] == 1]
        has = hem_area[z] >= MIN_AREA_MM2
        targets.append([float(has), float(np.log1p(hem_area[z]) / AREA_NORM), float(ivh_area[z] >= MIN_AREA_MM2),
                        (float(clot.mean()) - 60.0) / 15.0 if has else 0.0,
                        float(clot.std()) / 10.0 - 1.0 if has else 0.0] + [v if has else 0.0 for v in signs])
    return {**{k: np.asarray(v, np.uint8).reshape(-1, int(k[1:]), int(k[1:])) for k, v in out.items()},
            "y": np.asarray(targets, np.float32).reshape(-1, len(TARGETS) + len(signs)), "case": index}


def slice_dataset(cfg: PretrainConfig, sizes: tuple[int, ...]) -> dict:
    """All cases' slices, concatenated; ``case`` says which case each slice came from."""
    args = [(i, cfg.seed, cfg.slices_per_case, sizes, cfg.markers) for i in range(cfg.cases)]
    if cfg.workers > 1:
        with ProcessPoolExecutor(cfg.workers) as pool:
            parts = list(pool.map(case_slices, *zip(*args), chunksize=4))
    else:
        parts = [case_slices(*a) for a in args]
    data = {k: np.concatenate([p[k] for p in parts]) for k in [f"s{s}" for s in sizes] + ["y"]}
    data["case"] = np.concatenate([np.full(len(p["y"]), p["case"]) for p in parts])
    return data


def aux_loss(y_true, y_pred):
    """Logistic loss for the two presence targets, squared error for the rest; the clot's HU
    statistics count only on slices that hold a clot."""
    from keras import ops

    has = y_true[:, 0]
    logistic = (ops.softplus(y_pred[:, 0]) - has * y_pred[:, 0]
                + ops.softplus(y_pred[:, 2]) - y_true[:, 2] * y_pred[:, 2])
    squared = (4.0 * ops.square(y_pred[:, 1] - y_true[:, 1])
               + 0.5 * has * (ops.square(y_pred[:, 3] - y_true[:, 3]) + ops.square(y_pred[:, 4] - y_true[:, 4])))
    signs = y_pred[:, len(TARGETS):]   # marker columns, if any: logistic, on clot slices only
    logistic = logistic + has * ops.sum(ops.softplus(signs) - y_true[:, len(TARGETS):] * signs, axis=-1)
    return logistic + squared


def build_model(name: str, size: int, n_targets: int = len(TARGETS)):
    """(training model: windowed gray slice -> 5 targets, backbone): the backbone is keras' own network,
    fed exactly what ``CnnFeatureExtractor`` feeds it (gray x 3, keras' ``preprocess_input``)."""
    import keras

    backbone = backbones.get_backbone(name)
    module = getattr(keras.applications, backbone.module)
    base = backbones.keras_network(backbone, size)
    gray = keras.Input((size, size, 1), name="window")   # 0..255
    x = keras.layers.RandomFlip("horizontal")(gray)
    x = keras.layers.Concatenate()([x, x, x])
    x = keras.layers.Lambda(module.preprocess_input, name="preprocess")(x)
    out = keras.layers.Dense(n_targets, dtype="float32", name="aux")(base(x))
    return keras.Model(gray, out), base


class _Batches:
    """uint8 slices -> float32 batches (a keras PyDataset, built lazily so importing needs no keras)."""

    @staticmethod
    def make(images: np.ndarray, y: np.ndarray, batch: int, shuffle: bool, seed: int):
        import keras

        class Batches(keras.utils.PyDataset):
            def __init__(self):
                super().__init__()
                self.rng = np.random.default_rng(seed)
                self.order = np.arange(len(images))
                self.on_epoch_end()

            def __len__(self):
                return int(np.ceil(len(images) / batch))

            def __getitem__(self, i):
                idx = np.sort(self.order[i * batch:(i + 1) * batch])
                return images[idx, ..., None].astype(np.float32), y[idx]

            def on_epoch_end(self):
                if shuffle:
                    self.rng.shuffle(self.order)

        return Batches()


def _validation(model, images: np.ndarray, y: np.ndarray, batch: int) -> dict:
    from sklearn.metrics import roc_auc_score

    p = model.predict(_Batches.make(images, y, batch, False, 0), verbose=0)
    has = y[:, 0] > 0.5
    out = {"slices": int(len(y)), "with_hematoma": int(has.sum())}
    if 0 < has.sum() < len(y):
        out["hematoma_auc"] = float(roc_auc_score(has, p[:, 0]))
    if 0 < (y[:, 2] > 0.5).sum() < len(y):
        out["ivh_auc"] = float(roc_auc_score(y[:, 2] > 0.5, p[:, 2]))
    if has.sum() > 2:
        area = np.expm1(y[has, 1] * AREA_NORM)
        area_hat = np.expm1(np.clip(p[has, 1], 0, 1.5) * AREA_NORM)
        out["area_median_abs_rel_error"] = float(np.median(np.abs(area_hat - area) / np.maximum(area, 1.0)))
        out["mean_hu_mae"] = float(np.mean(np.abs(p[has, 3] - y[has, 3])) * 15.0)
        out["mean_hu_pearson"] = float(np.corrcoef(p[has, 3], y[has, 3])[0, 1])
    signs = {}
    for j in range(len(TARGETS), y.shape[1]):   # marker columns: AUC on the slices that hold clot
        t = y[has, j] > 0.5
        if 0 < t.sum() < len(t):
            signs[j - len(TARGETS)] = float(roc_auc_score(t, p[has, j]))
    if signs:
        out["marker_auc_by_column"] = signs
        out["marker_auc_mean"] = float(np.mean(list(signs.values())))
    return out


def pretrain(name: str, data: dict, cfg: PretrainConfig, out: Path) -> dict:
    """Train ``name`` on ``data`` (``slice_dataset``) and save its backbone to ``out``; returns meta."""
    import keras

    sizes = sorted(int(k[1:]) for k in data if k[0] == "s" and k[1:].isdigit())
    native = backbones.get_backbone(name).input_size
    size = native if native in sizes else sizes[0]   # tests pass one small size
    images, y = data[f"s{size}"], data["y"]
    n_val = max(1, int(round(cfg.cases * cfg.val_fraction)))
    val = data["case"] >= cfg.cases - n_val       # the last cases: whole cases held out
    keras.utils.set_random_seed(cfg.seed)
    keras.mixed_precision.set_global_policy(cfg.precision)
    try:
        model, base = build_model(name, size, y.shape[1])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    steps = int(np.ceil((~val).sum() / cfg.batch)) * cfg.epochs
    schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=max(steps, 1), alpha=0.05)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4), loss=aux_loss)
    t0 = time.time()

    class Budget(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if cfg.max_seconds and time.time() - t0 > cfg.max_seconds:
                log.warning("%s: time budget %.0f s reached after epoch %d", name, cfg.max_seconds, epoch + 1)
                self.model.stop_training = True

    hist = model.fit(_Batches.make(images[~val], y[~val], cfg.batch, True, cfg.seed),
                     validation_data=_Batches.make(images[val], y[val], cfg.batch, False, 0),
                     epochs=cfg.epochs, verbose=2, callbacks=[Budget()])
    seconds = time.time() - t0
    info = {"pretrain": {"task": "per-slice auxiliary targets " + ", ".join(cfg.targets) + " (no expansion label)",
                         "config": asdict(cfg), "train_slices": int((~val).sum()), "val_slices": int(val.sum()),
                         "epochs_run": len(hist.history["loss"]), "seconds": round(seconds, 1),
                         "loss": [round(float(v), 4) for v in hist.history["loss"]],
                         "val_loss": [round(float(v), 4) for v in hist.history.get("val_loss", [])],
                         "validation": _validation(model, images[val], y[val], cfg.batch),
                         "device": _device()}}
    sha = backbones.save_pretrained(base, backbones.get_backbone(name), out, info)
    log.info("%s: %s, sha256 %s", name, info["pretrain"]["validation"], sha)
    return {**info, "sha256_all_weights": sha}


def _device() -> str:
    import keras

    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (torch)"
    return f"{keras.backend.backend()} (cpu)"


def _data_key(cfg: PretrainConfig) -> dict:
    return {"cases": cfg.cases, "seed": cfg.seed, "slices_per_case": cfg.slices_per_case, "markers": cfg.markers}


def run(cfg: PretrainConfig, out: Path, names=("resnet50", "inception_v3"),
        dataset_cache: Path | None = None) -> dict:
    """Generate the slices once (or read them from ``dataset_cache``), pretrain each backbone into
    ``out/<name>/``."""
    for name in names:
        backbones.get_backbone(name)          # an unknown name fails before minutes of generation
    sizes = tuple(sorted({b.input_size for b in backbones.BACKBONES.values()}))
    t0 = time.time()
    if dataset_cache is not None and Path(dataset_cache).is_file():
        with np.load(dataset_cache, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        if json.loads(str(data.pop("config"))) != _data_key(cfg):
            raise ValueError(f"{dataset_cache} was generated with another configuration")
    else:
        data = slice_dataset(cfg, sizes)
        if dataset_cache is not None:
            config = json.dumps(_data_key(cfg))
            np.savez(dataset_cache, config=np.array(config), **data)
    log.info("slices: %d from %d cases (%d with hematoma) in %.0f s", len(data["y"]), cfg.cases,
             int(data["y"][:, 0].sum()), time.time() - t0)
    return {name: pretrain(name, data, cfg, Path(out) / name) for name in names}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--backbones", default="resnet50,inception_v3")
    ap.add_argument("--dataset-cache", type=Path, default=None, help="npz of the generated slices (reused when present)")
    for f, default in asdict(PretrainConfig()).items():
        if isinstance(default, bool):
            ap.add_argument("--" + f.replace("_", "-"), action="store_true")
            continue
        kind = float if f in ("learning_rate", "val_fraction", "max_seconds") else (str if f == "precision" else int)
        ap.add_argument("--" + f.replace("_", "-"), type=kind, default=default)
    a = vars(ap.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out, names, cache = a.pop("out"), a.pop("backbones").split(","), a.pop("dataset_cache")
    res = run(PretrainConfig(**a), out, tuple(names), cache)
    print(json.dumps({k: {"sha256": v["sha256_all_weights"], **v["pretrain"]["validation"]} for k, v in res.items()}))


if __name__ == "__main__":
    main()
