"""Evaluate schedule artifacts on held-out noise: RMSE to the teacher, FD-digits, block evaluations.

Held-out noise comes from `make_pairs(..., held_out=True)`: a seed stream that learning never draws
from, so a learned schedule cannot have fit it. Every schedule is rolled out by the runtime's own
solver code (on torch tensors) from the artifact alone, exactly as the runtime reads it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from odelt.fileio import atomic_path, write_bytes_atomic
from odelt.models.dit import DiT
from odelt.schedules.learn import SolverSteps, run_steps
from odelt.schedules.problem import Pairs, make_pairs


@dataclass(frozen=True)
class Row:
    name: str
    method: str
    solver: str
    nfe: int | None
    block_evals: int          # blocks run per sample: sum over model calls of their length
    rmse: float               # held-out RMSE to the teacher, data in [-1, 1]
    fd_digits: float | None   # FD-digits of the samples (None: no classifier available)
    lengths: tuple[int, ...]


def plan_from_schedule(s) -> SolverSteps:
    """A runtime Schedule -> a torch Plan (the same solver kwargs the runtime passes)."""
    kw = s.solver_kwargs()
    t_eval = kw.pop("t_eval", None)
    for key in ("t_mid", "scale"):
        if key in kw:
            kw[key] = torch.tensor(kw[key], dtype=torch.float32)
    return SolverSteps(s.solver, torch.tensor(s.t_grid, dtype=torch.float32), tuple(s.lengths), tuple(s.dt_base),
                None if t_eval is None else torch.tensor(t_eval, dtype=torch.float32), kw)


def block_evals(s) -> int:
    from odelt.ode.solvers import SOLVER_INFO

    return sum(s.lengths) * (SOLVER_INFO[s.solver].calls_per_step or 1)


@torch.no_grad()
def samples_for(model: DiT, s, pairs: Pairs, chunk: int = 128) -> torch.Tensor:
    plan = plan_from_schedule(s)
    return torch.cat([run_steps(model, plan, pairs.z[i:i + chunk], pairs.y[i:i + chunk])
                      for i in range(0, len(pairs), chunk)])


def fd_digits(x: torch.Tensor) -> float | None:
    """FD-digits of samples in [-1, 1] (the shipped digits classifier); None for non-digit shapes."""
    if tuple(x.shape[1:]) != (1, 8, 8) or len(x) < 2:
        return None
    from odelt.models.classifier import fd_digits as fd

    return float(fd(x.detach().cpu().numpy()))


def evaluate(model: DiT, schedules: Sequence, n_held: int = 256, seed: int = 0, key: str | None = None,
             with_fd: bool = True, cache_dir: str | None = None) -> tuple[list[Row], dict]:
    """One row per schedule, and a header with the teacher's own FD-digits."""
    pairs = make_pairs(model, n_held, seed, held_out=True, key=key, cache_dir=cache_dir)
    rows = []
    for s in schedules:
        x = samples_for(model, s, pairs)
        rmse = float(torch.sqrt(torch.mean((x - pairs.x) ** 2)))
        rows.append(Row(s.name, s.method, s.solver, s.nfe, block_evals(s), rmse,
                        fd_digits(x) if with_fd else None, tuple(s.lengths)))
    header = {"n_held_out": n_held, "held_out_seed": seed, "teacher": "euler128@full-length,dt_base=7",
              "teacher_fd_digits": fd_digits(pairs.x) if with_fd else None}
    return rows, header


def write_table(rows: Sequence[Row], header: dict, path: str | os.PathLike) -> Path:
    data = {**header, "rows": [asdict(r) for r in rows]}
    return write_bytes_atomic(path, json.dumps(data, indent=1).encode())


def pareto_front(rows: Sequence[Row]) -> list[Row]:
    """Rows no other row beats on both block evaluations and error."""
    ordered = sorted(rows, key=lambda r: (r.block_evals, r.rmse))
    front, best = [], float("inf")
    for r in ordered:
        if r.rmse < best:
            front.append(r)
            best = r.rmse
    return front


def plot_pareto(rows: Sequence[Row], path: str | os.PathLike) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for method in sorted({r.method for r in rows}):
        pts = [r for r in rows if r.method == method]
        ax.scatter([r.block_evals for r in pts], [r.rmse for r in pts], label=method, s=28)
        for r in pts:
            ax.annotate(r.name, (r.block_evals, r.rmse), fontsize=6, xytext=(3, 3), textcoords="offset points")
    front = pareto_front(rows)
    ax.step([r.block_evals for r in front], [r.rmse for r in front], where="post", color="k", lw=0.8,
            label="Pareto front")
    ax.set_xlabel("block evaluations per sample (sum of step lengths)")
    ax.set_ylabel("held-out RMSE to teacher")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return path
