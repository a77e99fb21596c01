"""The trainer: loss falls on a tiny model, batch rows follow upstream's fractions, runs are seedable."""

import numpy as np
import pytest
import torch

from odelt.data import load_digits_nchw, split_digits
from odelt.models.train import FM_LEVEL, TrainConfig, Trainer, lr_at, make_batch, train


from tests.models_zoo import TINY


def test_digits_data_layout():
    x, y = load_digits_nchw()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() == -1.0 and x.max() == 1.0 and set(np.unique(y)) == set(range(10))
    (xt, yt), (xh, yh) = split_digits()
    assert len(xt) + len(xh) == 1797 and 300 < len(xh) < 400
    assert np.array_equal(split_digits()[1][0], xh)          # fixed, not random


def test_loss_falls_on_tiny_model():
    x, y = load_digits_nchw()
    cfg = TrainConfig(model=TINY, steps=80, batch_size=32, lr=3e-3, warmup=5, seed=0)
    ema, losses = train(cfg, x, y, progress=False)
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.75 * first, (first, last)
    assert not ema.training and all(not p.requires_grad for p in ema.parameters())


def test_seeded_runs_repeat_and_seeds_differ():
    x, y = load_digits_nchw()
    runs = []
    for seed in (0, 0, 1):
        tr = Trainer(TrainConfig(model=TINY, steps=3, batch_size=16, seed=seed), x, y)
        runs.append([tr.step() for _ in range(3)])
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_lr_schedule_warmup_constant_cosine():
    cfg = TrainConfig(model=TINY, steps=1000, lr=1e-3, warmup=100, decay_frac=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-5)
    assert lr_at(99, cfg) == pytest.approx(1e-3)
    assert lr_at(500, cfg) == lr_at(899, cfg) == pytest.approx(1e-3)
    assert lr_at(950, cfg) == pytest.approx(0.5e-3, rel=1e-6)
    assert lr_at(999, cfg) < 1e-5


class ConstTeacher(torch.nn.Module):
    """Stand-in teacher that returns a constant and records the lengths it was asked for."""

    config = TINY

    def __init__(self, value: float):
        super().__init__()
        self.value, self.lengths = value, []

    def forward(self, x, t, dt_base, y, length):
        self.lengths.append(length)
        return torch.full_like(x, self.value)


def test_batch_rows_follow_upstream_fractions():
    b = 64
    cfg = TrainConfig(model=TINY, batch_size=b, bootstrap_every=8, depth_bootstrap=8)
    x1 = torch.zeros(b, 1, 8, 8)
    y = torch.arange(b) % 10
    teacher = ConstTeacher(5.0)
    batch = make_batch(teacher, x1, y, cfg, torch.Generator().manual_seed(0))
    sc, lc = b // 8, b // 8
    # shortcut rows: levels 0..6, t on the student's 2^-dt_base grid, target = teacher average
    d = batch["dt_base"][:sc]
    assert d.min() >= 0 and d.max() <= FM_LEVEL - 1
    assert torch.allclose(batch["t"][:sc] * 2.0 ** d.float(), torch.round(batch["t"][:sc] * 2.0 ** d.float()))
    assert torch.all(batch["target"][:sc] == 5.0)
    assert torch.equal(batch["y"][:sc], y[:sc])                      # real labels
    # flow-matching rows: level 7, t on the 1/128 grid, target x1 - x0 = -x0 (not the teacher)
    fm = slice(sc, b - lc)
    assert torch.all(batch["dt_base"][fm] == FM_LEVEL)
    assert torch.allclose(batch["t"][fm] * 128, torch.round(batch["t"][fm] * 128))
    assert torch.allclose(batch["target"][fm], -(batch["x"][fm] - 0) / (1 - batch["t"][fm]).view(-1, 1, 1, 1))
    # length-consistency rows: level 7, teacher target, teacher at per-sample lengths from the trained set
    assert torch.all(batch["target"][-lc:] == 5.0) and torch.all(batch["dt_base"][-lc:] == FM_LEVEL)
    assert teacher.lengths[:2] == [TINY.depth, TINY.depth]              # two half-steps at full length
    assert set(teacher.lengths[2].tolist()) <= set(TINY.lengths)
    assert set(batch["length"].tolist()) == set(TINY.lengths)
