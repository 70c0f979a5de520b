"""Image formation: slab partial-volume averaging, in-plane resolution, correlated noise,
beam-hardening streaks, quantisation to stored CT values."""

from __future__ import annotations

from dataclasses import dataclass

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


def _up2(img: np.ndarray, axis: int) -> np.ndarray:
    """Linear x2 upsampling along one axis, pixel-block aligned (edges replicated)."""
    n = img.shape[axis]
    shape = list(img.shape)
    shape[axis] = 2 * n
    out = np.empty(shape, np.float32)

    def sl(a, b, step=None):
        s = [slice(None)] * img.ndim
        s[axis] = slice(a, b, step)
        return tuple(s)

    even, odd = out[sl(0, None, 2)], out[sl(1, None, 2)]
    np.multiply(img, 0.75, out=even)
    odd[...] = even
    even[sl(1, None)] += 0.25 * img[sl(0, n - 1)]
    even[sl(0, 1)] += 0.25 * img[sl(0, 1)]
    odd[sl(0, n - 1)] += 0.25 * img[sl(1, None)]
    odd[sl(n - 1, None)] += 0.25 * img[sl(n - 1, None)]
    return out


def upsample(img: np.ndarray, step: int) -> np.ndarray:
    """Linear in-plane upsampling by an integer factor, aligned to pixel blocks."""
    if step == 1:
        return img
    if step != 2:
        return ndimage.zoom(img, (1, step, step), order=1, grid_mode=True, mode="nearest").astype(np.float32)
    return _up2(_up2(img, 1), 2)


def blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """In-plane point-spread function of a standard (soft-tissue) reconstruction kernel."""
    if sigma_px <= 0.05:
        return img
    return ndimage.gaussian_filter(img, (0, sigma_px, sigma_px), mode="nearest")


def add_noise(img: np.ndarray, sigma_hu: float, rng: np.random.Generator) -> np.ndarray:
    """Add noise with a CT-like correlated texture (white noise through a separable [1 2 1]/4
    kernel, correlation ~0.7 px) and exactly the given standard deviation, in place."""
    if sigma_hu <= 0:
        return img
    gain = np.float32(sigma_hu / (6.0 / 16.0))        # the 2-D kernel keeps (6/16) of the sd
    for k in range(img.shape[0]):
        n = rng.standard_normal(img.shape[1:], dtype=np.float32)
        r = n.copy()
        r[1:] += n[:-1]
        r[:-1] += n[1:]
        r += n
        c = r.copy()
        c[:, 1:] += r[:, :-1]
        c[:, :-1] += r[:, 1:]
        c += r
        img[k] += c * (gain / 16.0)
    return img


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


def finish(img: np.ndarray, step: int, sigma_hu: float, rng: np.random.Generator, noise=None) -> np.ndarray:
    """Render-grid slabs -> stored HU on the acquisition matrix, slice by slice (cache-friendly):
    upsample, add correlated noise (``noise(slice, sigma_hu, rng)`` in place; default ``add_noise``, the
    CT texture), round and clip as the scanner stores it."""
    add = noise or add_noise
    k, m, _ = img.shape
    out = np.empty((k, m * step, m * step), np.float32)
    for i in range(k):
        sl = upsample(img[i : i + 1], step)
        if sigma_hu > 0:
            add(sl, sigma_hu, rng)
        np.clip(np.rint(sl[0]), HU_MIN, HU_MAX, out=out[i])
    return out


def to_stored(hu: np.ndarray) -> np.ndarray:
    return (np.clip(np.rint(hu), HU_MIN, HU_MAX) + STORED_OFFSET).astype(np.int16)


# --------------------------------------------------------------------------- wider appearance model
@dataclass(frozen=True)
class Appearance:
    """How one series is formed beyond generator 1.0's fixed choices (``SynthOptions`` appearance
    knobs, drawn per series). ``Appearance()`` is exactly 1.0's image formation."""

    psf_mm: float = 0.6              # in-plane PSF sigma
    sharpen: float = 0.0             # unsharp-mask gain of an edge-enhancing kernel (0 = standard kernel)
    noise_texture: str = "ct"        # ct | white | coarse | fine
    noise_corr_px: float = 0.7       # correlation length of "coarse" noise (Gaussian sigma, pixels)
    ssp_tail_mm: float = 0.0         # Gaussian sigma convolved with the boxcar slice profile
    lesion_edge_mm: float = 0.0      # 10-90 % width of the clot margin (0: sharp, partial volume from sampling only)

    @classmethod
    def draw(cls, rng: np.random.Generator, opts) -> "Appearance":
        """One series' appearance from the ranges in ``opts`` (a SynthOptions); fixed draw order."""
        texture = str(rng.choice(list(opts.noise_textures)))
        return cls(psf_mm=float(rng.uniform(*opts.psf_mm)), sharpen=float(rng.uniform(*opts.sharpen)),
                   noise_texture=texture, noise_corr_px=float(rng.uniform(1.0, 1.8)),
                   ssp_tail_mm=float(rng.uniform(*opts.ssp_tail_mm)),
                   lesion_edge_mm=float(rng.uniform(*opts.lesion_edge_mm)))

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def slice_profile(sub: np.ndarray, n_sub: int, tail_sub: float) -> np.ndarray:
    """Slab means through a slice-sensitivity profile with Gaussian tails: the boxcar slab convolved
    with a Gaussian of ``tail_sub`` sub-samples (samples of neighbouring slabs leak in)."""
    if tail_sub > 0.05:
        sub = ndimage.gaussian_filter1d(sub, tail_sub, axis=0, mode="nearest", truncate=3.0)
    return slab_average(sub, n_sub)


def sharpen(img: np.ndarray, gain: float, sigma_px: float) -> np.ndarray:
    """Edge-enhancing (sharp) reconstruction kernel: unsharp masking, which overshoots at edges."""
    if gain <= 0:
        return img
    smooth = ndimage.gaussian_filter(img, (0, sigma_px, sigma_px), mode="nearest")
    return img + np.float32(gain) * (img - smooth)


def textured_noise(shape: tuple[int, int], sigma_hu: float, texture: str, corr_px: float,
                   rng: np.random.Generator) -> np.ndarray:
    """One slice of noise with the given texture and exactly ``sigma_hu`` sd: white; coarse
    (low-pass, blotchy like a soft kernel or iterative reconstruction); fine (high-pass, the
    grainy texture of a sharp kernel)."""
    n = rng.standard_normal(shape, dtype=np.float32)
    if texture == "coarse":
        n = ndimage.gaussian_filter(n, corr_px, mode="wrap")
    elif texture == "fine":
        n = n - ndimage.gaussian_filter(n, 1.0, mode="wrap")
    elif texture != "white":
        raise ValueError(f"unknown noise texture {texture!r}")
    return n * np.float32(sigma_hu / max(float(n.std()), 1e-6))


def finish_textured(img: np.ndarray, step: int, sigma_hu: float, rng: np.random.Generator,
                    look: Appearance) -> np.ndarray:
    """``finish`` with another noise texture ("ct" is ``finish`` itself)."""
    if look.noise_texture == "ct":
        return finish(img, step, sigma_hu, rng)

    def textured(sl: np.ndarray, sigma: float, r: np.random.Generator) -> None:
        sl[0] += textured_noise(sl.shape[1:], sigma, look.noise_texture, look.noise_corr_px, r)

    return finish(img, step, sigma_hu, rng, textured)
