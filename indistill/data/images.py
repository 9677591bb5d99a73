"""Decoding one image file to a small uint8 RGB array (PIL)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: Extensions ImageFolder accepts (torchvision.datasets.folder.IMG_EXTENSIONS).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def decode_resize(path: Path, size: int) -> np.ndarray:
    """The whole image resized to ``size`` x ``size`` (aspect not kept), uint8 ``[H, W, 3]``."""
    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale that is still >= size
        img = img.convert("RGB")
        return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))


def decode_center(path: Path, size: int) -> np.ndarray:
    """Shorter side resized to ``size``, then the central ``size`` x ``size`` crop, uint8 ``[H, W, 3]``."""
    with Image.open(path) as img:
        img.draft("RGB", (size, size))
        img = img.convert("RGB")
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        # resizing the central square in one call == resize shorter side, then center crop
        box = (left, top, left + side, top + side)
        return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, box=box))
