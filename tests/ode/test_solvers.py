"""Golden tests: every solver on a linear Gaussian flow with a closed-form solution.

Flow: per dimension, noise N(0,1) at t=0 to data N(mu, s^2) at t=1 along x_t = (1-t) x0 + t x1
(independent coupling). The marginal velocity is v = mu + (t s^2 - (1-t)) (x - t mu) / q(t) with
q = (1-t)^2 + t^2 s^2, and the ODE solution from x(0)=z is x(t) = t mu + sqrt(q(t)) z.
Time is warped by tau(t) = (1 - cos(pi t))/2: on the unwarped flow the midpoint method is
super-convergent (its h^3 error constant vanishes identically for y' = q'/(2q) y), which would hide
a wrong order. Multistep methods are measured on a grid graded at both ends (g ~ u^3), so their
lower-order start and lower-order final step do not mask the order of the method itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from odelt.errors import RuntimeFailure
from odelt.ode.solvers import SOLVER_INFO, SOLVERS, nfe_for

MU = np.array([0.5, -1.0, 2.0])
S = np.array([0.3, 1.5, 0.8])
Z = np.array([1.0, -0.7, 0.4])


def _tau(t):
    return (1 - np.cos(np.pi * t)) / 2


def velocity(x, t, n):
    tau, dtau = _tau(t), np.pi * np.sin(np.pi * t) / 2
    q = (1 - tau) ** 2 + tau * tau * S * S
    return dtau * (MU + (tau * S * S - (1 - tau)) * (x - tau * MU) / q)


def exact(t):
    tau = _tau(t)
    return tau * MU + np.sqrt((1 - tau) ** 2 + tau * tau * S * S) * Z


def uniform(n):
    return np.linspace(0.0, 1.0, n + 1).tolist()


def graded(n, p=3):
    u = np.linspace(0.0, 1.0, n + 1)
    return (u**p / (u**p + (1 - u) ** p)).tolist()


def measured_order(name, grid, ns, **kw):
    errs = [np.abs(SOLVERS[name](velocity, Z.copy(), grid(n), **kw) - exact(1.0)).max() for n in ns]
    slope = np.polyfit(np.log(ns), np.log(errs), 1)[0]      # err ~ C n^-p
    return -slope


CASES = [
    ("euler", {}, uniform, [16, 32, 64, 128], 1),
    ("heun", {}, uniform, [16, 32, 64, 128], 2),
    ("midpoint", {}, uniform, [16, 32, 64, 128], 2),
    ("amed", {}, uniform, [16, 32, 64, 128], 2),
    ("ipndm_v", {"order": 2}, graded, [32, 64, 128, 256], 2),
    ("ipndm_v", {"order": 3}, graded, [32, 64, 128, 256], 3),
    ("ipndm_v", {"order": 4}, graded, [32, 64, 128, 256, 512], 4),
    ("dpmpp_2m", {}, graded, [32, 64, 128, 256], 2),
    ("dpmpp_3m", {}, graded, [32, 64, 128, 256], 3),
    ("dopri5", {"adaptive": False}, uniform, [16, 32, 64, 128], 5),
]


@pytest.mark.parametrize("name,kw,grid,ns,order", CASES, ids=[f"{c[0]}{c[1].get('order', '')}" for c in CASES])
def test_convergence_order(name, kw, grid, ns, order):
    p = measured_order(name, grid, ns, **kw)
    assert abs(p - order) < 0.35, f"{name} {kw}: measured order {p:.2f}, theory {order}"


def test_every_registered_solver_is_covered():
    covered = {c[0] for c in CASES} | {"ipndm"}
    assert covered == set(SOLVERS)
    for name, info in SOLVER_INFO.items():
        assert info.family in ("fm_velocity", "eps_exponential"), name


def test_ipndm_fixed_coefficients_equal_adams_bashforth_on_uniform_grid():
    for order in (1, 2, 3, 4):
        a = SOLVERS["ipndm"](velocity, Z.copy(), uniform(12), order=order)
        b = SOLVERS["ipndm_v"](velocity, Z.copy(), uniform(12), order=order)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    # ... and differ on a non-uniform grid, where only ipndm_v keeps the Adams-Bashforth order.
    a = SOLVERS["ipndm"](velocity, Z.copy(), graded(12), order=3)
    b = SOLVERS["ipndm_v"](velocity, Z.copy(), graded(12), order=3)
    assert np.abs(a - b).max() > 1e-4


def test_dopri5_error_control():
    calls = {"n": 0}

    def counted(x, t, n):
        calls["n"] += 1
        return velocity(x, t, n)

    results = []
    tols = (1e-4, 1e-6, 1e-8)
    for tol in tols:
        calls["n"] = 0
        x = SOLVERS["dopri5"](counted, Z.copy(), [0.0, 1.0], rtol=tol, atol=tol)
        results.append((np.abs(x - exact(1.0)).max(), calls["n"]))
    errs, nfes = zip(*results)
    # Local error control: the global error follows the tolerance within a modest factor.
    assert all(err < 20 * tol for err, tol in zip(errs, tols)), errs
    assert nfes[0] < nfes[1] < nfes[2]


def test_dopri5_step_limit_is_an_error():
    with pytest.raises(RuntimeFailure, match="more than 3 steps"):
        SOLVERS["dopri5"](velocity, Z.copy(), [0.0, 1.0], rtol=1e-12, atol=1e-12, max_steps=3)


def test_nfe_counts_match_calls():
    for name in SOLVERS:
        calls = {"n": 0}

        def counted(x, t, n):
            calls["n"] += 1
            return velocity(x, t, n)

        SOLVERS[name](counted, Z.copy(), uniform(6))
        expected = nfe_for(name, 6)
        if expected is not None:
            assert calls["n"] == expected, name


def test_step_index_and_callback():
    seen, asked = [], set()

    def f(x, t, n):
        asked.add(n)
        return velocity(x, t, n)

    SOLVERS["heun"](f, Z.copy(), uniform(4), callback=lambda n, t, x: seen.append((n, t)))
    assert [n for n, _ in seen] == [0, 1, 2, 3] and seen[-1][1] == 1.0
    assert asked == {0, 1, 2, 3}


def test_float32_state_stays_float32():
    x = Z.astype(np.float32)
    v32 = lambda x, t, n: velocity(x, t, n).astype(np.float32)  # noqa: E731
    for name in SOLVERS:
        assert SOLVERS[name](v32, x, uniform(4)).dtype == np.float32, name


def test_t_eval_equal_to_grid_changes_nothing_and_amed_scale_matters():
    ts = graded(8)
    for name in ("euler", "ipndm_v", "dpmpp_3m"):
        a = SOLVERS[name](velocity, Z.copy(), ts)
        b = SOLVERS[name](velocity, Z.copy(), ts, t_eval=list(ts))
        np.testing.assert_array_equal(a, b)
    base = SOLVERS["amed"](velocity, Z.copy(), uniform(4))
    mids = [(a + b) / 2 for a, b in zip(uniform(4), uniform(4)[1:])]
    same = SOLVERS["amed"](velocity, Z.copy(), uniform(4), t_mid=mids, scale=[1.0] * 4)
    np.testing.assert_array_equal(base, same)
    scaled = SOLVERS["amed"](velocity, Z.copy(), uniform(4), t_mid=mids, scale=[1.1] * 4)
    assert np.abs(scaled - base).max() > 1e-3


def test_torch_tensors_and_gradients_through_time_points():
    torch = pytest.importorskip("torch")
    mu, s = torch.tensor(MU), torch.tensor(S)

    def v_torch(x, t, n):
        tau, dtau = (1 - torch.cos(math.pi * t)) / 2, math.pi * torch.sin(math.pi * t) / 2
        q = (1 - tau) ** 2 + tau * tau * s * s
        return dtau * (mu + (tau * s * s - (1 - tau)) * (x - tau * mu) / q)

    for name in SOLVERS:
        if name == "dopri5":
            continue      # adaptive step control is host logic, not meant for gradients
        ts = torch.tensor(graded(6), dtype=torch.float64, requires_grad=True)
        out = SOLVERS[name](v_torch, torch.tensor(Z), ts)
        ref = SOLVERS[name](velocity, Z.copy(), graded(6))
        np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-10, atol=1e-12)
        out.sum().backward()
        assert torch.isfinite(ts.grad).all() and ts.grad[1:-1].abs().sum() > 0, name
