"""The only real data these machines have: scikit-learn's 8x8 digits (1797 images, 10 classes).

Images come back as float32 NCHW (N, 1, 8, 8) scaled from the raw 0..16 grey levels to [-1, 1],
with int64 labels. `split_digits` gives a fixed, seed-independent train / held-out split so that
the classifier's held-out accuracy means the same thing every time it is measured.

The latent model (`builtin:digits-latent`) works on the digits upsampled to 32x32 so that an SD-style
autoencoder (8x downsampling) has a 4x4 latent: `upsample_digits` repeats each pixel into a 4x4 block
(nearest) and `pool_to_digits` averages 4x4 blocks back, its exact inverse, so the digits classifier
sees the original 8x8 digit whenever a decoded image is exact. Bilinear upsampling would look smoother
but has no exact inverse, and its 8x8 round trip would blur what the classifier is judged on.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

RAW_MAX = 16.0          # sklearn's digits are integer grey levels 0..16
SIDE = 8                # the digits' side
HELD_OUT_EVERY = 5      # every 5th image (by index) is held out: 360 of 1797


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    d = load_digits()
    x = (d.images.astype(np.float32) / RAW_MAX * 2.0 - 1.0)[:, None]   # (N, 1, 8, 8) in [-1, 1]
    y = d.target.astype(np.int64)                                      # (N,)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_digits_nchw() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits: images (N, 1, 8, 8) float32 in [-1, 1] and labels (N,) int64 (read-only)."""
    return _load()


def split_digits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((x_train, y_train), (x_held, y_held)): a fixed split, every 5th image held out."""
    x, y = _load()
    held = np.arange(len(x)) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
    return (x[~held], y[~held]), (x[held], y[held])


def to_unit(x: np.ndarray) -> np.ndarray:
    """[-1, 1] model space -> [0, 1] for display (clipped)."""
    return np.clip((x + 1.0) / 2.0, 0.0, 1.0)


def upsample_digits(x: np.ndarray, factor: int) -> np.ndarray:
    """(N, C, 8, 8) -> (N, C, 8*factor, 8*factor): every pixel repeated into a factor x factor block."""
    x = np.asarray(x)
    return x.repeat(factor, axis=2).repeat(factor, axis=3)


def pool_to_digits(x: np.ndarray) -> np.ndarray:
    """(N, C, 8k, 8k) images (e.g. decoded 32x32) -> (N, C, 8, 8): the mean of each k x k block, the
    inverse of `upsample_digits`. Values are clipped to [-1, 1] first, as a displayed image would be."""
    from odelt.errors import ConfigError

    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[2] != x.shape[3] or x.shape[2] % SIDE:
        raise ConfigError(f"images must be (N, C, 8k, 8k), found {x.shape}")
    k = x.shape[2] // SIDE
    n, c = x.shape[:2]
    return np.clip(x, -1.0, 1.0).reshape(n, c, SIDE, k, SIDE, k).mean(axis=(3, 5))
