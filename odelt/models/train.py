"""A compact trainer with upstream's ODE_t(ODE_l) objective (research notes odelt.md §2).

One plain MSE over a batch whose rows are split by fractions, as upstream's `train.py:update`:

  rows [0, B/bootstrap_every)           time self-consistency (shortcut): dt_base ~ U{0..6}, t on the
                                        2^dt_base grid, target = mean of two half-steps of the EMA teacher
                                        at dt_base+1, teacher at full length; real labels
  rows [B/bootstrap_every, B)           flow matching: t = floor(128u)/128, dt_base = 7, target x1 - x0,
                                        labels dropped to null with class_dropout_prob
  last B/depth_bootstrap of those       length consistency: target = EMA teacher at (x_t, t, 7, y) and an
                                        independently drawn length l' (students run at their own l)

Every student row runs at its own length drawn uniformly from config.lengths through the model's
(B,) length path (upstream's masked training path). AdamW (b1 .9, b2 .999, wd .1); the learning rate
warms up linearly, stays constant, and decays on a cosine over the last `decay_frac` of the steps.

EMA: upstream uses tau = 0.999 per step on a model fine-tuned from a pretrained shortcut model, so its
teacher is good from step 0. We train from scratch in a few thousand steps, so the EMA's effective
decay is min(tau, (1+k)/(10+k)) at step k: the teacher tracks the student closely early on (when an
averaged random init would be a useless teacher) and reaches tau after ~10k steps.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from odelt import validate
from odelt.models.config import DiTConfig
from odelt.ode.schedule import FM_LEVEL
from odelt.models.dit import DiT



@dataclass(frozen=True)
class TrainConfig:
    model: DiTConfig
    steps: int = 6000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 200
    decay_frac: float = 0.1        # cosine tail over the last 10% (upstream)
    weight_decay: float = 0.1
    ema_tau: float = 0.999
    bootstrap_every: int = 8       # B/8 rows of time self-consistency
    depth_bootstrap: int = 8       # B/8 rows of length consistency
    seed: int = 0
    lengths: tuple[int, ...] = field(default=())   # student lengths; () = model.lengths

    def __post_init__(self) -> None:
        validate.count("--steps", self.steps)
        validate.count("--batch-size", self.batch_size, 8)
        validate.positive("--lr", self.lr)
        validate.count("--warmup", self.warmup, 0)
        validate.count("--seed", self.seed, 0)

    def student_lengths(self) -> tuple[int, ...]:
        return self.lengths or self.model.lengths


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, constant, cosine to zero over the last decay_frac of the run."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    tail_start = int(cfg.steps * (1.0 - cfg.decay_frac))
    if step < tail_start:
        return cfg.lr
    frac = (step - tail_start) / max(1, cfg.steps - tail_start)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))


def _rand_lengths(lengths: tuple[int, ...], n: int, gen: torch.Generator) -> Tensor:
    choices = torch.tensor(lengths, dtype=torch.long)
    return choices[torch.randint(len(lengths), (n,), generator=gen)]       # (n,)


@torch.no_grad()
def _shortcut_targets(teacher: DiT, x1: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, ...]:
    """Time self-consistency rows: (x_t, t, dt_base, target), teacher at full length."""
    n = x1.shape[0]
    dt_base = torch.randint(0, FM_LEVEL, (n,), generator=gen)                # U{0..6}
    sections = 2.0 ** dt_base.float()                                        # 1, 2, ..., 64
    t = torch.floor(torch.rand(n, generator=gen) * sections) / sections      # on the student's grid
    x0 = torch.randn(x1.shape, generator=gen)
    tb = t[:, None, None, None]
    x_t = (1 - tb) * x0 + tb * x1
    half = (1.0 / sections / 2.0)                                            # the teacher's step
    full = teacher.config.depth
    v1 = teacher(x_t, t, dt_base + 1, y, full)
    v2 = teacher(x_t + half[:, None, None, None] * v1, t + half, dt_base + 1, y, full)
    return x_t, t, dt_base, (v1 + v2) / 2


def _flow_rows(x1: Tensor, y: Tensor, cfg: TrainConfig, gen: torch.Generator) -> tuple[Tensor, ...]:
    """Flow-matching rows: (x_t, t, dt_base=7, dropped labels, target x1 - x0)."""
    n = x1.shape[0]
    t = torch.floor(torch.rand(n, generator=gen) * 2 ** FM_LEVEL) / 2 ** FM_LEVEL
    x0 = torch.randn(x1.shape, generator=gen)
    tb = t[:, None, None, None]
    drop = torch.rand(n, generator=gen) < cfg.model.class_dropout_prob
    y = torch.where(drop, torch.full_like(y, cfg.model.num_classes), y)
    return (1 - tb) * x0 + tb * x1, t, torch.full((n,), FM_LEVEL), y, x1 - x0


def make_batch(teacher: DiT, x1: Tensor, y: Tensor, cfg: TrainConfig, gen: torch.Generator) -> dict[str, Tensor]:
    """Student inputs and regression targets for one batch of data (x1 (B,C,H,W), y (B,))."""
    b = x1.shape[0]
    n_sc = b // cfg.bootstrap_every
    n_lc = b // cfg.depth_bootstrap
    sc = _shortcut_targets(teacher, x1[:n_sc], y[:n_sc], gen)
    fx, ft, fd, fy, ftarget = _flow_rows(x1[n_sc:], y[n_sc:], cfg, gen)
    if n_lc > 0:                                     # last rows: teacher at an independent length l'
        l_teacher = _rand_lengths(cfg.student_lengths(), n_lc, gen)
        with torch.no_grad():
            ftarget[-n_lc:] = teacher(fx[-n_lc:], ft[-n_lc:], fd[-n_lc:], fy[-n_lc:], l_teacher)
    return {
        "x": torch.cat([sc[0], fx]), "t": torch.cat([sc[1], ft]), "dt_base": torch.cat([sc[2], fd]),
        "y": torch.cat([y[:n_sc], fy]), "length": _rand_lengths(cfg.student_lengths(), b, gen),
        "target": torch.cat([sc[3], ftarget]),
    }


class Trainer:
    """Holds the student, its EMA teacher, the optimiser and the data; `step()` does one update."""

    def __init__(self, cfg: TrainConfig, x: np.ndarray, y: np.ndarray):
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.model = DiT(cfg.model).train()
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.999),
                                     weight_decay=cfg.weight_decay)
        self.x = torch.tensor(np.asarray(x), dtype=torch.float32)          # (N, C, H, W)
        self.y = torch.tensor(np.asarray(y), dtype=torch.long)             # (N,)
        self.k = 0

    def step(self) -> float:
        idx = torch.randint(len(self.x), (self.cfg.batch_size,), generator=self.gen)
        batch = make_batch(self.ema, self.x[idx], self.y[idx], self.cfg, self.gen)
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.k, self.cfg)
        pred = self.model(batch["x"], batch["t"], batch["dt_base"], batch["y"], batch["length"])
        loss = torch.mean((pred - batch["target"]) ** 2)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self._update_ema()
        self.k += 1
        return float(loss.detach())

    @torch.no_grad()
    def _update_ema(self) -> None:
        tau = min(self.cfg.ema_tau, (1 + self.k) / (10 + self.k))
        for pe, p in zip(self.ema.parameters(), self.model.parameters()):
            pe.lerp_(p, 1.0 - tau)


def train(cfg: TrainConfig, x: np.ndarray, y: np.ndarray, progress: bool = True,
          on_snapshot: Callable[[DiT, int], None] | None = None, snapshot_every: int = 0) -> tuple[DiT, list[float]]:
    """Run cfg.steps updates; returns (EMA model in eval mode, per-step losses).

    on_snapshot(ema, step) is called every `snapshot_every` steps (to watch a long run).
    """
    from tqdm import tqdm

    trainer = Trainer(cfg, x, y)
    losses: list[float] = []
    # disable=None: no bar without a terminal (a log or a test captures one error line)
    bar = tqdm(range(cfg.steps), desc="train", disable=None if progress else True, mininterval=5.0)
    for _ in bar:
        losses.append(trainer.step())
        if trainer.k % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", lr=f"{lr_at(trainer.k, cfg):.2e}")
        if on_snapshot is not None and snapshot_every and trainer.k % snapshot_every == 0 and trainer.k < cfg.steps:
            on_snapshot(trainer.ema, trainer.k)
    return trainer.ema.eval(), losses


def train_config_json(cfg: TrainConfig) -> str:
    """The run's settings as JSON (stored in the checkpoint's metadata)."""
    import dataclasses
    import json

    d = dataclasses.asdict(cfg)
    d["lengths"] = list(cfg.student_lengths())
    return json.dumps(d, sort_keys=True)
