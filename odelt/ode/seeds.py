"""Noise and labels from a seed: the one convention every stage draws its inputs by (the runtime
sampler, calibration, schedule learning, the quality table and the PyTorch reference), so that for
one seed they all start from the same x0 and condition on the same classes.

    x0  = np.random.default_rng(seed).standard_normal((n, C, H, W)), float32
    y_i = i % num_classes for a class-conditional model; the null class (= num_classes) when
          num_classes == 1

Why the null class for an unconditional model: upstream trains its one-class model (CelebA) with
every label dropped to the null token (class dropout 1.0) and evaluates it with the null label, so
for such a checkpoint class 0's embedding row was never trained; the null row is the model.
Torch callers convert with torch.from_numpy.
"""

from __future__ import annotations

import numpy as np


def make_noise(seed: int, n: int, shape: tuple[int, ...]) -> np.ndarray:
    """(n, *shape) float32 standard normal noise from `seed`."""
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def make_labels(n: int, num_classes: int) -> np.ndarray:
    """(n,) int32 labels: cycling 0..num_classes-1, or all the null class when num_classes <= 1."""
    if num_classes <= 1:
        return np.full((n,), num_classes, dtype=np.int32)
    return (np.arange(n) % num_classes).astype(np.int32)
