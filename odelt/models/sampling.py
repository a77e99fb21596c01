"""The PyTorch reference samplers: the ground truth every exported / compiled stage is checked against.

Conventions: t=0 is noise, t=1 is data; the model predicts the velocity x1 - x0, so sampling integrates
dx/dt = v(x, t) from t=0 to t=1. `model` is anything with forward(x, t, dt_base, y, length) (a DiT or a
stand-in); calls are batched and run under torch.no_grad.

Solvers are registered in `SOLVERS` (name -> function), k-diffusion style.

Shortcut level for fixed steps: upstream uses dt_base = int(log2 T) and trains only T = 1, 2, ..., 128.
For other T we use round(log2 T) clamped to [0, 7]: e.g. T=3 -> 2 (the 4-step level), T=6 -> 3,
T >= 182 -> 7 (the flow-matching level, the finest the model knows).

Adaptive Dopri5: upstream passes dt_base=0 (the one-step shortcut level) to diffrax's adaptive solve. We
default to dt_base=7 (the flow-matching level), which is the consistent choice for an ODE solver that
takes many small steps; docs/quality.md measures both against 128-step Euler on builtin:digits.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from odelt.errors import ConfigError

MAX_LEVEL = 7


def euler_level(steps: int) -> int:
    """Shortcut level for `steps` Euler steps: round(log2 steps) clamped to [0, 7]."""
    if int(steps) < 1:
        raise ConfigError(f"steps must be >= 1, found {steps}")
    return min(MAX_LEVEL, max(0, int(round(math.log2(int(steps))))))


def _velocity(model, y: Tensor, length: int | Tensor, dt_base: int) -> Callable[[Tensor, float], Tensor]:
    def f(x: Tensor, t: float) -> Tensor:
        b = x.shape[0]
        tt = torch.full((b,), float(t), dtype=torch.float32, device=x.device)
        level = torch.full((b,), float(dt_base), dtype=torch.float32, device=x.device)
        return model(x, tt, level, y, length)
    return f


@torch.no_grad()
def sample_euler(model, noise: Tensor, y: Tensor, length: int | Tensor, steps: int,
                 dt_base: int | None = None) -> Tensor:
    """Fixed-step Euler, upstream's main mode: t_i = i/T, x += v(x, t_i)/T.

    Args:
        noise: x0 (B, C, H, W); y: labels (B,) long (num_classes = null); length: int or (B,).
        dt_base: override the shortcut level (default: euler_level(steps)).
    Returns: x1 (B, C, H, W).
    """
    level = euler_level(steps) if dt_base is None else int(dt_base)
    f = _velocity(model, y, length, level)
    x = noise.float().clone()
    for i in range(steps):
        x = x + f(x, i / steps) / steps
    return x


# Dormand-Prince 5(4) tableau, shared with the runtime (data only: this integrator, its step-size
# controller and error norm are written separately so that the two check each other).
from odelt.runtime.solvers import _DP_A as _A, _DP_C as _C, _DP_E as _E  # noqa: E402


def _rms(err: Tensor, x: Tensor, x_new: Tensor, rtol: float, atol: float) -> float:
    # One norm over the whole batch tensor, as upstream's batched diffrax solve (one shared step size).
    scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
    return float(torch.sqrt(torch.mean((err / scale) ** 2)))


def _initial_step(f, x: Tensor, k1: Tensor, rtol: float, atol: float) -> tuple[float, int]:
    """Hairer's starting step (Solving ODEs I, II.4); returns (h, extra NFE)."""
    scale = atol + rtol * x.abs()
    d0 = float(torch.sqrt(torch.mean((x / scale) ** 2)))
    d1 = float(torch.sqrt(torch.mean((k1 / scale) ** 2)))
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    k2 = f(x + h0 * k1, h0)
    d2 = float(torch.sqrt(torch.mean(((k2 - k1) / scale) ** 2))) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
    return min(100 * h0, h1, 1.0), 1


@torch.no_grad()
def sample_dopri5(model, noise: Tensor, y: Tensor, length: int | Tensor, rtol: float = 1e-3,
                  atol: float = 1e-3, dt_base: int = MAX_LEVEL, max_steps: int = 4096) -> tuple[Tensor, int]:
    """Adaptive Dormand-Prince 5(4) from t=0 to 1 with error control; returns (x1, NFE).

    NFE counts batched model calls. The step size is shared by the batch (one RMS error norm).
    """
    if rtol <= 0 and atol <= 0:
        raise ConfigError(f"dopri5 needs rtol > 0 or atol > 0, found rtol={rtol}, atol={atol}")
    f = _velocity(model, y, length, dt_base)
    x = noise.float().clone()
    t, k1 = 0.0, f(x, 0.0)
    h, nfe = _initial_step(f, x, k1, rtol, atol)
    nfe += 1
    for _ in range(max_steps):
        if t >= 1.0 - 1e-12:
            return x, nfe
        h = min(h, 1.0 - t)
        ks = [k1]
        for i in range(1, 7):
            xi = x + h * sum(a * k for a, k in zip(_A[i], ks) if a != 0.0)
            ks.append(f(xi, t + _C[i] * h))
        nfe += 6
        x_new = xi                                      # stage 7 input is the 5th-order solution (FSAL)
        err = _rms(h * sum(e * k for e, k in zip(_E, ks) if e != 0.0), x, x_new, rtol, atol)
        if err <= 1.0:
            t, x, k1 = t + h, x_new, ks[6]
        h *= min(10.0, max(0.2, 0.9 * (err if err > 0 else 1e-10) ** (-1 / 5)))
    raise ConfigError(f"dopri5 did not reach t=1 within {max_steps} steps (stopped at t={t:.4f}); "
                      "expected looser rtol/atol or a smooth model")


SOLVERS: dict[str, Callable] = {"euler": sample_euler, "dopri5": sample_dopri5}


def sample_labels_noise(n: int, num_classes: int, shape: tuple[int, ...], seed: int) -> tuple[Tensor, Tensor]:
    """Uniform labels (0..num_classes-1, cycling) and N(0, I) noise (n, *shape) from a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    return torch.randn((n, *shape), generator=gen), y
