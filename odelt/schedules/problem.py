"""The learning problem shared by every method: a model, teacher pairs and a differentiable rollout.

Teacher pairs are (noise z, class y, teacher sample x_T) with x_T = 128 full-length Euler steps at the
flow-matching shortcut level dt_base = 7 from the same z (the reference sampler the foundation
issue trains the model for). Learning uses one seed stream, split into train and validation;
evaluation uses another stream (`HELD_OUT_SEED_OFFSET`) that learning never sees.

The rollout drives the runtime's SOLVERS with torch tensors, so the gradient of the final sample
flows through the time points, and maps each solver step n to its length l_n and shortcut level
dt_base_n (the solvers never see them).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from odelt.errors import ScheduleError
from odelt.fileio import atomic_path
from odelt.models.dit import DiT
from odelt.models.sampling import TorchVelocity
from odelt.ode.seeds import make_labels, make_noise

NOISE_TAG = "np"           # teacher caches of the numpy noise (odelt.ode.seeds); older torch-noise ones are not reused
TEACHER_STEPS = 128          # full-length Euler steps of the teacher
HELD_OUT_SEED_OFFSET = 1_000_003   # held-out noise: a seed stream learning never draws from


@dataclass(frozen=True)
class Pairs:
    z: Tensor        # (N, C, H, W) noise at t=0
    y: Tensor        # (N,) class labels
    x: Tensor        # (N, C, H, W) teacher sample at t=1

    def __len__(self) -> int:
        return len(self.z)

    def take(self, idx: Any) -> Pairs:
        return Pairs(self.z[idx], self.y[idx], self.x[idx])


def make_velocity(model: DiT, y: Tensor, lengths: Sequence[int], dt_bases: Sequence[int]) -> TorchVelocity:
    """f(x, t, n) for the solvers: the model at step n's length and shortcut level. t may be a python
    float or a 0-d tensor (then gradients flow into it)."""
    return TorchVelocity(model, y, lengths, dt_bases)


@torch.no_grad()
def teacher_samples(model: DiT, z: Tensor, y: Tensor, steps: int = TEACHER_STEPS, chunk: int = 256) -> Tensor:
    """The reference sampler (odelt.models.sampling): full-length Euler, `steps` uniform steps at
    dt_base = log2(steps) (7 for 128)."""
    from odelt.models.sampling import sample_euler

    full = model.config.depth
    return torch.cat([sample_euler(model, z[i:i + chunk], y[i:i + chunk], full, steps)
                      for i in range(0, len(z), chunk)])


def draw_noise(model: DiT, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """n noise tensors and labels from one seed, as the runtime draws them (odelt.ode.seeds)."""
    cfg = model.config
    z = make_noise(seed, n, (cfg.in_channels, cfg.input_size, cfg.input_size))
    return torch.from_numpy(z), torch.from_numpy(make_labels(n, cfg.num_classes)).long()


_CACHE: dict[tuple, Pairs] = {}


def make_pairs(model: DiT, n: int, seed: int, held_out: bool = False, key: str | None = None,
               cache_dir: str | os.PathLike | None = None) -> Pairs:
    """Teacher pairs from seed `seed` (learning) or seed + HELD_OUT_SEED_OFFSET (evaluation).

    key: a model identity (its weights hash) to reuse teacher solves within one process and, with
    cache_dir, across runs (the 128-step teacher is the slowest part of learning on a small CPU).
    """
    s = seed + (HELD_OUT_SEED_OFFSET if held_out else 0)
    ck = (key, n, s, TEACHER_STEPS)
    if key is not None and ck in _CACHE:
        return _CACHE[ck]
    path = Path(cache_dir) / f"{key}-n{n}-s{s}-e{TEACHER_STEPS}-{NOISE_TAG}.pt" if key and cache_dir else None
    if path is not None and path.is_file():
        pairs = _load_pairs(path, model, n)
    else:
        z, y = draw_noise(model, n, s)
        pairs = Pairs(z, y, teacher_samples(model, z, y))
        if path is not None:
            _save_atomic({"z": pairs.z, "y": pairs.y, "x": pairs.x}, path)
    if key is not None:
        _CACHE[ck] = pairs
    return pairs


def _load_pairs(path: Path, model: DiT, n: int) -> Pairs:
    """Read a teacher cache: tensors only (`weights_only`), so a planted file cannot run code; a
    truncated or foreign file is a one-line error naming it."""
    try:
        data = torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        why = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[-1] if lines else "")
        raise ScheduleError(f"{path}: refusing teacher cache ({type(e).__name__}: {why}); "
                            "delete it to recompute") from None
    if not (isinstance(data, dict) and set(data) == {"z", "y", "x"}
            and all(isinstance(v, Tensor) for v in data.values())):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ScheduleError(f"{path}: expected a teacher cache of tensors z, y, x, found {found}; "
                            "delete it to recompute")
    cfg = model.config
    shape = (n, cfg.in_channels, cfg.input_size, cfg.input_size)
    if not tuple(data["z"].shape) == shape == tuple(data["x"].shape) or tuple(data["y"].shape) != (n,):
        raise ScheduleError(f"{path}: expected a teacher cache of noise and samples shaped {shape}, found "
                            f"{tuple(data['z'].shape)} and {tuple(data['x'].shape)}; delete it to recompute")
    return Pairs(data["z"], data["y"], data["x"])


def _save_atomic(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def split(pairs: Pairs, n_train: int) -> tuple[Pairs, Pairs]:
    return pairs.take(slice(0, n_train)), pairs.take(slice(n_train, None))


def rmse(a: Tensor, b: Tensor) -> float:
    return float(torch.sqrt(torch.mean((a - b) ** 2)))
