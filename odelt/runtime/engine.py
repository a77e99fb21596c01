"""Continuous batching: many requests, each at its own step, length and plan, share network calls.

Requests are admitted at any time (`Engine.submit`), each with its own schedule (the planner's
choice for its budget: `PlanBook`), seed, labels and guidance, and its own solver state (a
stepper of odelt.ode.steppers: multistep history lives in the request's generator). Every pass
advances each request it takes by one velocity evaluation. Rows are gathered by the graph they need
next: with the segments layout a chunk runs once on every row whose length passes through it
(modulation, t, dt_base, class and length are per-row inputs), and each row leaves at its length's
exit head; with per-length graphs (or a backend that only runs whole chains) rows of the same length
share a call. A pass takes at most `max_rows` rows (the bundle's batch range, an engine's profile);
requests that did not fit go first next time.

A request's images are those `generate` makes with the same seed and schedule: the same noise and
labels (odelt.runtime.sampler's convention), the same solver arithmetic on its own rows, whatever
else is in flight (row results of a graph do not depend on the other rows, up to float rounding of
batched kernels). A request that is cancelled, or whose rows fail, leaves without disturbing the
others: a failed pass is replayed request by request to find whose rows fail.

    with open_backend("ort", bundle, threads=1) as be:
        engine = Engine(bundle, be, EngineOptions(max_rows=32)).start()
        ticket = engine.submit(Job(n=4, seed=0, schedule=schedule))
        images = ticket.result(timeout=10)
        engine.stop()
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from odelt.bundle.bundle import Bundle
from odelt.errors import ConfigError, OdeltError, RuntimeFailure, first_line
from odelt.ode.schedule import Schedule
from odelt.ode.solvers import SOLVER_INFO
from odelt.ode.steppers import STEPPERS
from odelt.runtime.gather import Gatherer
from odelt.runtime.sampler import make_labels, make_noise

# Passes between asking each request's alive(): a server's probe may be an IPC round trip.
PROBE_EVERY = 8


class Cancelled(RuntimeFailure):
    """The request was cancelled before it finished."""


@dataclass(frozen=True)
class EngineOptions:
    max_rows: int = 32             # rows per pass: the bundle's batch max, or an engine profile's
    window_ms: float = 0.0         # before a pass below max_rows: wait this long for more requests
    refill_ms: float = 1.0         # after a pass that k requests left: wait up to this long for k new ones
    check_finite: bool = True      # a request whose result holds NaN/Inf fails (the others go on)

    def __post_init__(self) -> None:
        if self.max_rows < 1:
            raise ConfigError(f"max_rows must be >= 1, found {self.max_rows}")
        for name in ("window_ms", "refill_ms"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, found {getattr(self, name)}")


@dataclass(frozen=True)
class Job:
    """One request: n images of `schedule` from `seed` (labels: i % classes unless given)."""
    n: int
    seed: int
    schedule: Schedule
    labels: np.ndarray | None = None
    guidance: float | None = None
    plan: str = ""                        # the plan's name (for the reply)
    budget_ms: float | None = None
    predicted_ms: float = float("nan")


class Ticket:
    """The caller's handle on a submitted job: result(), cancel(), and its timings (perf_counter s)."""

    def __init__(self, job: Job, submitted: float, on_done: Callable[[Ticket], None] | None = None,
                 alive: Callable[[], bool] | None = None):
        self.job, self.submitted, self.on_done, self.alive = job, submitted, on_done, alive
        self.admitted = self.finished = 0.0
        self.images: np.ndarray | None = None
        self.error: OdeltError | None = None
        self._done = threading.Event()
        self.cancelled = False

    def cancel(self) -> None:
        """Stop this request at the engine's next pass (a finished one is left as it is)."""
        self.cancelled = True

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> np.ndarray:
        if not self._done.wait(timeout):
            raise RuntimeFailure(f"request (n={self.job.n}, seed={self.job.seed}) not done after {timeout} s")
        if self.error is not None:
            raise self.error
        assert self.images is not None
        return self.images

    @property
    def latency_ms(self) -> float:
        return 1e3 * (self.finished - self.submitted)

    @property
    def queue_ms(self) -> float:
        return 1e3 * (self.admitted - self.submitted)

    def _finish(self, images: np.ndarray | None, error: OdeltError | None, now: float) -> None:
        self.images, self.error, self.finished = images, error, now
        self._done.set()
        if self.on_done is not None:
            try:
                self.on_done(self)      # the caller's reply (a server's response sender), in the engine's thread
            except Exception:  # noqa: BLE001 - a reply that cannot be sent must not stop the other requests
                pass


@dataclass(eq=False)                       # identity: the engine removes requests from lists
class _Active:
    """A request in flight: its stepper and the evaluation it waits for."""
    ticket: Ticket
    gen: Any
    x: np.ndarray                          # the state to evaluate (n rows)
    t: Any
    step: int
    y: np.ndarray                          # per-row labels (2n with host guidance)
    lengths: Sequence[int]
    levels: Sequence[int]
    scale: float | None                    # host-side guidance scale; None: none
    last_pass: int = -1

    @property
    def rows(self) -> int:
        return int(self.y.shape[0])


@dataclass
class EngineStats:
    passes: int = 0
    rows: int = 0                   # rows over all passes (a pass = one velocity evaluation per row)
    graph_calls: int = 0
    graph_rows: int = 0
    finished: int = 0
    failed: int = 0
    cancelled: int = 0
    over_budget: int = 0            # finished later than their budget
    queue_ms: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        q, lat = np.array(self.queue_ms or [0.0]), np.array(self.latency_ms or [0.0])
        return {"passes": self.passes, "rows_per_pass": self.rows / max(1, self.passes),
                "rows_per_graph_call": self.graph_rows / max(1, self.graph_calls), "finished": self.finished,
                "failed": self.failed, "cancelled": self.cancelled, "over_budget": self.over_budget,
                "queue_p50_ms": float(np.percentile(q, 50)), "latency_p50_ms": float(np.percentile(lat, 50)),
                "latency_p99_ms": float(np.percentile(lat, 99))}


class Engine:
    """The scheduler over one open backend (see the module doc). `tick()` runs one pass in the
    caller's thread (tests); `start()` runs passes in a thread of its own until `stop()`."""

    def __init__(self, manifest: Bundle, backend: Any, options: EngineOptions = EngineOptions(),
                 clock: Callable[[], float] = time.perf_counter):
        if manifest.guidance:
            raise ConfigError("the engine batches rows one per image: a bundle with guidance folded into its "
                              "graphs (2 rows inside per image) must be served by the Sampler, not the engine")
        self.manifest, self.backend, self.options, self.clock = manifest, backend, options, clock
        self.layout, self.lengths = backend.layout, tuple(backend.lengths)
        self.gather = Gatherer(manifest, backend)
        cfg = manifest.config
        self.shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
        self.stats = EngineStats()
        self._incoming: list[_Active] = []
        self._active: list[_Active] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._left = 0                  # requests that left in the last pass (refill_ms waits for as many)

    # -- admission -------------------------------------------------------------------------------
    def submit(self, job: Job, on_done: Callable[[Ticket], None] | None = None,
               alive: Callable[[], bool] | None = None) -> Ticket:
        """Admit a job (any thread); a job the engine cannot run raises its one-line error here.
        on_done(ticket) runs when it leaves (in the engine's thread: keep it short); alive() is asked
        every PROBE_EVERY passes (a server's "has the client gone?"), False cancels the request."""
        ticket = Ticket(job, self.clock(), on_done, alive)
        active = self._activate(ticket)
        with self._cond:
            self._incoming.append(active)
            self._cond.notify()
        return ticket

    def _activate(self, ticket: Ticket) -> _Active:
        job, s = ticket.job, ticket.job.schedule
        s.check_fits(self.manifest.model_hash, self.lengths, job.guidance)
        if s.solver not in STEPPERS:
            raise ConfigError(f"solver {s.solver} cannot be stepped by the engine (adaptive step count); expected "
                              f"one of {sorted(STEPPERS)}")
        host = job.guidance is not None and job.guidance != 1.0
        rows = 2 * job.n if host else job.n
        if rows > self.options.max_rows:
            raise ConfigError(f"a request of {job.n} images takes {rows} rows{' (guidance)' if host else ''}: "
                              f"expected at most {self.options.max_rows} rows per call")
        cfg = self.manifest.config
        y = make_labels(job.n, cfg.num_classes) if job.labels is None else np.asarray(job.labels, np.int32)
        if host:
            y = np.concatenate([y, np.full(job.n, self.manifest.null_class, np.int32)])
        grid, kwargs = stepper_grid(s)
        gen = STEPPERS[s.solver](make_noise(job.seed, job.n, self.shape), grid, **kwargs)
        x, t, n = next(gen)
        return _Active(ticket, gen, x, t, n, y, s.lengths, s.dt_base, job.guidance if host else None)

    # -- the loop --------------------------------------------------------------------------------
    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._loop, name="odelt-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        for a in self._incoming + self._active:
            a.ticket._finish(None, Cancelled("the engine stopped before this request finished"), self.clock())

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._incoming and not self._active:
                    self._cond.wait()
                if self._stop:
                    return
                self._gather_wait()
            self.tick()

    def _gather_wait(self) -> None:
        """Before a pass below max_rows (holding the lock): wait `window_ms` for more requests, and
        after a pass that k requests left, up to `refill_ms` for k new ones (clients that send their
        next request as soon as one returns then join this pass instead of the next)."""
        opts, now = self.options, time.monotonic()
        end = now + opts.window_ms / 1e3
        refill = self._left if opts.refill_ms > 0 else 0
        if refill:
            end = max(end, now + opts.refill_ms / 1e3)
        while self._rows_waiting() < opts.max_rows and (left := end - time.monotonic()) > 0:
            if refill and len(self._incoming) >= refill and time.monotonic() >= now + opts.window_ms / 1e3:
                return
            self._cond.wait(left)

    def _rows_waiting(self) -> int:
        return sum(a.rows for a in self._incoming) + sum(a.rows for a in self._active)

    def tick(self) -> int:
        """One pass: admit what arrived, advance up to max_rows rows by one evaluation; returns the rows."""
        with self._cond:
            self._active += self._incoming
            self._incoming = []
        now = self.clock()
        if self.stats.passes % PROBE_EVERY == 0:
            for a in self._active:
                if a.ticket.alive is not None and not a.ticket.alive():
                    a.ticket.cancel()
        for a in [a for a in self._active if a.ticket.cancelled]:
            self._leave(a, None, Cancelled("cancelled"), now)
        chosen = self._choose(now)
        self._left = 0
        if not chosen:
            return 0
        try:
            velocities = self._evaluate(chosen)
        except Exception:  # noqa: BLE001 - whose rows failed: replay one request at a time
            velocities = self._isolate(chosen)
        rows = 0
        for a, v in zip(chosen, velocities):
            if v is not None:
                rows += a.rows
                self._advance(a, v)
        self.stats.passes += 1
        self.stats.rows += rows
        return rows

    def _choose(self, now: float) -> list[_Active]:
        """Requests for this pass: those that waited longest first, up to max_rows rows."""
        chosen, rows = [], 0
        for a in sorted(self._active, key=lambda a: a.last_pass):
            if rows + a.rows <= self.options.max_rows:
                chosen.append(a)
                rows += a.rows
        for a in chosen:
            if a.last_pass < 0:
                a.ticket.admitted = now
            a.last_pass = self.stats.passes
        return chosen

    def _isolate(self, chosen: list[_Active]) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        for a in chosen:
            try:
                out.append(self._evaluate([a])[0])
            except Exception as e:  # noqa: BLE001 - this request's rows fail: it leaves, the others go on
                self._leave(a, None, _as_odelt(e), self.clock())
                out.append(None)
        return out

    def _advance(self, a: _Active, v: np.ndarray) -> None:
        try:
            a.x, a.t, a.step = a.gen.send(v)
        except StopIteration as done:
            x = done.value
            if self.options.check_finite and not np.isfinite(x).all():
                self._leave(a, None, RuntimeFailure(f"request (n={a.ticket.job.n}, seed={a.ticket.job.seed}): the "
                                                    "final state is non-finite; the model or schedule diverged"),
                            self.clock())
            else:
                self._leave(a, x, None, self.clock())

    def _leave(self, a: _Active, images: np.ndarray | None, error: OdeltError | None, now: float) -> None:
        self._active.remove(a)
        self._left += 1
        st, t = self.stats, a.ticket
        if isinstance(error, Cancelled):
            st.cancelled += 1
        elif error is not None:
            st.failed += 1
        else:
            st.finished += 1
            st.queue_ms.append(1e3 * (t.admitted - t.submitted))
            st.latency_ms.append(1e3 * (now - t.submitted))
            if t.job.budget_ms is not None and 1e3 * (now - t.submitted) > t.job.budget_ms:
                st.over_budget += 1
        t._finish(images, error, now)

    # -- one evaluation for many requests ---------------------------------------------------------
    def _evaluate(self, chosen: list[_Active]) -> list[np.ndarray]:
        """Every chosen request's velocity at its pending (x, t, step), in one gathered pass."""
        chains = self.gather.chains
        order = sorted(range(len(chosen)), key=lambda i: (-len(chains[chosen[i].lengths[chosen[i].step]]),
                                                          chosen[i].lengths[chosen[i].step]))
        parts = [chosen[i] for i in order]
        xs, ts, ds, ls, bounds, lo = [], [], [], [], [], 0
        for a in parts:
            x = a.x if a.scale is None else np.concatenate([a.x, a.x])
            r = a.rows
            xs.append(x)
            ts.append(np.full(r, a.t, np.float32))
            ds.append(np.full(r, a.levels[a.step], np.int32))
            ls.append(np.full(r, a.lengths[a.step], np.int32))
            bounds.append((lo, lo + r))
            lo += r
        env = {"x": np.concatenate(xs).astype(np.float32, copy=False), "t": np.concatenate(ts),
               "dt_base": np.concatenate(ds), "y": np.concatenate([a.y for a in parts]), "l": np.concatenate(ls)}
        keys = [a.lengths[a.step] for a in parts]
        v = self.gather.velocity(env, keys, bounds)
        self.stats.graph_calls, self.stats.graph_rows = self.gather.calls, self.gather.rows
        out: list[np.ndarray] = [np.empty(0)] * len(chosen)
        for i, a, (b0, b1) in zip(order, parts, bounds):
            va = v[b0:b1]
            if a.scale is not None:
                b = a.ticket.job.n
                va = va[b:] + a.scale * (va[:b] - va[b:])
            out[i] = np.array(va, np.float32)
        return out

def stepper_grid(schedule: Schedule) -> tuple[list[Any], dict[str, Any]]:
    """The time grid and solver keywords exactly as the Sampler passes them (fixed-step solvers get
    float32 times), so a stepped request matches `generate`."""
    grid: list[Any] = list(schedule.t_grid)
    kwargs = schedule.solver_kwargs()
    if SOLVER_INFO[schedule.solver].calls_per_step:
        grid = [np.float32(v) for v in grid]
        for key in ("t_eval", "t_mid", "scale"):
            if key in kwargs:
                kwargs[key] = [np.float32(v) for v in kwargs[key]]
    return grid, kwargs


def _as_odelt(e: BaseException) -> OdeltError:
    if isinstance(e, OdeltError):
        return e
    return RuntimeFailure(f"the backend failed on this request's rows: {type(e).__name__}: {first_line(e)[:200]}")
