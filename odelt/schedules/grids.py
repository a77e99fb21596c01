"""Learnable time grids (LD3) and per-step AMED constants, as small torch modules.

Convention: t=0 noise -> t=1 data, grids increase. Every module's `forward()` returns the tensors
a rollout needs; gradients flow from the final sample back to the logits.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from odelt.errors import ScheduleError

EVAL_WINDOW = 0.5            # LD3's win_rate: eval shifts stay within half the smallest gap
MIN_GAP = 1e-4               # smallest grid step a learned grid can take


def grid_from_logits(xi: Tensor) -> Tensor:
    """(N,) logits -> (N+1,) grid 0 = t_0 < t_1 < ... < t_N = 1.

    softmax keeps every gap positive, and a floor of MIN_GAP keeps it positive in float32 too (a
    softmax of spread-out logits underflows to 0, which would merge two grid points), so the grid is
    strictly monotone by construction. The endpoints are pinned exactly (t_0 is a constant 0; the
    last entry is set to 1 explicitly so rounding cannot move it).
    """
    n = xi.numel()
    gaps = torch.softmax(xi, dim=0) * (1 - n * MIN_GAP) + MIN_GAP   # (N,) >= MIN_GAP, sums to 1
    inner = torch.cumsum(gaps, dim=0)[:-1]                       # (N-1,)
    zero, one = xi.new_zeros(1), xi.new_ones(1)
    return torch.cat([zero, inner, one])                         # (N+1,)


def logits_from_grid(grid: Sequence[float]) -> Tensor:
    """The inverse (up to a constant): logits whose softmax gives the grid's gaps."""
    g = torch.as_tensor(list(grid), dtype=torch.float64)
    gaps = g[1:] - g[:-1]
    if len(g) < 2 or abs(float(g[0])) > 1e-9 or abs(float(g[-1]) - 1) > 1e-9 or bool((gaps <= MIN_GAP).any()):
        raise ScheduleError(f"expected an increasing grid from 0 to 1 with gaps > {MIN_GAP}, found {list(grid)}")
    return torch.log((gaps - MIN_GAP) / (1 - len(gaps) * MIN_GAP)).float()


class LD3Grid(nn.Module):
    """LD3's two parameter vectors: xi (the grid) and xi_c (the decoupled eval-time shifts).

    Eval times t'_n = t_n + clamp(xi_c_n, +-EVAL_WINDOW * min gap), endpoints never shifted. The
    window uses the gaps of the actual grid (LD3 uses the raw logits in lambda mode, a quirk we do
    not copy: in time mode the two coincide up to scale).
    """

    def __init__(self, init_grid: Sequence[float], decoupled: bool = True):
        super().__init__()
        self.xi = nn.Parameter(logits_from_grid(init_grid))
        n = len(init_grid)
        self.xi_c = nn.Parameter(torch.zeros(n), requires_grad=decoupled)
        self.decoupled = decoupled

    @property
    def n_steps(self) -> int:
        return self.xi.numel()

    def grid(self) -> Tensor:
        return grid_from_logits(self.xi)

    def eval_grid(self, grid: Tensor) -> Tensor | None:
        if not self.decoupled:
            return None
        w = EVAL_WINDOW * (grid[1:] - grid[:-1]).min()
        shift = torch.maximum(torch.minimum(self.xi_c, w), -w)
        mask = torch.ones_like(shift)
        mask[0] = 0.0
        mask[-1] = 0.0
        return grid + shift * mask


def bounded(raw: Tensor, centre: float, delta: float) -> Tensor:
    """centre - delta + 2 delta sigmoid(raw): AMED's bounded heads; raw = 0 gives the centre."""
    return centre - delta + 2 * delta * torch.sigmoid(raw)


class AMEDConstants(nn.Module):
    """Per-step AMED constants on a fixed base grid of N steps.

    r_n in (0, 1): the mid time t_m = t_n + r_n (t_{n+1} - t_n) (linear in t: in our convention the
        EDM sigma of t=0 is infinite, so AMED's geometric interpolation in sigma is undefined at the
        first step; linear interpolation in t is its FM-native counterpart);
    c_n in [1 - dc, 1 + dc]: the direction (increment) scale of the step that lands on t_{n+1};
    a_n in [1 - da, 1 + da] (optional, da > 0): the mid time fed to the network is t_n + a_n (t_m - t_n)
        while the solver still uses t_m (AMED's "time scale", again linear in t).
    Initialised to r = 1/2, c = 1, a = 1: the plain base solver on the grid with mid-points inserted.
    """

    def __init__(self, base_grid: Sequence[float], dc: float = 0.1, da: float = 0.0):
        super().__init__()
        n = len(base_grid) - 1
        self.register_buffer("base", torch.as_tensor(list(base_grid), dtype=torch.float32))
        self.r_raw = nn.Parameter(torch.zeros(n))
        self.c_raw = nn.Parameter(torch.zeros(n))
        self.a_raw = nn.Parameter(torch.zeros(n), requires_grad=da > 0)
        self.dc, self.da = dc, da

    def constants(self) -> tuple[Tensor, Tensor, Tensor]:
        r = torch.sigmoid(self.r_raw)
        c = bounded(self.c_raw, 1.0, self.dc)
        a = bounded(self.a_raw, 1.0, self.da) if self.da > 0 else torch.ones_like(r)
        return r, c, a

    def mid_times(self) -> tuple[Tensor, Tensor]:
        """(t_mid, t_mid_eval), each (N,)."""
        r, _, a = self.constants()
        h = self.base[1:] - self.base[:-1]
        return self.base[:-1] + r * h, self.base[:-1] + torch.clamp(a * r, 0.0, 1.0) * h


def interleave(base: Tensor, mids: Tensor) -> Tensor:
    """[t_0, m_0, t_1, m_1, ..., t_N] from (N+1,) base times and (N,) mid times."""
    n = mids.numel()
    out = torch.stack([base[:-1], mids], dim=1).reshape(2 * n)
    return torch.cat([out, base[-1:]])
