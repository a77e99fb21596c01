"""LD3 (Tong et al., ICLR 2025) for flow matching: learn the time grid of a fixed solver.

The grid is N learnable logits -> softmax gaps -> cumulative sum, endpoints pinned at 0 and 1
(`grids.LD3Grid`, time mode, initialised uniform in t), plus the decoupled eval grid. The teacher
is the 128-step full-length Euler solve from the same noise; the loss is LD3's soft surrogate with
its ball radius rule, in L2 (see `learn`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from odelt.errors import ScheduleError
from odelt.validate import MAX_STEPS
from odelt.models.dit import DiT
from odelt.schedules.grids import LD3Grid
from odelt.schedules.learn import History, LearnConfig, SolverSteps, learn
from odelt.ode.schedule import FM_LEVEL, level_for_step
from odelt.schedules.problem import Pairs

# Fixed-grid solvers that LD3 can drive: gradients flow through their time points.
LD3_SOLVERS = ("euler", "heun", "midpoint", "ipndm", "ipndm_v", "dpmpp_2m", "dpmpp_3m")


def steps_for(solver: str, nfe: int) -> int:
    """Grid steps for `nfe` model calls; one-line errors for NFE < 1 or a mismatch."""
    from odelt.ode.solvers import SOLVER_INFO

    if not 1 <= nfe <= MAX_STEPS:
        raise ScheduleError(f"NFE: expected an integer in 1..{MAX_STEPS}, found {nfe}")
    if solver not in SOLVER_INFO:
        raise ScheduleError(f"unknown solver {solver!r}; expected one of {sorted(SOLVER_INFO)}")
    per = SOLVER_INFO[solver].calls_per_step
    if per == 0:
        raise ScheduleError(f"solver {solver!r} is adaptive: it has no fixed grid to learn")
    if nfe % per:
        raise ScheduleError(f"solver {solver!r} makes {per} calls per step: NFE must be a multiple of "
                            f"{per}, found {nfe}")
    return nfe // per


def step_levels(ts: Sequence[float], dt_mode: str | int) -> tuple[int, ...]:
    """Shortcut level per step: 'step' = from each step's size (as upstream trained), or a fixed int."""
    if dt_mode == "step":
        return tuple(level_for_step(float(b) - float(a)) for a, b in zip(ts[:-1], ts[1:]))
    level = int(dt_mode)
    if not 0 <= level <= FM_LEVEL:
        raise ScheduleError(f"dt_base must be 'step' or 0..{FM_LEVEL}, found {dt_mode!r}")
    return (level,) * (len(ts) - 1)


@dataclass(frozen=True)
class StepSpec:
    """What stays fixed while a grid is learned."""
    solver: str
    lengths: tuple[int, ...]      # per grid step
    dt_mode: str | int = "step"
    order: int | None = None      # iPNDM order (None: the solver's default)


class LD3Student(nn.Module):
    def __init__(self, spec: StepSpec, init_grid: Sequence[float], decoupled: bool = True):
        super().__init__()
        if len(init_grid) != len(spec.lengths) + 1:
            raise ScheduleError(f"grid of {len(init_grid)} points for {len(spec.lengths)} steps")
        self.spec = spec
        self.g = LD3Grid(init_grid, decoupled=decoupled and spec.solver != "dopri5")

    def plan(self) -> SolverSteps:
        ts = self.g.grid()
        levels = step_levels(ts.detach().tolist(), self.spec.dt_mode)
        params = {} if self.spec.order is None else {"order": self.spec.order}
        return SolverSteps(self.spec.solver, ts, self.spec.lengths, levels, self.g.eval_grid(ts), params)


def uniform_grid(n: int) -> list[float]:
    return [k / n for k in range(n + 1)]


def learn_ld3(model: DiT, spec: StepSpec, train: Pairs, val: Pairs, cfg: LearnConfig,
              init_grid: Sequence[float] | None = None, progress: bool = True) -> tuple[LD3Student, History]:
    """Learn a grid (and eval shifts) for `spec`; returns the student at its best validation."""
    if spec.solver not in LD3_SOLVERS:
        raise ScheduleError(f"LD3 cannot drive solver {spec.solver!r}; expected one of {list(LD3_SOLVERS)}")
    n = len(spec.lengths)
    torch.manual_seed(cfg.seed)
    student = LD3Student(spec, init_grid if init_grid is not None else uniform_grid(n))
    from odelt.ode.solvers import SOLVER_INFO

    nfe = n * SOLVER_INFO[spec.solver].calls_per_step
    hist = learn(model, student, train, val, cfg, nfe, progress=progress, aux=("g.xi_c",))
    return student, hist
