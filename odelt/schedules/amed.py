"""AMED (Zhou et al., CVPR 2024) for transformers: per-step constants instead of a predictor.

A DiT has no U-Net bottleneck to feed AMED's predictor network, so we learn its sample-independent
form directly (the form diff-sampler's own example exports): per base step n a mid-point ratio r_n,
a direction scale c_n and optionally a time scale a_n (`grids.AMEDConstants`). Two uses:

  AMED-Solver  (solver 'amed'): an Euler step to the mid time, then the whole step along the
               mid-point velocity scaled by c_n. 2 calls per base step.
  AMED-Plugin  (host 'euler' or 'ipndm'): the host runs on the interleaved grid
               [t_0, m_0, t_1, m_1, ..., t_N]; the increment of every step m_n -> t_{n+1} is scaled by
               c_n, and the network at m_n sees t_n + a_n (m_n - t_n). Both calls enter the host's
               history. NFE = 2N.

The plugin's increment scale is the host solver's own `scale` argument (1 on t_n -> m_n, c_n on
m_n -> t_{n+1}), and the mid eval times are its `t_eval`, so the artifact is the host on the
interleaved grid and the runtime needs nothing AMED-specific.

Constants start at r = 1/2, c = 1, a = 1, i.e. at the plain host on the uniform NFE-point grid, so
learning starts from the baseline it is compared with. Trained end to end against the teacher
(LD3-style loss) rather than AMED's step-wise loss: with ~3N scalars there is no network to
generalise across steps, and the final-sample error is what we report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from odelt.errors import ScheduleError
from odelt.models.dit import DiT
from odelt.schedules.grids import AMEDConstants, interleave
from odelt.schedules.learn import History, LearnConfig, SolverSteps, learn
from odelt.schedules.ld3 import step_levels, uniform_grid

AMED_HOSTS = ("amed", "euler", "ipndm")      # 'amed' = AMED-Solver; the others = AMED-Plugin


def step_scales(scales: Tensor) -> Tensor:
    """(N,) c_n -> (2N,) per interleaved step: 1 on t_n -> m_n, c_n on m_n -> t_{n+1}."""
    return torch.stack([torch.ones_like(scales), scales], dim=1).reshape(-1)


@dataclass(frozen=True)
class AMEDSpec:
    host: str                     # 'amed' | 'euler' | 'ipndm'
    lengths: tuple[int, ...]      # per network call (2N)
    dt_mode: str | int = "step"
    order: int | None = None      # iPNDM order


class AMEDStudent(nn.Module):
    def __init__(self, spec: AMEDSpec, base_grid: Sequence[float], dc: float = 0.1, da: float = 0.0):
        super().__init__()
        if spec.host not in AMED_HOSTS:
            raise ScheduleError(f"AMED cannot drive solver {spec.host!r}; expected one of {list(AMED_HOSTS)} "
                                "('amed' = AMED-Solver, euler/ipndm = AMED-Plugin)")
        if spec.host == "amed" and da > 0:
            raise ScheduleError("the AMED-Solver step has no separate mid eval time: use da = 0")
        if len(spec.lengths) != 2 * (len(base_grid) - 1):
            raise ScheduleError(f"AMED makes 2 calls per base step: expected {2 * (len(base_grid) - 1)} "
                                f"lengths, found {len(spec.lengths)}")
        self.spec = spec
        self.k = AMEDConstants(base_grid, dc=dc, da=da)

    def plan(self) -> SolverSteps:
        base = self.k.base
        _, c, _ = self.k.constants()
        t_mid, t_mid_eval = self.k.mid_times()
        if self.spec.host == "amed":
            # one dt_base per base step (both calls of a step share it), from the base step size
            levels = step_levels(base.tolist(), self.spec.dt_mode)
            lens = self.spec.lengths[0::2]
            return SolverSteps("amed", base, tuple(lens), levels, None, {"t_mid": t_mid, "scale": c})
        inter = interleave(base, t_mid)
        levels = step_levels(inter.detach().tolist(), self.spec.dt_mode)
        params = {"scale": step_scales(c)}
        if self.spec.order is not None:
            params["order"] = self.spec.order
        t_eval = interleave(base, t_mid_eval) if self.k.da > 0 else None
        return SolverSteps(self.spec.host, inter, self.spec.lengths, levels, t_eval, params)


def learn_amed(model: DiT, spec: AMEDSpec, train, val, cfg: LearnConfig, base_grid: Sequence[float] | None = None,
               da: float = 0.0, progress: bool = True) -> tuple[AMEDStudent, History]:
    n = len(spec.lengths) // 2
    if len(spec.lengths) % 2 or n < 1:
        raise ScheduleError(f"AMED needs an even NFE >= 2 (2 calls per step), found {len(spec.lengths)}")
    student = AMEDStudent(spec, base_grid if base_grid is not None else uniform_grid(n), da=da)
    hist = learn(model, student, train, val, cfg, len(spec.lengths), progress=progress, aux=())
    return student, hist
