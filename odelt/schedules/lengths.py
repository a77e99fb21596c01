"""Per-step lengths under a block budget (beyond LD3 and AMED).

The cost that matters on a device is block evaluations, B = sum_n l_n, not NFE. Given B, choose the
number of steps, every step's length l_n (from the lengths the model was trained at) and the grid,
to minimise the error to the teacher. Search, in two stages:

  1. screening, per NFE n: coordinate descent over length tuples on a fixed uniform grid, scored
     by validation RMSE. Start from the longest single length that fits; moves are one step
     +-1 length level, and a transfer (one step up, another down); the best move is taken while it
     lowers the error and the tuple stays within B;
  2. the best `keep` screened tuples get an LD3 grid learned for them (lengths fixed); the lowest
     validation error wins.
With dt_mode 'auto' the shortcut mode (per-step levels vs fixed 7) is screened too: on digits the
per-step levels win at 2 steps and lose from 4 steps on, so it cannot be fixed before n is known.

`best_single_length` is the baseline at equal B: for every trained length l, n = B // l steps,
all at length l, with an LD3 grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from odelt.errors import ScheduleError
from odelt.models.dit import DiT
from odelt.schedules.learn import History, LearnConfig, eval_rmse
from odelt.schedules.ld3 import LD3Student, StepSpec, learn_ld3, uniform_grid
from odelt.ode.schedule import FM_LEVEL
from odelt.schedules.problem import Pairs


@dataclass
class LengthResult:
    lengths: tuple[int, ...]
    student: LD3Student
    val_rmse: float
    screen_rmse: float
    history: History | None = None

    @property
    def blocks(self) -> int:
        return sum(self.lengths)


def check_budget(budget: int, allowed: Sequence[int], nfe: int | None) -> None:
    smallest = min(allowed)
    need = smallest * (nfe or 1)
    if budget < need:
        what = f"smallest length {smallest} x NFE {nfe}" if nfe else f"smallest length {smallest}"
        raise ScheduleError(f"block budget must be >= {what} = {need}, found {budget}")


def nfe_range(budget: int, allowed: Sequence[int], span: int = 3) -> range:
    lo = -(-budget // max(allowed))
    return range(max(1, lo), min(budget // min(allowed), lo + span) + 1)


def _screen(model: DiT, spec: StepSpec, pairs: Pairs) -> float:
    return eval_rmse(model, LD3Student(spec, uniform_grid(len(spec.lengths)), decoupled=False), pairs)


def _moves(lengths: tuple[int, ...], allowed: Sequence[int], budget: int) -> Iterable[tuple[int, ...]]:
    levels = sorted(allowed)
    idx = [levels.index(v) for v in lengths]
    n = len(lengths)
    for i in range(n):
        for d in (-1, 1):
            if 0 <= idx[i] + d < len(levels):
                j = list(idx)
                j[i] += d
                yield tuple(levels[k] for k in j)
        for k in range(n):
            if k != i and idx[i] + 1 < len(levels) and idx[k] >= 1:
                j = list(idx)
                j[i] += 1
                j[k] -= 1
                yield tuple(levels[m] for m in j)


def screen_lengths(model: DiT, solver: str, n: int, budget: int, allowed: Sequence[int], pairs: Pairs,
                   dt_mode: str | int = "step", max_rounds: int = 8) -> tuple[tuple[int, ...], float]:
    """Coordinate descent over length tuples for n steps on a uniform grid; (best tuple, its RMSE)."""
    fits = [v for v in sorted(allowed) if v * n <= budget]
    if not fits:
        raise ScheduleError(f"block budget {budget} cannot pay for {n} steps of length {min(allowed)}")
    cur = (fits[-1],) * n
    spec = lambda ls: StepSpec(solver, ls, dt_mode)     # noqa: E731
    cur_err = _screen(model, spec(cur), pairs)
    seen = {cur}
    for _ in range(max_rounds):
        best = None
        for cand in _moves(cur, allowed, budget):
            if cand in seen or sum(cand) > budget:
                continue
            seen.add(cand)
            err = _screen(model, spec(cand), pairs)
            if err < cur_err and (best is None or err < best[1]):
                best = (cand, err)
        if best is None:
            break
        cur, cur_err = best
    return cur, cur_err


def search_lengths(model: DiT, solver: str, budget: int, train: Pairs, val: Pairs, cfg: LearnConfig,
                   nfes: Sequence[int] | None = None, dt_mode: str | int = "step", keep: int = 2,
                   progress: bool = True) -> list[LengthResult]:
    """Screen every n in `nfes`, learn grids for the best `keep`; results sorted best first."""
    allowed = model.config.lengths
    check_budget(budget, allowed, nfes[0] if nfes and len(nfes) == 1 else None)
    nfes = list(nfes) if nfes else list(nfe_range(budget, allowed))
    modes = ("step", FM_LEVEL) if dt_mode == "auto" else (dt_mode,)   # auto: the shortcut mode is searched too
    screened = []
    for n in nfes:
        for mode in modes:
            if n * min(allowed) <= budget:
                screened.append((*screen_lengths(model, solver, n, budget, allowed, val, mode), mode))
    screened.sort(key=lambda s: s[1])
    results = []
    for lengths, screen_err, mode in screened[:keep]:
        student, hist = learn_ld3(model, StepSpec(solver, lengths, mode), train, val, cfg, progress=progress)
        results.append(LengthResult(lengths, student, hist.best_val, screen_err, hist))
    return sorted(results, key=lambda r: r.val_rmse)


def best_single_length(model: DiT, solver: str, budget: int, train: Pairs, val: Pairs, cfg: LearnConfig,
                       dt_mode: str | int = "step", progress: bool = True) -> list[LengthResult]:
    """For every trained length l with at least one step in budget: n = budget // l steps at l."""
    out = []
    for length in model.config.lengths:
        n = budget // length
        if n < 1:
            continue
        spec = StepSpec(solver, (length,) * n, dt_mode)
        student, hist = learn_ld3(model, spec, train, val, cfg, progress=progress)
        out.append(LengthResult(spec.lengths, student, hist.best_val, hist.init_val, hist))
    return sorted(out, key=lambda r: r.val_rmse)
