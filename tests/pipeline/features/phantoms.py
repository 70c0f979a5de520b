"""Small head-like phantoms with a hematoma, shared by model-2 feature tests."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def phantom(shape=(12, 48, 48), spacing=(0.9, 0.9, 5.0), centre=(0.0, 4.0, 2.0), radii=(14.0, 11.0, 12.0),
            seed: int = 0) -> tuple[sitk.Image, sitk.Image]:
    """(image, mask): HU noise head, a textured hyperdense ellipsoid; ``centre``/``radii`` in mm (x, y, z)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape, dtype=float)
    xx = (x - shape[2] / 2) * spacing[0]
    yy = (y - shape[1] / 2) * spacing[1]
    zz = (z - shape[0] / 2) * spacing[2]
    head = (xx / 19) ** 2 + (yy / 21) ** 2 + (zz / 40) ** 2 < 1
    img = np.where(head, 35 + rng.normal(0, 6, shape), -1000 + rng.normal(0, 5, shape))
    m = (((xx - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2
         + ((zz - centre[2]) / radii[2]) ** 2) < 1
    img[m] = 60 + 10 * np.sin(xx[m] / 2.0) + rng.normal(0, 8, int(m.sum()))
    image = sitk.GetImageFromArray(img.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin((-20.0, -22.0, -30.0))
    mask = sitk.GetImageFromArray(m.astype(np.uint8))
    mask.CopyInformation(image)
    return image, mask
