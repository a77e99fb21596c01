"""One training loop for every learned schedule (LD3 grids, AMED constants, per-step lengths).

A *student* is a small nn.Module whose `plan()` returns a `Plan`: the solver, its time grid and
eval times (torch tensors with gradients), solver parameters, and each step's length and shortcut
level. `run_steps` rolls the steps out with the runtime's SOLVERS on torch tensors.

Loss: LD3's soft surrogate. Each training pair carries its own start noise z', kept inside the L2
ball |z' - z| <= r around its teacher noise z (projected SGD), with LD3's radius rule
r = gamma * d / NFE^2 (d = C*H*W, gamma = 0.001, sigma_T = 1 for flow matching). The distance is L2
in data space: LD3 uses LPIPS on decoded images, but no LPIPS network exists for 8x8 one-channel
digits and the model works in pixel space, so L2 to the teacher is both the natural distance and
exactly the metric we report (RMSE). Early stopping watches the *hard* loss (RMSE from the true
noise) on the validation pairs, which is what evaluation measures on held-out noise.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from odelt.models.dit import DiT
from odelt.schedules.problem import Pairs, make_velocity


@dataclass
class SolverSteps:
    solver: str
    ts: Tensor                    # (K+1,) the solver's grid
    lengths: tuple[int, ...]      # (K,) length of each solver step
    dt_bases: tuple[int, ...]     # (K,) shortcut level of each solver step
    t_eval: Tensor | None = None  # (K+1,) decoupled eval times, or None
    params: dict[str, Any] = field(default_factory=dict)   # extra solver kwargs (t_mid, scale, order)


def run_steps(model: DiT, plan: SolverSteps, z: Tensor, y: Tensor) -> Tensor:
    from odelt.ode.solvers import SOLVERS

    f = make_velocity(model, y, plan.lengths, plan.dt_bases)
    kwargs = dict(plan.params)
    if plan.t_eval is not None:
        kwargs["t_eval"] = plan.t_eval
    return SOLVERS[plan.solver](f, z, plan.ts, **kwargs)


@dataclass(frozen=True)
class LearnConfig:
    n_pairs: int = 100            # learning pairs (LD3: 50 train + 50 validation)
    n_train: int = 50
    batch: int = 10
    iters: int = 300              # upper bound on optimiser steps
    lr: float = 0.05              # Adam on the main parameters (grid logits, AMED heads)
    lr_aux: float = 0.01          # Adam on the auxiliary ones (LD3's decoupled eval shifts)
    warm_frac: float = 0.3        # first part of the run trains the main parameters only (LD3's v1 rounds)
    val_every: int = 10
    patience: int = 6             # validations without improvement before stopping
    gamma: float = 0.001          # LD3 ball radius rule r = gamma * d / NFE^2
    latent_lr: float = 3.0        # LD3: 12 / NFE at NFE 4
    seed: int = 0


@dataclass
class History:
    train: list[float] = field(default_factory=list)   # per-iteration soft loss (MSE)
    val: list[float] = field(default_factory=list)     # per-validation hard RMSE
    best_val: float = float("inf")
    init_val: float = float("inf")
    iters: int = 0
    radius: float = 0.0


def ball_radius(d: int, nfe: int, gamma: float) -> float:
    return gamma * d / nfe ** 2


@torch.no_grad()
def eval_rmse(model: DiT, student: nn.Module, pairs: Pairs, chunk: int = 128) -> float:
    plan = student.plan()
    se = 0.0
    for i in range(0, len(pairs), chunk):
        x = run_steps(model, plan, pairs.z[i:i + chunk], pairs.y[i:i + chunk])
        se += float(((x - pairs.x[i:i + chunk]) ** 2).sum())
    return (se / pairs.x.numel()) ** 0.5


def _project(z_new: Tensor, z: Tensor, r: float) -> Tensor:
    d = z_new - z
    norm = d.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
    return z + d * torch.clamp(r / norm, max=1.0)


def learn(model: DiT, student: nn.Module, train: Pairs, val: Pairs, cfg: LearnConfig, nfe: int,
          progress: bool = True, aux: tuple[str, ...] = ("xi_c",)) -> History:
    """Fit `student` in place; on return it holds the best-validation parameters."""
    from tqdm import tqdm

    model.requires_grad_(False)
    gen = torch.Generator().manual_seed(cfg.seed)
    main = [p for n, p in student.named_parameters() if p.requires_grad and n not in aux]
    extra = [p for n, p in student.named_parameters() if p.requires_grad and n in aux]
    groups = [{"params": main, "lr": cfg.lr}] + ([{"params": extra, "lr": 0.0}] if extra else [])
    opt = torch.optim.Adam(groups)
    z_soft = train.z.clone()
    hist = History(radius=ball_radius(train.z[0].numel(), nfe, cfg.gamma))
    hist.init_val = hist.best_val = eval_rmse(model, student, val)
    best = copy.deepcopy(student.state_dict())
    stale = 0
    # disable=None: no bar without a terminal (a log or a test captures one error line)
    bar = tqdm(range(cfg.iters), desc="learn", disable=None if progress else True, mininterval=1.0)
    for k in bar:
        if extra and k == int(cfg.warm_frac * cfg.iters):
            opt.param_groups[1]["lr"] = cfg.lr_aux    # phase 2: eval shifts join (LD3's v2 rounds)
            stale = 0
        idx = torch.randint(len(train), (min(cfg.batch, len(train)),), generator=gen)
        zb = z_soft[idx].clone().requires_grad_(True)
        x = run_steps(model, student.plan(), zb, train.y[idx])
        loss = ((x - train.x[idx]) ** 2).flatten(1).mean(dim=1).sum() / len(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(main + extra, 1.0)
        opt.step()
        with torch.no_grad():     # projected SGD on the soft start noise (LD3's x'_T)
            z_soft[idx] = _project(zb - cfg.latent_lr * zb.grad, train.z[idx], hist.radius)
        hist.train.append(float(loss.detach()))
        hist.iters = k + 1
        if (k + 1) % cfg.val_every == 0:
            v = eval_rmse(model, student, val)
            hist.val.append(v)
            if v < hist.best_val - 1e-7:
                hist.best_val, best, stale = v, copy.deepcopy(student.state_dict()), 0
            else:
                stale += 1
            bar.set_postfix(loss=f"{float(loss.detach()):.4g}", val=f"{v:.4g}", best=f"{hist.best_val:.4g}")
            if stale >= cfg.patience:
                break
    student.load_state_dict(best)
    return hist
