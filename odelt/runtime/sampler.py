"""Sampling: noise -> solver over a backend -> images, numpy only.

Noise and labels are fixed by the seed (odelt.ode.seeds, the one convention of every stage) so
that the PyTorch reference and every backend see the same inputs.
Batches are consecutive slices of these n samples.

Per step n the schedule gives the length l_n and shortcut level dt_base_n; the solver's
f(x, t, n) becomes one backend call with those. Guidance: a bundle exported with cfg takes
cfg_scale as a graph input (B rows in, 2B rows inside); otherwise a cfg_scale != 1 runs B
conditional and B null-class rows in one call and mixes v_u + s (v_c - v_u) here. A bundle's
modulation table for the schedule's (t, dt_base), length and class replaces its conditioning
graph. A non-finite result is replayed with a check after every step, and the error names the
first step whose state holds NaN/Inf.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from odelt.errors import RuntimeFailure
from odelt.bundle.bundle import Bundle
from odelt.bundle.chain import load_table
from odelt.runtime.backends.protocol import Backend
from odelt.ode.schedule import Schedule, level_for_step
from odelt.ode.seeds import make_labels, make_noise  # noqa: F401  (callers import them from here too)
from odelt.ode.solvers import SOLVER_INFO, SOLVERS


def host_guidance(manifest: Bundle, guidance_scale: float | None) -> bool:
    """Guidance mixed on the host: a scale other than None or 1.0, asked of a bundle without
    in-graph guidance (each image then takes a conditional and an unconditional row)."""
    return guidance_scale not in (None, 1.0) and not manifest.guidance


def guidance_rows(manifest: Bundle, batch: int, guidance_scale: float | None) -> int:
    """Rows of one step call for `batch` images: the one host-guidance rows rule."""
    return 2 * batch if host_guidance(manifest, guidance_scale) else batch


@dataclass
class Stats:
    calls: int = 0                 # backend calls (a host-side CFG call counts once, with 2B rows)
    backend_s: float = 0.0         # time inside backend.infer
    wall_s: float = 0.0            # time inside sample(), solver arithmetic included
    images: int = 0
    switches: tuple[Any, ...] = ()     # anytime length switches (odelt.runtime.budget.anytime.Switch), in order
    lengths: tuple[int, ...] = ()      # the length every step ran at (one batch; () when summed)
    exits: tuple[Any, ...] = ()        # anytime exits inside a step (odelt.runtime.budget.anytime.Exit)
    finishes: tuple[Any, ...] = ()     # anytime merges / early finishes (odelt.runtime.budget.anytime.Finish)

    def add(self, other: Stats) -> None:
        self.calls += other.calls
        self.backend_s += other.backend_s
        self.wall_s += other.wall_s
        self.images += other.images
        self.switches += other.switches
        self.exits += other.exits
        self.finishes += other.finishes


class Tables:
    """The bundle's modulation tables as {(length, y, t float32, dt_base): {output: (rows, width)}}."""

    def __init__(self, manifest: Bundle):
        self.rows: dict[tuple[int, int | None, float, int], dict[str, np.ndarray]] = {}
        for name, entry in manifest.tables.items():
            arrays = load_table(manifest, name)
            for s, (t, d) in enumerate(zip(entry["t"], entry["dt_base"])):
                key = (int(entry["length"]), entry["y"], float(np.float32(t)), int(d))
                self.rows[key] = {name: a[s] for name, a in arrays.items()}

    def lookup(self, length: int, y: int | None, t: float, dt_base: int) -> dict[str, np.ndarray] | None:
        return self.rows.get((length, y, float(np.float32(t)), dt_base))


class Sampler:
    """Runs one schedule on one open backend; `sample(x0, y)` returns the images and their Stats.
    One sample at a time: the step inputs and counters per batch size are made once and reused (as
    the backend reuses its buffers). check_finite=False returns a non-finite result as it is (the
    calibration guard scores it) instead of naming the step where it diverged."""

    def __init__(self, backend: Backend, manifest: Bundle, schedule: Schedule, guidance_scale: float | None = None,
                 use_tables: bool = True, check_finite: bool = True,
                 clock: Callable[[], float] = time.perf_counter):
        schedule.check_fits(manifest.model_hash, backend.lengths, guidance_scale)
        self.clock = clock                 # seconds; tests drive a synthetic one
        self.backend, self.manifest, self.schedule = backend, manifest, schedule
        self.guidance_scale, self.check_finite = guidance_scale, check_finite
        self.null_class = manifest.null_class
        self.host_guidance = host_guidance(manifest, guidance_scale)
        self.tables = Tables(manifest) if use_tables and manifest.tables and backend.layout == "segments" else None
        self._grid: list[Any] = list(schedule.t_grid)
        self._kwargs = schedule.solver_kwargs()
        if SOLVER_INFO[schedule.solver].calls_per_step:    # fixed steps; adaptive ones keep float64 time
            self._grid = _float32_times(self._grid)         # (a float32 clock stalls on steps < 3e-8)
            for key in ("t_eval", "t_mid", "scale"):
                if key in self._kwargs:
                    self._kwargs[key] = _float32_times(self._kwargs[key])
        self._binds: dict[int, _Bound] = {}
        # Decision points inside a step: the exits a call passes (segments layout, a backend that
        # can stop there, one call per step); the per-length layout has none, so control stays
        # between steps there.
        can = hasattr(backend, "exits") and SOLVER_INFO[schedule.solver].calls_per_step == 1
        self.exits: dict[int, tuple[int, ...]] = {n: tuple(backend.exits(n)) if can else ()  # type: ignore[attr-defined]
                                                  for n in backend.lengths}

    def sample(self, x0: np.ndarray, y: np.ndarray, control: Any = None) -> tuple[np.ndarray, Stats]:
        """control: an anytime controller (odelt.runtime.budget.anytime.Deadline) that may shorten the
        remaining steps after each step, stop a step at an exit inside its call (where self.exits
        has any), and merge the remaining steps or finish the batch early (control.cut); None runs
        the schedule's lengths."""
        y = np.asarray(y, np.int32)
        bound = self._bound(y)
        kwargs = self._kwargs
        start = self.clock()
        bound.ask = None
        if control is None:
            x = SOLVERS[self.schedule.solver](bound.f, np.asarray(x0, np.float32), self._grid, **kwargs)
            lengths = tuple(bound.step_lengths)
        else:
            control.begin(start, self.clock, bound.set_length)
            if any(self.exits.values()):
                bound.ask = control.at_exit
            x, lengths = self._controlled(bound, control, np.asarray(x0, np.float32), kwargs)
        wall = self.clock() - start                                  # solvers never write x0
        bound.ask = None                                             # a replay runs the lengths as run
        if self.check_finite and not _all_finite(x):
            if getattr(control, "cut", None) is not None:    # a replay of the full grid would not be this batch
                raise RuntimeFailure(f"the final state is non-finite after an early finish at step {control.cut.step}; "
                                     "the model or schedule diverged")
            self._locate_non_finite(x0, y)          # replays the lengths this batch ran
        switches = tuple(control.switches) if control is not None else ()
        exits = tuple(control.exits) if control is not None else ()
        finishes = tuple(getattr(control, "finishes", ())) if control is not None else ()
        return x, Stats(bound.calls, bound.backend_s, wall, int(y.shape[0]), switches, lengths, exits, finishes)

    def _controlled(self, bound: _Bound, control: Any, x0: np.ndarray, kwargs: dict[str, Any]
                    ) -> tuple[np.ndarray, tuple[int, ...]]:
        """The solver under an anytime controller; a merge or early finish it decides (control.cut,
        odelt.runtime.budget.anytime.Finish) stops the solver and is carried out here. Returns the
        result and the lengths of the steps that ran."""
        grid, last = self._grid, [None]

        def f(x: np.ndarray, t: Any, n: int) -> np.ndarray:
            v = last[0] = bound.f(x, t, n)
            cut = control.cut
            if cut is not None and cut.inside and cut.step == n and not cut.starts:
                raise _Cut(n, x, grid[n], v)             # finish inside step n: its state and this velocity
            return v

        def after(n: int, t: Any, x: np.ndarray) -> None:
            control.after_step(n, t, x)
            if control.cut is not None and n + 1 < len(grid) - 1:
                raise _Cut(n, x, grid[n + 1], last[0])    # step n has landed: merge or finish from here

        try:
            x = SOLVERS[self.schedule.solver](f, x0, grid, **{**kwargs, "callback": after})
            return x, tuple(bound.step_lengths)
        except _Cut as at:
            ran = tuple(bound.step_lengths[:at.step + 1])
            starts = control.cut.starts
            if not starts:                  # one Euler step straight to t = 1 with the velocity at hand
                return at.x + (1 - at.t) * at.v, ran
            return self._merged(bound, at.x, starts), ran + tuple(bound.step_lengths[k] for k in starts)

    def _merged(self, bound: _Bound, x: np.ndarray, starts: Sequence[int]) -> np.ndarray:
        """The solver from the plan's step starts[0] to t = 1 over the merged steps (fresh history,
        no further control; an Euler step takes the shortcut level of its merged size)."""
        ts, te = self._grid, self._kwargs.get("t_eval", self._grid)
        sub = [ts[k] for k in starts] + [ts[-1]]
        if self.schedule.solver == "euler":
            for i, k in enumerate(starts):
                bound.set_level(k, level_for_step(float(sub[i + 1] - sub[i])))
        kwargs = {"t_eval": [te[k] for k in starts] + [te[-1]]} if "t_eval" in self._kwargs else {}
        return SOLVERS[self.schedule.solver](lambda x, t, i: bound.f(x, t, starts[i]), x, sub, **kwargs)

    def _locate_non_finite(self, x0: np.ndarray, y: np.ndarray) -> None:
        """The result is not finite: replay with a check after every step to name the first bad one.
        Checking only the result keeps ~10 us of reductions per step off the success path (a step of
        the digits model at batch 1 takes ~1 ms); backends are deterministic, so the replay diverges
        at the same step."""
        s = self.schedule
        bound = self._binds[int(y.shape[0])]          # as bound for the batch: its labels and lengths
        try:
            SOLVERS[s.solver](bound.f, np.array(x0, np.float32), self._grid, callback=_check_finite,
                              **self._kwargs)
        except RuntimeFailure as e:
            changed = self.manifest.changed_file()      # a changed file, not the model, is to blame
            if changed:
                raise RuntimeFailure(f"{str(e).split(';')[0]}: {changed}; re-export or restore the bundle") from None
            raise
        raise RuntimeFailure("the final state is non-finite, but a replay of the same inputs stayed finite at "
                             "every step: the backend is not deterministic")

    def _bound(self, y: np.ndarray) -> _Bound:
        """The velocity function of batch size len(y), made once per size, its counters reset and its
        labels set. Made once because on the digits model at batch 1 making it took ~20 us, 0.25% of
        a sample (measured side by side)."""
        b = int(y.shape[0])
        bound = self._binds.get(b) or self._bind(b)
        bound.calls, bound.backend_s = 0, 0.0
        if bound.switched:
            bound.reset(self.schedule.lengths, self.schedule.dt_base)
        if self.host_guidance:
            bound.feeds["y"][:b] = y                  # the second half stays the null class
        else:
            bound.feeds["y"] = y
        if self.tables is not None:   # a guided call mixes the class with the null class: no table
            bound.label = -1 if self.host_guidance else _table_label(y, self.null_class)
        return bound

    def _bind(self, b: int) -> _Bound:
        rows = StepRows(guidance_rows(self.manifest, b, self.guidance_scale), self.schedule.lengths,
                         self.schedule.dt_base)
        feeds = {"t": rows.t(0.0), "dt_base": rows.levels[0], "l": rows.lengths[0],
                 "y": np.full(rows.count, self.null_class, np.int32)}
        if self.manifest.guidance:
            feeds["cfg_scale"] = np.full(rows.count, 1.0 if self.guidance_scale is None else self.guidance_scale, np.float32)
        bound = self._binds[b] = _Bound(feeds, rows, list(self.schedule.lengths), list(rows.lengths), list(rows.levels),
                                        list(self.schedule.dt_base))
        lengths, levels = bound.step_lengths, bound.step_levels           # anytime may switch them
        infer, clock, host_guidance, scale = self.backend.infer, self.clock, self.host_guidance, self.guidance_scale or 1.0
        infer_exits: Callable[..., Any] = self.backend.infer     # infer(feeds, after_segment) where self.exits
        keep = SOLVER_INFO[self.schedule.solver].holds_velocity and not host_guidance   # guidance makes a new array
        level_rows, length_rows = bound.level_rows, bound.length_rows
        te = self._kwargs.get("t_eval", self._grid)
        step_t, step_rows = te[:-1], [rows.t(t) for t in te[:-1]]

        def plain(x: np.ndarray, t: Any, n: int) -> np.ndarray:
            # The common case, kept lean: right after a network call numpy's and Python's code are
            # out of cache (3-15 us per numpy call instead of 1, measured) and a digits step at
            # batch 1 takes ~1 ms, so every line here is visible. Rows are swapped in, not filled;
            # a step's own time is recognised by identity (hashing a numpy float costs more).
            feeds["t"] = step_rows[n] if t is step_t[n] else rows.t(t)
            feeds["dt_base"], feeds["l"], feeds["x"] = level_rows[n], length_rows[n], x
            ask = bound.ask
            t0 = clock()
            v = (infer(feeds) if ask is None else infer_exits(feeds, lambda e: ask(n, e)))["velocity"]
            bound.backend_s += clock() - t0
            bound.calls += 1
            return v.copy() if keep else v          # v is a reused buffer: copy when the solver keeps it

        def general(x: np.ndarray, t: Any, n: int) -> np.ndarray:
            if self.tables is not None:
                self._table_feeds(feeds, bound.label, lengths[n], t, levels[n], b)
            if not host_guidance:
                return plain(x, t, n)
            v = plain(np.concatenate([x, x]), t, n)
            return v[b:] + scale * (v[:b] - v[b:])                       # new array: safe to keep
        bound.f = general if host_guidance or self.tables is not None else plain
        return bound

    def _table_feeds(self, feeds: dict[str, np.ndarray], label: int | None, length: int, t: Any, d: int,
                     b: int) -> None:
        assert self.tables is not None                  # only `general` calls this, and only with tables
        for name in [k for k in feeds if k.startswith("mod") or k == "final_mod"]:
            del feeds[name]
        if label == -1:
            return                                                       # mixed classes: no table
        row = self.tables.lookup(length, label, t, d)
        if row is not None:
            feeds.update({name: np.repeat(a, b, axis=0) for name, a in row.items()})


@dataclass(slots=True)                  # slots: the per-call counter updates are attribute writes
class _Bound:
    """One batch size's step inputs and velocity function, and the counters the function adds to."""
    feeds: dict[str, np.ndarray]
    rows: StepRows
    step_lengths: list[int]            # every step's length this batch (anytime control may shorten them)
    length_rows: list[np.ndarray]      # and its row array
    level_rows: list[np.ndarray]       # every step's shortcut level row (a merged step takes its own)
    step_levels: list[int]             # and the level
    f: Callable[[np.ndarray, Any, int], np.ndarray] = lambda x, t, n: x
    label: int | None = None           # the modulation-table key of the batch's labels
    calls: int = 0
    backend_s: float = 0.0
    switched: bool = False
    ask: Callable[[int, int], bool] | None = None   # (step, exit length) -> stop the call there

    def set_length(self, step: int, length: int) -> None:
        self.step_lengths[step], self.length_rows[step] = length, self.rows.length_row(length)
        self.switched = True

    def set_level(self, step: int, level: int) -> None:
        self.level_rows[step], self.step_levels[step] = self.rows.level_row(level), level
        self.switched = True

    def reset(self, lengths: Sequence[int], levels: Sequence[int]) -> None:
        for n, (length, level) in enumerate(zip(lengths, levels)):
            self.set_length(n, length)
            self.level_rows[n], self.step_levels[n] = self.rows.levels[n], level
        self.switched = False


class StepRows:
    """Read-only per-row inputs of one batch size: a row array per step's length and dt_base, and
    one per time value met so far (bounded: adaptive solvers meet new times without end)."""

    LIMIT = 4096

    def __init__(self, count: int, lengths: Sequence[int], levels: Sequence[int]):
        self.count = count
        self.lengths = [_row(count, v, np.int32) for v in lengths]
        self._by_length = {int(v): r for v, r in zip(lengths, self.lengths)}
        self.levels = [_row(count, v, np.int32) for v in levels]
        self.times: dict[float, np.ndarray] = {}        # numpy and Python floats hash alike

    def level_row(self, level: int) -> np.ndarray:
        return _row(self.count, level, np.int32)

    def length_row(self, length: int) -> np.ndarray:
        row = self._by_length.get(length)
        if row is None:
            row = self._by_length[length] = _row(self.count, length, np.int32)
        return row

    def t(self, t: Any) -> np.ndarray:
        key = float(t)
        row = self.times.get(key)
        if row is None:
            row = _row(self.count, key, np.float32)
            if len(self.times) < self.LIMIT:
                self.times[key] = row
        return row


class _Cut(Exception):
    """Raised out of the solver when the controller merges the remaining steps or finishes early:
    step n's state x at time t and the velocity v at hand."""

    def __init__(self, step: int, x: np.ndarray, t: Any, v: np.ndarray):
        super().__init__(step)
        self.step, self.x, self.t, self.v = step, x, t, v


def _float32_times(values: Sequence[float]) -> list[np.float32]:
    # Step sizes come out as float32 scalars: a Python float times an array takes numpy's slower
    # weak-scalar path, ~6 us more per step when its code is cold after a network call (measured).
    return [np.float32(v) for v in values]


def _row(count: int, value: Any, dtype: type) -> np.ndarray:
    row: np.ndarray = np.full(count, value, dtype)
    row.flags.writeable = False            # shared by every call of its step: nobody may write it
    return row


def _table_label(y: np.ndarray, null_class: int) -> int | None:
    """The table key for a batch's labels: one class, None for all-null, -1 when they differ."""
    if (y != y[0]).any():
        return -1
    return None if int(y[0]) == null_class else int(y[0])


def _all_finite(x: np.ndarray) -> bool:
    # A byte compare of isfinite's mask, not a reduction (.all, .sum): right after a network call
    # numpy's reduction code is out of cache, ~25 us vs ~10 us here (digits, batch 1, measured).
    return np.isfinite(x).tobytes() == b"\x01" * x.size


def _check_finite(n: int, t: Any, x: np.ndarray) -> None:
    if not _all_finite(x):
        bad = int(np.size(x) - np.isfinite(x).sum())
        raise RuntimeFailure(f"the state became non-finite at step {n} (t={float(t):.4g}): {bad} NaN/Inf values; "
                             "the model or schedule diverged")


def generate(sampler: Sampler, n: int, batch: int, seed: int = 0,
             progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, Stats]:
    """n images in batches of `batch` (the last may be smaller); returns (n, C, H, W) and totals."""
    return generate_batches(sampler.sample, sampler.manifest, n, batch, seed, progress)


def generate_batches(run: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, Stats]], manifest: Bundle, n: int,
                     batch: int, seed: int = 0, progress: Callable[[int], None] | None = None
                     ) -> tuple[np.ndarray, Stats]:
    """The seeded noise and labels of n images, run batch by batch through `run(x0, y)`."""
    cfg = manifest.config
    x0 = make_noise(seed, n, (cfg.in_channels, cfg.input_size, cfg.input_size))
    y = make_labels(n, cfg.num_classes)
    out, total = np.empty((n, cfg.out_channels, cfg.input_size, cfg.input_size), np.float32), Stats()
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        out[lo:hi], stats = run(x0[lo:hi], y[lo:hi])
        total.add(stats)
        if progress:
            progress(hi - lo)
    return out, total
