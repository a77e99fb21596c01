"""The PyTorch reference samplers: the ground truth every exported / compiled stage is checked against.

Conventions: t=0 is noise, t=1 is data; the model predicts the velocity x1 - x0, so sampling integrates
dx/dt = v(x, t) from t=0 to t=1. `model` is anything with forward(x, t, dt_base, y, length) (a DiT or a
stand-in); calls are batched and run under torch.no_grad.

Solvers are registered in `SOLVERS` (name -> function), k-diffusion style; the integrators are
the runtime's (odelt.ode.solvers), driven through `TorchVelocity`, the one adapter from a
PyTorch model to a solver's f(x, t, n).

Shortcut level for fixed steps: upstream uses dt_base = int(log2 T) and trains only T = 1, 2, ..., 128;
other T get the rounded level (odelt.models.config.level_for_steps).

Adaptive Dopri5: upstream passes dt_base=0 (the one-step shortcut level) to diffrax's adaptive solve. We
default to dt_base=7 (the flow-matching level), which is the consistent choice for an ODE solver that
takes many small steps; docs/quality.md measures both against 128-step Euler on builtin:digits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from odelt.errors import ConfigError
from odelt.ode.schedule import FM_LEVEL, level_for_steps
from odelt.ode import solvers as runtime_solvers
from odelt.ode.seeds import make_labels, make_noise

class TorchVelocity:
    """The velocity f(x, t, n) the runtime's solvers (odelt.ode.solvers) call, over a PyTorch
    model: step n runs at lengths[n] (an int, or a (B,) tensor of per-sample lengths) and shortcut
    level levels[n], with labels y; guidance_scale mixes a null-class call in (v_u + s (v_c - v_u)).
    t is a float or a 0-d tensor (then gradients flow into it). `calls` counts model calls."""

    def __init__(self, model, y: Tensor, lengths: Sequence[int | Tensor], levels: Sequence[int],
                 guidance_scale: float | None = None):
        self.model, self.y, self.lengths, self.levels = model, y, lengths, levels
        self.guidance_scale = None if guidance_scale == 1.0 else guidance_scale
        self.calls = 0

    def __call__(self, x: Tensor, t: Any, n: int) -> Tensor:
        b = x.shape[0]
        tt = t.reshape(1).expand(b).float() if isinstance(t, Tensor) else \
            torch.full((b,), float(t), dtype=torch.float32, device=x.device)
        level = torch.full((b,), int(self.levels[n]), dtype=torch.long, device=x.device)
        length = self.lengths[n] if isinstance(self.lengths[n], Tensor) else int(self.lengths[n])
        self.calls += 1
        v = self.model(x, tt, level, self.y, length)
        if self.guidance_scale is None:
            return v
        null = torch.full_like(self.y, self.model.config.num_classes)
        v_null = self.model(x, tt, level, null, length)
        return v_null + self.guidance_scale * (v - v_null)


@torch.no_grad()
def sample_euler(model, noise: Tensor, y: Tensor, length: int | Tensor, steps: int,
                 dt_base: int | None = None) -> Tensor:
    """Fixed-step Euler, upstream's main mode: t_i = i/T, x += v(x, t_i)/T (the runtime's solver).

    Args:
        noise: x0 (B, C, H, W); y: labels (B,) long (num_classes = null); length: int or (B,).
        dt_base: override the shortcut level (default: level_for_steps(steps)).
    Returns: x1 (B, C, H, W).
    """
    level = level_for_steps(steps) if dt_base is None else int(dt_base)
    f = TorchVelocity(model, y, [length] * steps, [level] * steps)
    return runtime_solvers.SOLVERS["euler"](f, noise.float().clone(), [i / steps for i in range(steps + 1)])


@torch.no_grad()
def sample_dopri5(model, noise: Tensor, y: Tensor, length: int | Tensor, rtol: float = 1e-3,
                  atol: float = 1e-3, dt_base: int = FM_LEVEL, max_steps: int = 4096) -> tuple[Tensor, int]:
    """Adaptive Dormand-Prince 5(4) from t=0 to 1 with error control (the runtime's solver); returns
    (x1, NFE). NFE counts batched model calls. The step size is shared by the batch (one RMS norm)."""
    if rtol <= 0 and atol <= 0:
        raise ConfigError(f"dopri5 needs rtol > 0 or atol > 0, found rtol={rtol}, atol={atol}")
    f = TorchVelocity(model, y, [length], [dt_base])
    x = runtime_solvers.SOLVERS["dopri5"](f, noise.float().clone(), [0.0, 1.0], rtol=rtol, atol=atol,
                                          max_steps=max_steps)
    return x, f.calls


SOLVERS: dict[str, Callable] = {"euler": sample_euler, "dopri5": sample_dopri5}


def sample_labels_noise(n: int, num_classes: int, shape: tuple[int, ...], seed: int) -> tuple[Tensor, Tensor]:
    """N(0, I) noise (n, *shape) and labels from a fixed seed, as the runtime draws them (odelt.ode.seeds:
    cycling classes, the null class for an unconditional model)."""
    return torch.from_numpy(make_noise(seed, n, shape)), torch.from_numpy(make_labels(n, num_classes)).long()
