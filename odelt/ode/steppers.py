"""The fixed-step solvers of odelt.ode.solvers, one velocity evaluation at a time.

A solver in solvers.py owns its loop and calls f(x, t, n) itself, so a whole trajectory runs
inside one call. A server that batches the steps of many requests needs the opposite: each
request's solver stops at every evaluation and waits while the server gathers rows from other
requests. Here every solver is a generator with the same arithmetic, in the same order, as its
solvers.py twin (so a request's state is bit-for-bit what the solver makes on the same velocities):

    gen = STEPPERS["heun"](x, ts)
    x_eval, t, n = next(gen)            # the first evaluation it needs (state, time, step index)
    x_eval, t, n = gen.send(v)          # hand back its velocity, get the next request ...
    ... StopIteration.value             # ... until it returns the final state

`drive(name, f, x, ts, **kw)` runs a stepper to the end with a velocity function: the
tests compare it with SOLVERS[name] on the same f. Adaptive dopri5 has no stepper (its number of
evaluations depends on the data): a server runs such a request alone or refuses it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Generator

from odelt.errors import ScheduleError
from odelt.ode.solvers import AB_FIXED, ab_weights, dpmpp_update

Stepper = Generator[tuple[Any, Any, int], Any, Any]


def _log(t: Any) -> Any:
    return t.log() if hasattr(t, "log") else math.log(t)


def _value(t: Any) -> float:
    return float(t.detach()) if hasattr(t, "detach") else float(t)


def euler(x: Any, ts: Any, *, t_eval: Any = None, scale: Any = None) -> Stepper:
    te = ts if t_eval is None else t_eval
    hs = [(1.0 if scale is None else scale[n]) * (ts[n + 1] - ts[n]) for n in range(len(ts) - 1)]
    for n, h in enumerate(hs):
        x = x + h * (yield x, te[n], n)
    return x


def heun(x: Any, ts: Any, *, t_eval: Any = None) -> Stepper:
    te = ts if t_eval is None else t_eval
    for n in range(len(ts) - 1):
        h = ts[n + 1] - ts[n]
        v = yield x, te[n], n
        v_end = yield x + h * v, te[n + 1], n
        x = x + h * (v + v_end) / 2
    return x


def midpoint(x: Any, ts: Any, *, t_eval: Any = None) -> Stepper:
    te = ts if t_eval is None else t_eval
    for n in range(len(ts) - 1):
        h = ts[n + 1] - ts[n]
        x_mid = x + (h / 2) * (yield x, te[n], n)
        x = x + h * (yield x_mid, ts[n] + h / 2, n)
    return x


def amed(x: Any, ts: Any, *, t_mid: Any = None, scale: Any = None, t_eval: Any = None) -> Stepper:
    te = ts if t_eval is None else t_eval
    for n in range(len(ts) - 1):
        h = ts[n + 1] - ts[n]
        tm = ts[n] + h / 2 if t_mid is None else t_mid[n]
        c = 1.0 if scale is None else scale[n]
        x_mid = x + (tm - ts[n]) * (yield x, te[n], n)
        x = x + (c * h) * (yield x_mid, tm, n)
    return x


def _adams_bashforth(x: Any, ts: Any, order: int, fixed: bool, t_eval: Any, scale: Any) -> Stepper:
    if not 1 <= order <= 4:
        raise ScheduleError(f"iPNDM order must be 1..4, found {order}")
    te = ts if t_eval is None else t_eval
    hist_t: list[Any] = []
    hist_v: list[Any] = []
    for n in range(len(ts) - 1):
        hist_t = [ts[n]] + hist_t[: order - 1]
        hist_v = [(yield x, te[n], n)] + hist_v[: order - 1]
        h = ts[n + 1] - ts[n]
        if fixed:
            weights = [h * b for b in AB_FIXED[len(hist_v) - 1]]
        else:
            weights = ab_weights(hist_t, ts[n], ts[n + 1])
        if scale is not None:
            weights = [scale[n] * w for w in weights]
        for w, v in zip(weights, hist_v):
            x = x + w * v
    return x


def ipndm(x: Any, ts: Any, *, order: int = 4, t_eval: Any = None, scale: Any = None) -> Stepper:
    return (yield from _adams_bashforth(x, ts, order, True, t_eval, scale))


def ipndm_v(x: Any, ts: Any, *, order: int = 4, t_eval: Any = None, scale: Any = None) -> Stepper:
    return (yield from _adams_bashforth(x, ts, order, False, t_eval, scale))


def _dpmpp(x: Any, ts: Any, order: int, t_eval: Any) -> Stepper:
    te = ts if t_eval is None else t_eval
    hist_t: list[Any] = []
    hist_d: list[Any] = []
    n_steps = len(ts) - 1
    for n in range(n_steps):
        tc, tn = ts[n], ts[n + 1]
        d = x + (1 - te[n]) * (yield x, te[n], n)
        hist_t, hist_d = [tc] + hist_t[: order - 1], [d] + hist_d[: order - 1]
        x = dpmpp_update(x, hist_t, hist_d, tc, tn, n_steps - n)
    return x


def dpmpp_2m(x: Any, ts: Any, *, t_eval: Any = None) -> Stepper:
    return (yield from _dpmpp(x, ts, 2, t_eval))


def dpmpp_3m(x: Any, ts: Any, *, t_eval: Any = None) -> Stepper:
    return (yield from _dpmpp(x, ts, 3, t_eval))


STEPPERS: dict[str, Callable[..., Stepper]] = {
    "euler": euler, "heun": heun, "midpoint": midpoint, "amed": amed, "ipndm": ipndm, "ipndm_v": ipndm_v,
    "dpmpp_2m": dpmpp_2m, "dpmpp_3m": dpmpp_3m}


def drive(name: str, f: Callable[[Any, Any, int], Any], x: Any, ts: Any, **kwargs: Any) -> Any:
    """Run stepper `name` to the end, asking f for every velocity (what SOLVERS[name] computes)."""
    gen = STEPPERS[name](x, ts, **kwargs)
    try:
        request = next(gen)
        while True:
            request = gen.send(f(*request))
    except StopIteration as done:
        return done.value
