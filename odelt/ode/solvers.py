"""ODE solvers for flow matching, written once for numpy arrays and torch tensors.

Convention: t=0 is noise, t=1 is data, dx/dt = v(x, t) (the network predicts v = x1 - x0).

One signature for every solver:

    solver(f, x, ts, *, t_eval=None, callback=None, **params) -> x at ts[-1]

    f(x, t, n) -> v   velocity at state x and time t, asked for by step n. The driver maps n to the
                      step's length l_n and shortcut level dt_base_n, so solvers never see them.
    ts                N+1 increasing times: a list of python floats or numpy float32 scalars (the
                      runtime, for fixed-step solvers: float32 steps times float32 states take
                      numpy's faster path; either keeps float32 states float32) or a torch tensor
                      (the schedule learner: gradients flow through the time points).
    t_eval            optional N+1 times at which the model is called instead of ts, x unchanged
                      (LD3's decoupled evaluation times).
    callback(n, t, x) after step n has landed at time t (the runtime checks for NaN/Inf there).

States only meet +, -, * and /, so the same code runs on both array types. DPM-Solver++ also
takes log() of time ratios, through `_log`, which picks math.log or Tensor.log.

Two families (schedules.md §4.2), recorded in SOLVER_INFO because learned grids do not transfer:
  fm_velocity      Runge-Kutta / Adams-Bashforth on v in t (euler, heun, midpoint, amed, ipndm*, dopri5);
  eps_exponential  exponential integrators on the data prediction D = x + (1-t) v (dpmpp_2m/3m).
Euler is the one map both families share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from odelt.errors import RuntimeFailure, ScheduleError

Velocity = Callable[[Any, Any, int], Any]
Callback = Callable[[int, Any, Any], None]


@dataclass(frozen=True)
class SolverInfo:
    order: int                 # convergence order of the method (multistep: with an accurate start)
    calls_per_step: int        # model calls per grid step; 0 = adaptive (data-dependent)
    family: str                # "fm_velocity" | "eps_exponential"
    max_order: int = 0         # > 0: the solver takes an `order` parameter up to this
    # False: every velocity f returns is consumed before the next call, so the runtime may hand
    # out its reused output buffer without a copy (saves a copy per step at batch 1).
    holds_velocity: bool = True


SOLVERS: dict[str, Callable[..., Any]] = {}
SOLVER_INFO: dict[str, SolverInfo] = {}


def register(name: str, info: SolverInfo) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def add(fn: Callable[..., Any]) -> Callable[..., Any]:
        SOLVERS[name], SOLVER_INFO[name] = fn, info
        return fn
    return add


def nfe_for(name: str, n_steps: int) -> int | None:
    """Model calls (without the CFG multiplier) a fixed-grid solver makes; None when adaptive."""
    per = SOLVER_INFO[name].calls_per_step
    return per * n_steps if per else None


def _log(t: Any) -> Any:
    return t.log() if hasattr(t, "log") else math.log(t)


def _value(t: Any) -> float:
    """A time point as a python float, for control flow only (never on the gradient path)."""
    return float(t.detach()) if hasattr(t, "detach") else float(t)


def _done(callback: Callback | None, n: int, t: Any, x: Any) -> None:
    if callback is not None:
        callback(n, t, x)


# -- one-stage and two-stage methods ---------------------------------------------------------------

@register("euler", SolverInfo(order=1, calls_per_step=1, family="fm_velocity", holds_velocity=False))
def euler(f: Velocity, x: Any, ts: Any, *, t_eval: Any = None, scale: Any = None,
          callback: Callback | None = None) -> Any:
    """scale[n] (optional) multiplies step n's increment: AMED-Plugin on an interleaved grid."""
    te = ts if t_eval is None else t_eval
    # Step sizes first: scalar arithmetic between two network calls runs with cold caches (on the
    # digits model at batch 1 this loop's host time fell ~10%, measured).
    hs = [(1.0 if scale is None else scale[n]) * (ts[n + 1] - ts[n]) for n in range(len(ts) - 1)]
    for n, h in enumerate(hs):
        x = x + h * f(x, te[n], n)
        if callback is not None:
            callback(n, ts[n + 1], x)
    return x


@register("heun", SolverInfo(order=2, calls_per_step=2, family="fm_velocity"))
def heun(f: Velocity, x: Any, ts: Any, *, t_eval: Any = None, callback: Callback | None = None) -> Any:
    te = ts if t_eval is None else t_eval
    for n in range(len(ts) - 1):
        h = ts[n + 1] - ts[n]
        v = f(x, te[n], n)
        v_end = f(x + h * v, te[n + 1], n)          # trapezoid: predictor lands on the next grid point
        x = x + h * (v + v_end) / 2
        _done(callback, n, ts[n + 1], x)
    return x


@register("midpoint", SolverInfo(order=2, calls_per_step=2, family="fm_velocity", holds_velocity=False))
def midpoint(f: Velocity, x: Any, ts: Any, *, t_eval: Any = None, callback: Callback | None = None) -> Any:
    te = ts if t_eval is None else t_eval
    for n in range(len(ts) - 1):
        h = ts[n + 1] - ts[n]
        x_mid = x + (h / 2) * f(x, te[n], n)
        x = x + h * f(x_mid, ts[n] + h / 2, n)
        _done(callback, n, ts[n + 1], x)
    return x


@register("amed", SolverInfo(order=2, calls_per_step=2, family="fm_velocity", holds_velocity=False))
def amed(f: Velocity, x: Any, ts: Any, *, t_mid: Any = None, scale: Any = None, t_eval: Any = None,
         callback: Callback | None = None) -> Any:
    """AMED step in FM-native form (schedules.md §4.6): an Euler half-step to a learned mid time
    t_mid[n], then the full step along the mid-point velocity scaled by scale[n]. With the defaults
    (mid-point, scale 1) it is the midpoint method, order 2; learned scales trade order for accuracy
    at few steps."""
    te = ts if t_eval is None else t_eval
    for n in range(len(ts) - 1):
        h = ts[n + 1] - ts[n]
        tm = ts[n] + h / 2 if t_mid is None else t_mid[n]
        c = 1.0 if scale is None else scale[n]
        x_mid = x + (tm - ts[n]) * f(x, te[n], n)
        x = x + (c * h) * f(x_mid, tm, n)
        _done(callback, n, ts[n + 1], x)
    return x


# -- Adams-Bashforth (iPNDM) -----------------------------------------------------------------------

# Classic equal-step coefficients, newest first (diff-sampler's iPNDM).
AB_FIXED = ([1.0], [1.5, -0.5], [23 / 12, -16 / 12, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -9 / 24])
_GAUSS = 1 / math.sqrt(3)   # 2-point Gauss-Legendre integrates the cubic Lagrange basis exactly


def ab_weights(nodes: list[Any], t: Any, t_next: Any) -> list[Any]:
    """Variable-step Adams-Bashforth weights: w_j = integral over [t, t_next] of the Lagrange basis
    polynomial of nodes[j] (degree <= 3). Plain arithmetic, so differentiable in the time points."""
    half, mid = (t_next - t) / 2, (t + t_next) / 2
    points = (mid - half * _GAUSS, mid + half * _GAUSS)
    weights = []
    for j, tj in enumerate(nodes):
        acc = 0.0
        for s in points:
            basis = 1.0
            for m, tm in enumerate(nodes):
                if m != j:
                    basis = basis * (s - tm) / (tj - tm)
            acc = acc + basis
        weights.append(acc * half)
    return weights


def _adams_bashforth(f: Velocity, x: Any, ts: Any, order: int, fixed: bool, t_eval: Any,
                     callback: Callback | None, scale: Any = None) -> Any:
    if not 1 <= order <= 4:
        raise ScheduleError(f"iPNDM order must be 1..4, found {order}")
    te = ts if t_eval is None else t_eval
    hist_t: list[Any] = []
    hist_v: list[Any] = []                               # newest first, at most `order` entries
    for n in range(len(ts) - 1):
        hist_t = [ts[n]] + hist_t[: order - 1]
        hist_v = [f(x, te[n], n)] + hist_v[: order - 1]  # the order ramps up as history accumulates
        h = ts[n + 1] - ts[n]
        if fixed:
            weights = [h * b for b in AB_FIXED[len(hist_v) - 1]]
        else:
            weights = ab_weights(hist_t, ts[n], ts[n + 1])
        if scale is not None:                            # AMED-Plugin: scale this step's increment
            weights = [scale[n] * w for w in weights]
        for w, v in zip(weights, hist_v):
            x = x + w * v
        _done(callback, n, ts[n + 1], x)
    return x


@register("ipndm", SolverInfo(order=4, calls_per_step=1, family="fm_velocity", max_order=4))
def ipndm(f: Velocity, x: Any, ts: Any, *, order: int = 4, t_eval: Any = None, scale: Any = None,
          callback: Callback | None = None) -> Any:
    """iPNDM: Adams-Bashforth on v with the equal-step coefficients whatever the grid (the
    'improved PNDM' heuristic of diff-sampler). Exact AB order only on uniform grids."""
    return _adams_bashforth(f, x, ts, order, True, t_eval, callback, scale)


@register("ipndm_v", SolverInfo(order=4, calls_per_step=1, family="fm_velocity", max_order=4))
def ipndm_v(f: Velocity, x: Any, ts: Any, *, order: int = 4, t_eval: Any = None, scale: Any = None,
            callback: Callback | None = None) -> Any:
    """Variable-step Adams-Bashforth on v: the weights integrate the interpolating polynomial on
    the actual grid, so the order holds on learned (non-uniform) grids. Equals `ipndm` on a
    uniform grid."""
    return _adams_bashforth(f, x, ts, order, False, t_eval, callback, scale)


# -- DPM-Solver++ multistep (data prediction) in FM time -------------------------------------------
# With alpha_t = t, sigma_t = 1 - t, lambda = log(t / (1 - t)) and D = x + (1 - t) v, the first-order
# update (sigma_n/sigma_c) x - alpha_n expm1(-h) D is ((1-t_n) x + (t_n - t_c) D) / (1 - t_c): Euler.
# log() is only needed for the step-size ratios of the higher orders. lambda is infinite at t=0 and
# t=1, so history at t=0 is never used and a step landing on t=1 is first order (schedules.md §4.3).

def dpmpp_update(x: Any, hist_t: list[Any], hist_d: list[Any], tc: Any, tn: Any, steps_left: int) -> Any:
    """One DPM-Solver++ multistep update from t_c to t_n, given the history of times and data
    predictions (newest first); the order falls to what the history and `steps_left` allow."""
    lam = lambda t: _log(t / (1 - t))                   # noqa: E731
    usable = next((k for k, t in enumerate(hist_t) if _value(t) <= 0), len(hist_t))
    k = min(usable, steps_left)                         # lower_order_final, as diff-sampler
    k = 1 if _value(tn) >= 1 else max(k, 1)
    keep = (1 - tn) / (1 - tc)                          # sigma_n / sigma_c
    coef = (tn - tc) / (1 - tc)                         # -alpha_n * expm1(-h)
    if k == 1:
        return keep * x + coef * hist_d[0]
    h = lam(tn) - lam(tc)
    r0 = (lam(tc) - lam(hist_t[1])) / h
    d1_0 = (hist_d[0] - hist_d[1]) / r0
    if k == 2:
        return keep * x + coef * (hist_d[0] + d1_0 / 2)
    r1 = (lam(hist_t[1]) - lam(hist_t[2])) / h
    d1_1 = (hist_d[1] - hist_d[2]) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi1 = -coef / tn                                   # expm1(-h), without exp/log
    phi2 = phi1 / h + 1
    phi3 = phi2 / h - 0.5
    # d2 ~ h^2 D''/2 and the exact D'' weight is -alpha_n h^2 phi3, hence 2*phi3. The DPM-Solver
    # reference code weights d2 by phi3 alone; that leaves a local O(h^3) error (measured: global
    # order 2), this form measures order 3.
    return keep * x - tn * (phi1 * hist_d[0] - phi2 * d1 + 2 * phi3 * d2)


def _dpmpp(f: Velocity, x: Any, ts: Any, order: int, t_eval: Any, callback: Callback | None) -> Any:
    te = ts if t_eval is None else t_eval
    hist_t: list[Any] = []
    hist_d: list[Any] = []                              # data predictions, newest first
    n_steps = len(ts) - 1
    for n in range(n_steps):
        tc, tn = ts[n], ts[n + 1]
        d = x + (1 - te[n]) * f(x, te[n], n)
        hist_t, hist_d = [tc] + hist_t[: order - 1], [d] + hist_d[: order - 1]
        x = dpmpp_update(x, hist_t, hist_d, tc, tn, n_steps - n)
        _done(callback, n, tn, x)
    return x


@register("dpmpp_2m", SolverInfo(order=2, calls_per_step=1, family="eps_exponential"))
def dpmpp_2m(f: Velocity, x: Any, ts: Any, *, t_eval: Any = None, callback: Callback | None = None) -> Any:
    return _dpmpp(f, x, ts, 2, t_eval, callback)


@register("dpmpp_3m", SolverInfo(order=3, calls_per_step=1, family="eps_exponential"))
def dpmpp_3m(f: Velocity, x: Any, ts: Any, *, t_eval: Any = None, callback: Callback | None = None) -> Any:
    return _dpmpp(f, x, ts, 3, t_eval, callback)


# -- adaptive Dormand-Prince 5(4) ------------------------------------------------------------------

_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),   # = the 5th-order weights (FSAL)
)
# 5th-order minus embedded 4th-order weights: the local error estimate.
_DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


def _dp_step(f: Velocity, x: Any, t: Any, h: Any, k1: Any, n: int) -> tuple[Any, Any, Any]:
    """One Dormand-Prince step from (x, t) with k1 = f(x, t): returns (x_new, k_last, error)."""
    ks = [k1]
    for i in range(1, 7):
        xi = x
        for a, k in zip(_DP_A[i], ks):
            if a:
                xi = xi + (h * a) * k
        ks.append(f(xi, t + _DP_C[i] * h, n))
    err = 0.0
    for e, k in zip(_DP_E, ks):
        if e:
            err = err + (h * e) * k
    return xi, ks[6], err


def _rms(a: Any) -> float:
    return float((a * a).mean()) ** 0.5


@register("dopri5", SolverInfo(order=5, calls_per_step=0, family="fm_velocity"))
def dopri5(f: Velocity, x: Any, ts: Any, *, rtol: float = 1e-3, atol: float = 1e-3, adaptive: bool = True,
           max_steps: int = 1000, t_eval: Any = None, callback: Callback | None = None) -> Any:
    """Dormand-Prince 5(4) with FSAL. adaptive=True: error-controlled steps inside each grid
    interval (steps are clipped to land on every grid point, so per-interval lengths still apply;
    the usual grid is just [0, 1]); the scaled RMS error with scale atol + rtol*(|x|+|x_new|)/2
    must be <= 1. adaptive=False: exactly one step per grid interval (order-5 fixed-step RK).
    t_eval is not used: adaptive evaluation times are not a grid."""
    del t_eval
    calls = 0
    for n in range(len(ts) - 1):
        t, t_end = ts[n], ts[n + 1]
        k1 = f(x, t, n)
        h = (t_end - t) if not adaptive else _initial_step(x, k1, t_end - t, rtol, atol)
        while float(t_end - t) > 1e-12 * max(1.0, abs(float(t_end))):
            h = h if float(t + h) < float(t_end) else t_end - t
            x_new, k_new, err = _dp_step(f, x, t, h, k1, n)
            calls += 6
            ratio = _rms(err / (atol + rtol * (abs(x) + abs(x_new)) / 2)) if adaptive else 0.0
            if ratio <= 1.0:
                t, x, k1 = t + h, x_new, k_new
            if calls > 6 * max_steps:
                raise RuntimeFailure(f"dopri5 needed more than {max_steps} steps in step {n}")
            if adaptive:   # standard controller: safety 0.9, growth clipped to [0.2, 5]
                h = h * min(5.0, max(0.2, 0.9 * (ratio if ratio > 0 else 1e-10) ** -0.2))
        _done(callback, n, t_end, x)
    return x


def _initial_step(x: Any, v: Any, span: Any, rtol: float, atol: float) -> Any:
    # Hairer's first guess without the extra evaluation: 1% of |x| / |v| in the scaled norm.
    scale = atol + rtol * abs(x)
    d0, d1 = _rms(x / scale), _rms(v / scale)
    h = 0.01 * d0 / d1 if d0 > 1e-5 and d1 > 1e-5 else 1e-3
    return min(h, float(span))
