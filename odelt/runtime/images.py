"""Sample arrays -> a PNG grid (Pillow, no torch)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from odelt.errors import RuntimeFailure
from odelt.fileio import atomic_path


def to_uint8(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) float in data range [-1, 1] -> (N, H, W, C) uint8 (values outside are clipped)."""
    return np.clip((np.asarray(x) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def grid_image(x: np.ndarray, cols: int | None = None, upscale: int = 1, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) -> one (rows*(H+pad), cols*(W+pad), C) uint8 image; C is 1 or 3."""
    imgs = to_uint8(x)
    n, h, w, c = imgs.shape
    if c not in (1, 3):
        imgs, c = imgs[..., :3] if c > 3 else imgs[..., :1], 3 if c > 3 else 1   # latents: first channels
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = imgs[i]
    if upscale > 1:
        out = out.repeat(upscale, axis=0).repeat(upscale, axis=1)
    return out


def save_png(img: np.ndarray, path: str | os.PathLike) -> Path:
    """Write atomically (temp file in the same folder, then rename)."""
    from PIL import Image

    path = Path(path)
    if path.parent and not path.parent.is_dir():
        raise RuntimeFailure(f"output folder {path.parent} does not exist")
    mode = "L" if img.shape[-1] == 1 else "RGB"
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(img[..., 0] if mode == "L" else img, mode=mode).save(tmp, format="PNG")
    return path


def save_npy(x: np.ndarray, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, x)
    return path
