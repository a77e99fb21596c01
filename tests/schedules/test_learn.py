import math

import pytest
import torch
from torch import nn

from odelt.schedules.amed import AMEDSpec, AMEDStudent, learn_amed
from odelt.schedules.learn import LearnConfig, eval_rmse, run_steps
from odelt.schedules.ld3 import LD3Student, StepSpec, learn_ld3, uniform_grid
from odelt.schedules.lengths import best_single_length, search_lengths
from odelt.ode.schedule import level_for_step
from odelt.schedules.problem import Pairs

FAST = LearnConfig(n_pairs=24, n_train=12, batch=6, iters=40, lr=0.05, val_every=5, patience=20)


def test_dt_base_rule():
    assert [level_for_step(h) for h in (1.0, 0.5, 0.25, 0.3, 1 / 128, 1 / 1000)] == [0, 1, 2, 2, 7, 7]


def test_gradients_flow_through_the_shared_solver_code(tiny, tiny_pairs):
    train, _, _ = tiny_pairs
    student = LD3Student(StepSpec("ipndm", (4, 4, 4), 7), uniform_grid(3))
    x = run_steps(tiny, student.plan(), train.z[:4], train.y[:4])
    ((x - train.x[:4]) ** 2).mean().backward()
    assert student.g.xi.grad is not None and bool((student.g.xi.grad.abs() > 0).any())


@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m"])
def test_ld3_loss_decreases_on_a_tiny_problem(tiny, tiny_pairs, solver):
    train, val, held = tiny_pairs
    spec = StepSpec(solver, (4,) * 3, 7)
    init = LD3Student(spec, uniform_grid(3))
    before_train, before_held = eval_rmse(tiny, init, train), eval_rmse(tiny, init, held)
    student, hist = learn_ld3(tiny, spec, train, val, FAST, progress=False)
    assert hist.best_val < hist.init_val
    assert eval_rmse(tiny, student, train) < before_train
    assert eval_rmse(tiny, student, held) < before_held          # held-out noise, never trained on
    ts = student.plan().ts
    assert ts[0].item() == 0.0 and ts[-1].item() == 1.0 and bool((ts[1:] > ts[:-1]).all())


class LinearFlow(nn.Module):
    """dx/dt = a x: Euler loses (1 + a h) against exp(a h) in every step, so a direction scale
    c > 1 provably reduces the error; the exact solution is x1 = exp(a) z."""

    def __init__(self, a: float):
        super().__init__()
        self.a = a
        self.w = nn.Parameter(torch.zeros(()))     # so requires_grad_(False) has something to freeze

    def forward(self, x, t, dt_base, y, length):
        return self.a * x


def _linear_pairs(a: float, n: int, seed: int) -> Pairs:
    z = torch.randn((n, 1, 4, 4), generator=torch.Generator().manual_seed(seed))
    return Pairs(z, torch.zeros(n, dtype=torch.long), z * math.exp(a))


@pytest.mark.parametrize("host", ["euler", "ipndm", "amed"])
def test_amed_never_worse_than_its_base_on_a_flow_where_it_provably_helps(host):
    flow = LinearFlow(1.0)
    train, val, held = _linear_pairs(1.0, 8, 0), _linear_pairs(1.0, 8, 1), _linear_pairs(1.0, 8, 2)
    spec = AMEDSpec(host, (1,) * 4, 7)
    base = eval_rmse(flow, AMEDStudent(spec, uniform_grid(2)), held)      # r=1/2, c=1: the plain host
    student, hist = learn_amed(flow, spec, train, val, FAST, progress=False)
    learned = eval_rmse(flow, student, held)
    assert learned <= base and learned < 0.8 * base
    _, c, _ = student.k.constants()
    assert bool((c > 1).any())                         # it learned to lengthen the too-short Euler steps


def test_per_step_lengths_respect_the_budget(tiny, tiny_pairs):
    train, val, _ = tiny_pairs
    cfg = LearnConfig(n_pairs=24, n_train=12, batch=6, iters=5, val_every=5)
    for budget in (6, 9):
        results = search_lengths(tiny, "euler", budget, train, val, cfg, dt_mode=7, progress=False)
        assert results and all(r.blocks <= budget for r in results)
        assert all(set(r.lengths) <= set(tiny.config.lengths) for r in results)
        assert all(len(r.student.plan().ts) == len(r.lengths) + 1 for r in results)
    singles = best_single_length(tiny, "euler", 8, train, val, cfg, dt_mode=7, progress=False)
    assert sorted(r.lengths for r in singles) == [(2, 2, 2, 2), (4, 4)]
