"""Heuristic schedules, so the runtime works before learned ones exist, and name resolution for
`--schedule NAME|FILE`.

NAME is `KIND[:SOLVER[:STEPS]]`, e.g. `uniform`, `shifted:heun:4`, `cosine:dpmpp_3m:10`,
`uniform:dopri5` (adaptive; STEPS ignored). Defaults: solver euler, 8 steps. A NAME that is an
existing file, or ends in .json, is read as a schedule artifact; a NAME found as
odelt/schedules/builtin/NAME.json is the packaged learned schedule of that name.

Grids (t=0 noise -> t=1 data, u = i/N):
  uniform   t = u
  shifted   SD3/Flux time shift s (default 3) toward noise: with t_A = 1-u (their t=1 is noise),
            t = 1 - s t_A / (1 + (s-1) t_A); smaller steps near noise, larger near data
  cosine    t = (1 - cos(pi u)) / 2: small steps at both ends
Per-step shortcut level dt_base: Euler takes the level of its actual step, round(-log2(dt)) in
0..7 (the upstream sampler's log2(T) for uniform grids); solvers that combine several velocities
want the instantaneous velocity, level 7; dopri5 uses level 0 like upstream's adaptive solves.
"""

from __future__ import annotations

import math
from pathlib import Path

from odelt.errors import ScheduleError
from odelt.ode.schedule import level_for_step
from odelt.validate import MAX_STEPS
from odelt.ode.schedule import ADAPTIVE_DT_BASE, MAX_DT_BASE, Schedule, load_schedule
from odelt.ode.solvers import SOLVER_INFO, nfe_for

KINDS = ("uniform", "shifted", "cosine")
DEFAULT_SOLVER = "euler"
DEFAULT_STEPS = 8
DEFAULT_SHIFT = 3.0
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "schedules" / "builtin"


def make_grid(kind: str, steps: int, shift: float = DEFAULT_SHIFT) -> list[float]:
    if kind not in KINDS:
        raise ScheduleError(f"unknown schedule kind {kind!r}; expected one of {list(KINDS)}")
    if not 1 <= steps <= MAX_STEPS:
        raise ScheduleError(f"schedule steps: expected an integer in 1..{MAX_STEPS}, found {steps}")
    us = [i / steps for i in range(steps + 1)]
    if kind == "uniform":
        grid = us
    elif kind == "shifted":
        grid = [1 - shift * (1 - u) / (1 + (shift - 1) * (1 - u)) for u in us]
    else:
        grid = [(1 - math.cos(math.pi * u)) / 2 for u in us]
    grid[0], grid[-1] = 0.0, 1.0
    return grid


def dt_base_levels(solver: str, grid: list[float]) -> tuple[int, ...]:
    steps = len(grid) - 1
    if solver == "dopri5":
        return (ADAPTIVE_DT_BASE,) * steps
    if solver != "euler":
        return (MAX_DT_BASE,) * steps
    return tuple(level_for_step(b - a) for a, b in zip(grid, grid[1:]))


def heuristic_schedule(kind: str, solver: str, steps: int, length: int, order: int | None = None) -> Schedule:
    if solver not in SOLVER_INFO:
        raise ScheduleError(f"unknown solver {solver!r}; expected one of {sorted(SOLVER_INFO)}")
    steps = 1 if solver == "dopri5" else steps
    grid = make_grid(kind, steps)
    params = {"rtol": 1e-3, "atol": 1e-3} if solver == "dopri5" else {}
    name = f"{kind}:{solver}" + ("" if solver == "dopri5" else f":{steps}")
    return Schedule(solver=solver, t_grid=tuple(grid), lengths=(int(length),) * steps,
                    dt_base=dt_base_levels(solver, grid), nfe=nfe_for(solver, steps), order=order,
                    params=params, name=name, method="heuristic",
                    provenance={"kind": kind, "shift": DEFAULT_SHIFT if kind == "shifted" else None}).validate()


def resolve_schedule(spec: str | None, length: int) -> Schedule:
    """`--schedule NAME|FILE` -> a validated Schedule. `length` fills heuristic schedules."""
    spec = spec or "uniform"
    path = Path(spec)
    if path.suffix == ".json" or path.is_file():
        return load_schedule(path)
    if (BUILTIN_DIR / f"{spec}.json").is_file():
        return load_schedule(BUILTIN_DIR / f"{spec}.json")
    parts = spec.split(":")
    if len(parts) > 3 or not parts[0]:
        raise ScheduleError(f"schedule {spec!r}: expected KIND[:SOLVER[:STEPS]] or a .json file")
    kind = parts[0]
    solver = parts[1] if len(parts) > 1 and parts[1] else DEFAULT_SOLVER
    try:
        steps = int(parts[2]) if len(parts) > 2 else DEFAULT_STEPS
    except ValueError:
        raise ScheduleError(f"schedule {spec!r}: STEPS must be an integer, found {parts[2]!r}") from None
    return heuristic_schedule(kind, solver, steps, length)
