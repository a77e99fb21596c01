"""Every stepper is its solver, one evaluation at a time: driven on the same velocity function it
returns the same array bit for bit, and asks for the same (time, step) evaluations in order."""

from __future__ import annotations

import numpy as np
import pytest

from odelt.ode.solvers import SOLVER_INFO, SOLVERS
from odelt.ode.steppers import STEPPERS, drive

GRID = [np.float32(v) for v in (0.0, 0.1, 0.3, 0.55, 0.8, 1.0)]


def velocity(x, t, n):
    return np.tanh(x) * np.float32(1.5 - t) + np.float32(0.1 * (n + 1))     # nonlinear in x, t and n


@pytest.mark.parametrize("name", sorted(STEPPERS))
def test_stepper_matches_its_solver_bit_for_bit(name):
    x0 = np.random.default_rng(0).standard_normal((3, 1, 4, 4)).astype(np.float32)
    seen_solver, seen_stepper = [], []

    def record(log):
        def f(x, t, n):
            log.append((float(t), n))
            return velocity(x, t, n)
        return f

    want = SOLVERS[name](record(seen_solver), x0, GRID)
    got = drive(name, record(seen_stepper), x0, GRID)
    np.testing.assert_array_equal(got, want)
    assert seen_stepper == seen_solver and len(seen_solver) == SOLVER_INFO[name].calls_per_step * (len(GRID) - 1)


@pytest.mark.parametrize("name,kwargs", [
    ("euler", {"scale": [np.float32(v) for v in (1.0, 0.9, 1.1, 1.0, 0.95)]}),
    ("euler", {"t_eval": [np.float32(v) for v in (0.0, 0.12, 0.31, 0.5, 0.82, 1.0)]}),
    ("ipndm", {"order": 3, "scale": [np.float32(v) for v in (1.0, 0.9, 1.1, 1.0, 0.95)]}),
    ("ipndm_v", {"order": 2}),
    ("amed", {"t_mid": [np.float32(v) for v in (0.04, 0.2, 0.4, 0.7, 0.9)],
              "scale": [np.float32(v) for v in (1.0, 0.9, 1.1, 1.0, 0.95)]}),
])
def test_learned_schedule_parameters_step_the_same(name, kwargs):
    x0 = np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)
    np.testing.assert_array_equal(drive(name, velocity, x0, GRID, **kwargs), SOLVERS[name](velocity, x0, GRID, **kwargs))


def test_adaptive_dopri5_has_no_stepper():
    assert "dopri5" not in STEPPERS
    assert set(STEPPERS) == {n for n, info in SOLVER_INFO.items() if info.calls_per_step}
