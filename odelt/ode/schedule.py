"""The schedule artifact: a small JSON file that tells the runtime how to integrate.

Adapted from schedules.md §5 to our convention (t=0 noise -> t=1 data, grids increase)::

    {
      "format": "odelt-schedule/1",
      "name": "uniform:euler:8",   "method": "heuristic" | "ld3" | "amed" | ...,
      "model": {"hash": str | null,          # null: model-agnostic (heuristics); else the bundle's
                "time_convention": "x_t=(1-t)*x0+t*x1", "prediction": "velocity"},
      "solver": {"name": "euler", "order": int | null, "family": "fm_velocity" | "eps_exponential",
                 "params": {...}},            # e.g. dopri5 rtol/atol
      "t_grid": [N+1 floats],                 # strictly increasing, 0 <= t <= 1
      "t_eval": [N+1 floats] | null,          # decoupled model-evaluation times (LD3), x unchanged
      "amed": {"t_mid": [N] | null, "scale": [N]} | null,   # t_mid null: AMED-Plugin on a host
      "lengths": [N ints],  "dt_base": [N ints in 0..7],   # per step: depth l_n, shortcut level
      "nfe": int | null,                      # model calls per sample without CFG; null = adaptive
      "cfg_scale": float | null,              # the guidance scale a learned schedule was fit for
      "provenance": {...}
    }

`Schedule.validate()` checks the artifact on its own; `check_fits()` checks it against a bundle
(model hash, offered lengths, guidance). Both raise one-line ScheduleErrors.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from odelt.errors import ConfigError, ScheduleError
from odelt.fileio import read_json, write_json_atomic
from odelt.ode.solvers import SOLVERS, SOLVER_INFO, nfe_for
from odelt.validate import MAX_STEPS

# Shortcut levels: dt_base = log2(#steps) names the step size 2^-dt_base a velocity is trained for.
# Upstream trains levels 0..7; 7 (steps of 1/128) is the flow-matching level, the finest it knows.
FM_LEVEL = 7


def level_for_step(h: float) -> int:
    """The shortcut level upstream trains for a step of size h: round(-log2 h) clamped to
    [0, FM_LEVEL] (e.g. 1/3 -> 2, the 4-step level); a step of size <= 0 gets the finest level."""
    if h <= 0:
        return FM_LEVEL
    return int(min(FM_LEVEL, max(0, round(-math.log2(h)))))


def level_for_steps(steps: int) -> int:
    """The level of `steps` uniform steps: round(log2 steps) clamped to [0, FM_LEVEL] (T=3 -> 2,
    T=6 -> 3, T >= 182 -> 7)."""
    if int(steps) < 1:
        raise ConfigError(f"steps must be >= 1, found {steps}")
    return int(min(FM_LEVEL, max(0, round(math.log2(int(steps))))))


FORMAT = "odelt-schedule/1"
TIME_CONVENTION = "x_t=(1-t)*x0+t*x1"
MAX_DT_BASE = FM_LEVEL    # 2^-7: the flow-matching level the model was trained at
# AMED-Plugin hosts: an `amed.scale` without `t_mid` multiplies each step's increment (the host
# runs on the interleaved grid [t_0, m_0, t_1, ...]; scale is 1 on t_n -> m_n and c_n on m_n -> t_n+1).
PLUGIN_HOSTS = ("euler", "ipndm", "ipndm_v")
ADAPTIVE_DT_BASE = 0      # upstream's adaptive (diffrax Dopri5) solves use level 0; kept for parity


@dataclass(frozen=True)
class Schedule:
    solver: str
    t_grid: tuple[float, ...]                       # (N+1,)
    lengths: tuple[int, ...]                        # (N,)
    dt_base: tuple[int, ...]                        # (N,)
    nfe: int | None                                 # None: adaptive
    order: int | None = None                        # solvers with a max_order (ipndm*)
    params: dict[str, Any] = field(default_factory=dict)
    t_eval: tuple[float, ...] | None = None         # (N+1,)
    t_mid: tuple[float, ...] | None = None          # (N,) AMED
    scale: tuple[float, ...] | None = None          # (N,) AMED
    model_hash: str | None = None
    guidance_scale: float | None = None
    name: str = ""
    method: str = "heuristic"
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.t_grid) - 1

    def solver_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for SOLVERS[self.solver] (python floats keep float32 states float32)."""
        kw: dict[str, Any] = dict(self.params)
        if self.order is not None:
            kw["order"] = self.order
        if self.t_eval is not None:
            kw["t_eval"] = list(self.t_eval)
        if self.t_mid is not None:
            kw["t_mid"], kw["scale"] = list(self.t_mid), list(self.scale or [1.0] * self.steps)
        elif self.scale is not None:          # AMED-Plugin: per-step increment scales on a host
            kw["scale"] = list(self.scale)
        return kw

    def call_lengths(self, lengths: Sequence[int] | None = None) -> tuple[int, ...]:
        """The length of every network call, in order, when the steps run at `lengths` (default the
        schedule's own): a fixed-step solver calls `calls_per_step` times per step at the step's
        length (Heun twice); an adaptive one is dry-run on a zero velocity (what the quality table
        records). The one place step lengths become call lengths (planner, stream, anytime)."""
        steps = tuple(self.lengths if lengths is None else lengths)
        per = SOLVER_INFO[self.solver].calls_per_step
        if per:
            return tuple(n for n in steps for _ in range(per))
        seen: list[int] = []

        def f(x: Any, t: Any, n: int) -> Any:
            seen.append(steps[n])
            return np.zeros_like(x)

        SOLVERS[self.solver](f, np.zeros((1, 1), np.float32), list(self.t_grid), **self.solver_kwargs())
        return tuple(seen)

    def validate(self) -> Schedule:
        _check(self.solver in SOLVER_INFO, f"solver {self.solver!r} is unknown; expected one of {sorted(SOLVER_INFO)}")
        n = self.steps
        _check(n >= 1, f"t_grid needs at least 2 times, found {len(self.t_grid)}")
        _check(n <= MAX_STEPS, f"t_grid: expected at most {MAX_STEPS} steps, found {n}")
        _check_grid("t_grid", self.t_grid)
        _check(abs(self.t_grid[0]) < 1e-9 and abs(self.t_grid[-1] - 1) < 1e-9,
               f"t_grid must run from 0 (noise) to 1 (data), found {self.t_grid[0]} .. {self.t_grid[-1]}")
        for what, values, size in (("lengths", self.lengths, n), ("dt_base", self.dt_base, n),
                                   ("t_eval", self.t_eval, n + 1), ("amed.t_mid", self.t_mid, n),
                                   ("amed.scale", self.scale, n)):
            _check(values is None or len(values) == size,
                   f"{what} needs {size} entries (one per {'time' if size > n else 'step'}), found {len(values or ())}")
        _check(all(isinstance(v, int) and v >= 1 for v in self.lengths), f"lengths must be positive integers, found {list(self.lengths)}")
        _check(all(isinstance(v, int) and 0 <= v <= MAX_DT_BASE for v in self.dt_base),
               f"dt_base must be integers in 0..{MAX_DT_BASE}, found {list(self.dt_base)}")
        if self.t_eval is not None:
            _check(all(0 <= t <= 1 for t in self.t_eval), f"t_eval must lie in [0, 1], found {list(self.t_eval)}")
        g = self.guidance_scale
        _check(g is None or (isinstance(g, (int, float)) and not isinstance(g, bool) and math.isfinite(g)),
               f"cfg_scale: expected a finite number or null, found {g!r}")
        _check(not any(isinstance(v, bool) for v in (*self.lengths, *self.dt_base)),
               f"lengths and dt_base must be integers, found {list(self.lengths)} / {list(self.dt_base)}")
        _check(self.model_hash is None or isinstance(self.model_hash, str),
               f"model.hash: expected a string, found {self.model_hash!r}")
        for what, tree in (("solver.params", self.params), ("provenance", self.provenance)):
            _check(_all_finite(tree), f"{what}: expected finite numbers, found {tree!r:.120}")
        self._validate_solver()
        return self

    def _validate_solver(self) -> None:
        info = SOLVER_INFO[self.solver]
        if info.max_order:
            _check(self.order is None or 1 <= self.order <= info.max_order,
                   f"{self.solver} order must be 1..{info.max_order}, found {self.order}")
        else:
            _check(self.order is None or self.order == info.order,
                   f"{self.solver} has fixed order {info.order}, found order {self.order}")
        is_amed = self.solver == "amed"
        _check(is_amed or self.t_mid is None,
               f"amed mid-points given for solver {self.solver!r}; expected them only with 'amed'")
        _check(is_amed or self.scale is None or self.solver in PLUGIN_HOSTS,
               f"amed scales given for solver {self.solver!r}; expected 'amed' or a plugin host {list(PLUGIN_HOSTS)}")
        _check(self.scale is None or all(math.isfinite(c) and c > 0 for c in self.scale),
               f"amed.scale must be positive and finite, found {list(self.scale or ())}")
        if is_amed and self.t_mid is not None:
            inside = all(a < m < b for a, m, b in zip(self.t_grid, self.t_mid, self.t_grid[1:]))
            _check(inside, "amed.t_mid must lie strictly inside each step (t_n < t_mid_n < t_n+1)")
        recount = nfe_for(self.solver, self.steps)
        _check(self.nfe == recount, f"nfe is {self.nfe} but {self.solver} with {self.steps} steps makes "
                                    f"{recount if recount is not None else 'an adaptive number of'} model calls")

    def check_fits(self, model_hash: str | None, lengths: Sequence[int], guidance_scale: float | None = None) -> None:
        """Refuse a schedule learned for another model, lengths the bundle lacks, or another guidance."""
        if self.model_hash is not None and model_hash is not None and self.model_hash != model_hash:
            raise ScheduleError(f"schedule {self.name or '?'} was made for model {self.model_hash}, "
                                f"this bundle holds model {model_hash}")
        missing = sorted(set(self.lengths) - set(lengths))
        if missing:
            raise ScheduleError(f"schedule {self.name or '?'} uses lengths {missing} that the bundle does not offer "
                                f"(it has {sorted(lengths)})")
        if self.guidance_scale is not None and guidance_scale is not None and abs(self.guidance_scale - guidance_scale) > 1e-6:
            raise ScheduleError(f"schedule {self.name or '?'} was fit for guidance scale {self.guidance_scale}, "
                                f"asked for {guidance_scale}")

    def with_lengths(self, length: int) -> Schedule:
        return _replace(self, lengths=(int(length),) * self.steps)

    # -- JSON --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "name": self.name, "method": self.method,
            "model": {"hash": self.model_hash, "time_convention": TIME_CONVENTION, "prediction": "velocity"},
            "solver": {"name": self.solver, "order": self.order, "family": SOLVER_INFO[self.solver].family,
                       "params": dict(self.params)},
            "t_grid": list(self.t_grid), "t_eval": _opt_list(self.t_eval),
            "amed": None if self.t_mid is None and self.scale is None else
                    {"t_mid": _opt_list(self.t_mid), "scale": _opt_list(self.scale)},
            "lengths": list(self.lengths), "dt_base": list(self.dt_base), "nfe": self.nfe,
            "cfg_scale": self.guidance_scale, "provenance": dict(self.provenance),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "schedule") -> Schedule:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ScheduleError(f"{where}: expected format {FORMAT!r}, found {found!r}")
        try:
            model, solver, amed = d.get("model") or {}, d["solver"], d.get("amed")
            if model.get("time_convention", TIME_CONVENTION) != TIME_CONVENTION:
                raise ScheduleError(f"{where}: expected time convention {TIME_CONVENTION!r}, "
                                    f"found {model['time_convention']!r}")
            s = cls(solver=str(solver["name"]), t_grid=_floats(d["t_grid"]), lengths=tuple(d["lengths"]),
                    dt_base=tuple(d["dt_base"]), nfe=d["nfe"], order=solver.get("order"),
                    params=dict(solver.get("params") or {}), t_eval=_opt_floats(d.get("t_eval")),
                    t_mid=_opt_floats(amed and amed.get("t_mid")), scale=_opt_floats(amed and amed.get("scale")),
                    model_hash=model.get("hash"), guidance_scale=d.get("cfg_scale"), name=str(d.get("name", "")),
                    method=str(d.get("method", "")), provenance=dict(d.get("provenance") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ScheduleError(f"{where}: malformed schedule ({type(e).__name__}: {e})") from None
        try:
            return s.validate()
        except ScheduleError as e:
            raise ScheduleError(f"{where}: {e}") from None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ScheduleError(message)


def _all_finite(v: Any, depth: int = 0) -> bool:
    if depth > 32:
        return False
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, dict):
        return all(_all_finite(x, depth + 1) for x in v.values())
    if isinstance(v, (list, tuple)):
        return all(_all_finite(x, depth + 1) for x in v)
    return True


def _check_grid(what: str, grid: Sequence[float]) -> None:
    _check(all(math.isfinite(t) for t in grid), f"{what} must be finite, found {list(grid)}")
    _check(all(a < b for a, b in zip(grid, grid[1:])), f"{what} must be strictly increasing, found {list(grid)}")


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _opt_floats(values: Any) -> tuple[float, ...] | None:
    return None if values is None else _floats(values)


def _opt_list(values: Sequence[float] | None) -> list[float] | None:
    return None if values is None else list(values)


def _replace(s: Schedule, **changes: Any) -> Schedule:
    import dataclasses
    return dataclasses.replace(s, **changes)


# -- files -------------------------------------------------------------------------------------------

def save_schedule(schedule: Schedule, path: str | os.PathLike) -> Path:
    """Validate, then write atomically (temp file in the same folder, then rename)."""
    schedule.validate()
    return write_json_atomic(path, schedule.to_dict())


def load_schedule(path: str | os.PathLike) -> Schedule:
    data = read_json(path, ScheduleError, f"schedule file {path} not found")
    return Schedule.from_dict(data, where=str(path))
