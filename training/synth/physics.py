"""Image formation: slab partial-volume averaging, in-plane resolution, correlated noise,
beam-hardening streaks, quantisation to stored CT values."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

STORED_OFFSET = 1024          # stored value = HU + 1024 (RescaleIntercept -1024)
HU_MIN, HU_MAX = -1024, 3071


def slab_average(sub: np.ndarray, n_sub: int) -> np.ndarray:
    """(K*Q, m, m) samples across each slab -> (K, m, m) slab means (partial volume in z)."""
    if n_sub == 1:
        return sub
    k = sub.shape[0] // n_sub
    return sub.reshape(k, n_sub, *sub.shape[1:]).mean(axis=1, dtype=np.float32)


def upsample(img: np.ndarray, step: int) -> np.ndarray:
    """Linear in-plane upsampling by an integer factor, aligned to pixel blocks."""
    if step == 1:
        return img
    if step != 2:
        return ndimage.zoom(img, (1, step, step), order=1, grid_mode=True, mode="nearest").astype(np.float32)
    out = np.empty((img.shape[0], img.shape[1] * 2, img.shape[2] * 2), np.float32)
    for axis in (1, 2):
        prev = np.concatenate([np.take(img, [0], axis), np.take(img, range(img.shape[axis] - 1), axis)], axis)
        nxt = np.concatenate([np.take(img, range(1, img.shape[axis]), axis), np.take(img, [-1], axis)], axis)
        lo = 0.75 * img + 0.25 * prev
        hi = 0.75 * img + 0.25 * nxt
        shape = list(img.shape)
        shape[axis] *= 2
        tmp = np.empty(shape, np.float32)
        sl_lo = [slice(None)] * 3
        sl_hi = [slice(None)] * 3
        sl_lo[axis] = slice(0, None, 2)
        sl_hi[axis] = slice(1, None, 2)
        tmp[tuple(sl_lo)] = lo
        tmp[tuple(sl_hi)] = hi
        img = tmp
    return img


def blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """In-plane point-spread function of a standard (soft-tissue) reconstruction kernel."""
    if sigma_px <= 0.05:
        return img
    return ndimage.gaussian_filter(img, (0, sigma_px, sigma_px), mode="nearest")


def add_noise(img: np.ndarray, sigma_hu: float, rng: np.random.Generator, corr_px: float = 0.7) -> np.ndarray:
    """Add noise with a CT-like (low-pass, correlated) texture and the given standard deviation."""
    if sigma_hu <= 0:
        return img
    n = rng.standard_normal(img.shape, dtype=np.float32)
    n = ndimage.gaussian_filter(n, (0, corr_px, corr_px), mode="wrap")
    n *= sigma_hu / max(float(n.std()), 1e-6)
    return img + n


def streaks(x, y, z, amplitude_hu: float, rng: np.random.Generator) -> np.ndarray:
    """Beam-hardening artefact between the petrous bones (head frame): a dark band across the
    posterior fossa ("Hounsfield bar") plus fainter alternating radial streaks."""
    zc = -40.0
    w_z = np.exp(-((z - zc) / 7.0) ** 2)
    band = np.exp(-((y - 10.0) / 4.5) ** 2) * np.exp(-(x / 40.0) ** 2)
    out = -amplitude_hu * band
    for sx in (-1, 1):
        ang = np.arctan2(y - 20.0, x - sx * 30.0)
        r = np.sqrt((x - sx * 30.0) ** 2 + (y - 20.0) ** 2)
        n = int(rng.integers(5, 10))
        out += 0.45 * amplitude_hu * np.cos(n * ang + rng.uniform(0, 6.28)) * np.exp(-r / 25.0) * (r > 8)
    return (out * w_z).astype(np.float32)


def to_stored(hu: np.ndarray) -> np.ndarray:
    return (np.clip(np.rint(hu), HU_MIN, HU_MAX) + STORED_OFFSET).astype(np.int16)
