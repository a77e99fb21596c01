"""Reference samplers on fields with closed-form solutions, and on the DiT path."""

import math

import pytest
import torch

from odelt.errors import ConfigError
from odelt.ode.schedule import level_for_steps
from tests.models_zoo import random_model
from odelt.models.sampling import SOLVERS, sample_dopri5, sample_euler, sample_labels_noise


class LinearField(torch.nn.Module):
    """Stand-in velocity v = a*x (exact x1 = x0 e^a); records the dt_base levels it is called with."""

    def __init__(self, a: float):
        super().__init__()
        self.a, self.levels, self.calls = a, set(), 0

    def forward(self, x, t, dt_base, y, length):
        self.levels.update(dt_base.tolist())
        self.calls += 1
        return self.a * x


class CosField(torch.nn.Module):
    """v = cos(t) everywhere (exact x1 = x0 + sin 1)."""

    def forward(self, x, t, dt_base, y, length):
        return torch.cos(t).view(-1, 1, 1, 1).expand_as(x)


def _xy(b=4):
    return torch.randn(b, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.zeros(b, dtype=torch.long)


@pytest.mark.parametrize("steps", [1, 3, 4, 128])
def test_euler_matches_its_closed_form(steps):
    x0, y = _xy()
    f = LinearField(-0.7)
    x1 = sample_euler(f, x0, y, 8, steps)
    assert torch.allclose(x1, x0 * (1 - 0.7 / steps) ** steps, rtol=1e-5, atol=1e-6)
    assert f.levels == {float(level_for_steps(steps))} and f.calls == steps
    expected = x0 + sum(math.cos(i / steps) for i in range(steps)) / steps   # left Riemann sum
    assert torch.allclose(sample_euler(CosField(), x0, y, 8, steps), expected, atol=1e-5)


def test_level_for_steps_rounds_and_clamps():
    assert [level_for_steps(s) for s in (1, 2, 3, 4, 6, 128, 181, 1000)] == [0, 1, 2, 2, 3, 7, 7, 7]
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        level_for_steps(0)


def test_dopri5_solves_to_tolerance_and_counts_calls():
    x0, y = _xy()
    exact = x0 * math.exp(1.3)
    errs, nfes = [], []
    for tol in (1e-3, 1e-6):
        f = LinearField(1.3)
        x1, nfe = sample_dopri5(f, x0, y, 8, rtol=tol, atol=tol)
        assert nfe == f.calls and f.levels == {7.0}                      # default level: flow matching
        errs.append(float((x1 - exact).abs().max()))
        nfes.append(nfe)
    assert errs[0] < 1e-2 and errs[1] < 1e-5 and errs[1] < errs[0]
    assert nfes[1] > nfes[0] >= 8
    x1, _ = sample_dopri5(CosField(), x0, y, 8, rtol=1e-6, atol=1e-6, dt_base=0)
    assert torch.allclose(x1, x0 + math.sin(1.0), atol=1e-5)


def test_dopri5_rejects_zero_tolerances():
    x0, y = _xy()
    with pytest.raises(ConfigError, match="rtol > 0 or atol > 0"):
        sample_dopri5(LinearField(1.0), x0, y, 8, rtol=0, atol=0)


def test_dit_path_shapes_and_mixed_lengths():
    model = random_model("tiny", seed=0, std=0.05)
    noise, y = sample_labels_noise(6, 10, (1, 8, 8), seed=1)
    assert y.tolist() == [0, 1, 2, 3, 4, 5]
    lengths = torch.tensor([2, 4, 2, 4, 2, 4])
    mixed = sample_euler(model, noise, y, lengths, 4)
    assert mixed.shape == (6, 1, 8, 8) and torch.isfinite(mixed).all()
    for l in (2, 4):
        rows = lengths == l
        alone = sample_euler(model, noise[rows], y[rows], l, 4)
        assert torch.allclose(mixed[rows], alone, atol=1e-5)
    x, nfe = SOLVERS["dopri5"](model, noise, y, 4, rtol=1e-2, atol=1e-2)
    assert x.shape == noise.shape and nfe >= 8
