"""Anytime control inside a batch: a plan's timeline, and shorter lengths when it runs late.

ODE_t(ODE_l) can change the length (active blocks) of any remaining step at any moment, so a batch
that falls behind can still end by its deadline. `Deadline` knows its plan's timeline: step n
should end at T_n = (budget - batch host work - decoding) * C_n / C_N, where C_n is the predicted
median cost of steps 0..n (the slack of the plan is spread over its steps; a latent plan's decode
of the batch comes after its last step, and every prediction of the steps left counts it too). After every step (the solver's
callback) it reads the clock:

* on time (elapsed <= T_n): nothing happens, not even a prediction;
* late: the speed this batch has run at so far (elapsed / C_n) predicts every option for the
  remaining steps, at the profile's quantile (odelt.runtime.budget.predict). Options: the current
  lengths; every learned per-step-length schedule of a smaller block budget the bundle has,
  mapped onto the remaining steps by time (step k takes the length that schedule runs at t_k);
  and every exported length as a cap. Each option is capped by the current lengths: a step is
  never lengthened. The option with the most block evaluations that still ends by the deadline is
  taken (ties: a learned one); when none does, the cheapest. The current lengths fitting means no
  switch. Every switch is recorded (`Switch`) in the batch's stats.

Decision points inside a step. With the segments layout a call passes exits: after each chunk that
completes a shorter exported length the backend asks `at_exit(step, exit)`. The timeline has a
point there too, T = (budget - host - decoding) * (C_{n-1} + reach(l_n, exit)) / C_N, reach being
the profile's median time from a call's start to that chunk (QuantilePredictor.reach). On time:
nothing (a clock read). Late: each way to finish is predicted at this batch's speed so far, as
between steps: stop here (the head on the velocity sum so far, then the remaining steps' options)
or go on (the rest of the call, then the same options); the one with the most block evaluations
that ends by the deadline is taken, when none does the cheapest. A stop is recorded (`Exit`) and
the step counts as run at the exit's length; the rest of the batch is shortened as a `Switch`.
What a stop computes: the exit head on the velocity sum of the blocks run so far. Those blocks were
modulated for the step's own length (the length embedding enters every block's modulation), so
it is not the velocity a call at the exit's length would give, but that sum truncated: the price
of keeping the work done (bench/deadline.py measures the images). Only one-call steps (Euler) stop
inside; multi-call steps (Heun) and the per-length layout decide between steps only.

Early finish in time (merging steps). Shortening lengths cannot absorb a wait longer than the
remaining steps at the shortest length take. So at every decision point, when the best option for
the remaining steps does not fit (the cheapest is every step at the shortest length), the remaining
grid is merged into fewer, larger steps at the shortest exported length: r remaining steps -> r-1 ..
1, keeping the grid points at evenly spaced indices, and the continuation with the most steps that
is predicted to fit is taken (inside a step: stop at the exit or go on, then that; most steps first,
then most block evaluations). Like the lengths, this is predicted at the batch's speed so far: a
competitor that made the batch wait once takes the core again after its next run of the sampler's
work, and the batch's speed prices that in (on the fake clock's onset sweep, 864 batches, the
profiled speed instead, `drop_at_profile=True`, held 829 against 858 in the segments layout and
652 against 789 per length, dropping 14 steps against 358: cautious with quality, it let the
competitor's second slice land in the step it kept; a real onset batch at batch 8 missed that way).
The price: one wait early in a batch reads as a large slowdown and can finish a batch that the
shortest lengths would still have ended in time; so while the tracker absorbs a competitor's waits
(its plan already has room for them: an expected wait), the stream sets `drop_at_profile` and
steps are dropped only when even the profiled speed cannot end them. With no step left (0 steps: when none fits, the cheapest) the batch
finishes now with the flow-matching estimate of the data from the velocity at hand, one Euler step
to t = 1: x1 = x_t + (1 - t) v (inside a step: the step's own state and the velocity at the exit or
of the whole call; between steps: the landed state and the last velocity). The sampler carries it
out (`Finish`, read through `cut`). A merge restarts the solver on the merged grid from the landed
state: multistep history (iPNDM's velocities, DPM-Solver++'s data predictions) is dropped and the
order ramps up again as on a fresh start, so no update mixes velocities of grids it did not run; a
finish uses no history at all. After a merge or a finish the batch takes no further decisions.
`finish=False` keeps the controller as it was (all steps, the cheapest when none fits).

Being early never lengthens a step, so for a fixed seed a batch that is never late gives exactly
the plan's images: quality is reproducible whenever the deadline is not at risk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from odelt.runtime.budget.predict import Predictor
from odelt.ode.schedule import Schedule
from odelt.ode.solvers import SOLVER_INFO


@dataclass(frozen=True)
class Switch:
    step: int                      # first step run at the new lengths
    elapsed_ms: float              # clock when decided (ms since the batch started)
    planned_ms: float              # where the timeline said the batch should be
    before: tuple[int, ...]        # lengths of steps step.. before the switch
    after: tuple[int, ...]         # and after
    source: str                    # "learned:<schedule>" | "cap:<length>" | "shortest"

    def to_dict(self) -> dict:
        return {"step": self.step, "elapsed_ms": round(self.elapsed_ms, 4), "planned_ms": round(self.planned_ms, 4),
                "before": list(self.before), "after": list(self.after), "source": self.source}


@dataclass(frozen=True)
class Exit:
    step: int                      # the step stopped inside its call
    elapsed_ms: float              # clock when decided (ms since the batch started)
    planned_ms: float              # where the timeline said the batch should be at that exit
    length: int                    # the step's length before
    exit: int                      # the exit it stopped at (the blocks it ran)

    def to_dict(self) -> dict:
        return {"step": self.step, "elapsed_ms": round(self.elapsed_ms, 4), "planned_ms": round(self.planned_ms, 4),
                "length": self.length, "exit": self.exit}


@dataclass(frozen=True)
class Finish:
    step: int                      # the step decided in (inside) or just landed (between steps)
    elapsed_ms: float              # clock when decided (ms since the batch started)
    planned_ms: float              # where the timeline said the batch should be
    inside: bool                   # decided at an exit inside step `step`'s call
    dropped: int                   # steps of the plan that no longer run
    starts: tuple[int, ...]        # the plan's steps where the merged steps start (empty: finish now)
    length: int                    # the merged steps' length

    def to_dict(self) -> dict:
        return {"step": self.step, "elapsed_ms": round(self.elapsed_ms, 4), "planned_ms": round(self.planned_ms, 4),
                "inside": self.inside, "dropped": self.dropped, "starts": list(self.starts), "length": self.length}


def merged_starts(first: int, last: int, steps: int) -> tuple[int, ...]:
    """The plan's steps first..last-1 merged into `steps`: the kept start indices, evenly spaced
    (first is always kept; the merged steps end where the next kept one starts, the last at t = 1)."""
    r = last - first
    return tuple(first + (i * r) // steps for i in range(steps))


@dataclass(frozen=True)
class LengthProfile:
    """A learned per-step-length schedule, as lengths over time: where short steps hurt least."""
    name: str
    t_grid: tuple[float, ...]
    lengths: tuple[int, ...]

    @classmethod
    def of(cls, schedule: Schedule) -> LengthProfile:
        return cls(schedule.name, tuple(schedule.t_grid), tuple(schedule.lengths))

    @property
    def blocks(self) -> int:
        return sum(self.lengths)

    def at(self, t: float) -> int:
        for j in range(len(self.lengths)):
            if t < self.t_grid[j + 1]:
                return self.lengths[j]
        return self.lengths[-1]


def learned_profiles(schedules: Sequence[Schedule]) -> list[LengthProfile]:
    """The schedules whose steps run at more than one length (learned under a block budget)."""
    return [LengthProfile.of(s) for s in schedules if len(set(s.lengths)) > 1]


SetLength = Callable[[int, int], None]          # (step, length): the sampler switches one step


class Deadline:
    """Anytime control of one schedule at one precision and batch size (see the module doc)."""

    def __init__(self, schedule: Schedule, precision: str, predictor: Predictor, budget_ms: float,
                 exported: Sequence[int], profiles: Sequence[LengthProfile] = (),
                 after: tuple[float, float] = (0.0, 0.0), exits: Mapping[int, Sequence[int]] | None = None,
                 finish: bool = True, drop_at_profile: bool = False):
        """exits: {length: the exit lengths a call at it passes} (Sampler.exits); None or empty:
        decision points between steps only. finish: merge steps / finish early when no option fits;
        drop_at_profile: decide that at the profiled speed instead of the batch's (module doc)."""
        per = SOLVER_INFO[schedule.solver].calls_per_step
        if not per:
            raise ValueError(f"anytime control needs a fixed-step solver, found {schedule.solver}")
        self.schedule, self.budget_ms = schedule, float(budget_ms)
        self.predictor, self.precision = predictor, precision
        self.lengths = tuple(schedule.lengths)
        self.starts = tuple(float(t) for t in schedule.t_grid[:-1])
        exits = {n: tuple(es) for n, es in (exits or {}).items() if es} if per == 1 else {}
        self.cost = {n: predictor.call(precision, n)
                     for n in sorted(set(exported) | set(self.lengths) | {e for es in exits.values() for e in es})}
        self._reach = {(n, e): predictor.reach(precision, n, e) for n, es in exits.items() for e in es}
        self.host_ms = predictor.sample_ms
        self.after = after                 # (median, excess at the quantile) of decoding the batch
        blocks = sum(self.lengths)
        self.profiles = [p for p in profiles if p.blocks < blocks]
        self.exported = sorted(set(exported), reverse=True)
        self.finish, self.shortest = finish, min(self.exported or self.lengths)
        self.drop_at_profile = drop_at_profile
        cum, total = [], 0.0
        for k in range(len(self.lengths)):             # the medians of each step's calls (Heun: two)
            total += sum(self.cost[m][0] for m in schedule.call_lengths(self.lengths[k:k + 1]))
            cum.append(total)
        self.cum = cum
        scale = (self.budget_ms - self.host_ms - after[0]) / total
        self.timeline = [scale * c for c in cum]
        # (step, exit) -> (the timeline there, the median cost of the batch's work up to there)
        self.points: dict[tuple[int, int], tuple[float, float]] = {}
        for n, length in enumerate(self.lengths):
            before = cum[n - 1] if n else 0.0
            for e in exits.get(length, ()):
                at = before + self._reach[(length, e)]
                self.points[(n, e)] = (scale * at, at)
        self.exits: list[Exit] = []
        self.switches: list[Switch] = []
        self.finishes: list[Finish] = []
        self.cut: Finish | None = None     # the batch's merge or finish, for the sampler to carry out
        self.current: list[int] = list(self.lengths)
        self._start, self._clock, self._set = 0.0, (lambda: 0.0), (lambda n, length: None)

    def begin(self, start: float, clock: Callable[[], float], set_length: SetLength) -> None:
        """A batch starts at clock() == start (seconds); the sampler's steps run the plan's lengths."""
        self._start, self._clock, self._set = start, clock, set_length
        self.switches, self.exits, self.finishes, self.cut = [], [], [], None
        self.current = list(self.lengths)

    def after_step(self, n: int, t: object, x: object) -> None:
        """The solver's callback: step n has landed."""
        elapsed = (self._clock() - self._start) * 1e3
        if elapsed <= self.timeline[n] or n + 1 >= len(self.lengths) or self.cut is not None:
            return
        self._replan(n, elapsed)

    def at_exit(self, n: int, e: int) -> bool:
        """The backend's question inside step n's call, at the chunk that completes exit e: stop?"""
        elapsed = (self._clock() - self._start) * 1e3
        point = self.points.get((n, e))
        if point is None or elapsed <= point[0] or e >= self.current[n] or self.cut is not None:
            return False
        return self._decide_inside(n, e, elapsed, *point)

    def _decide_inside(self, n: int, e: int, elapsed: float, planned: float, done: float) -> bool:
        """Stop at e or go on, each followed by the best option for the steps after n (module doc)."""
        speed = elapsed / done
        room = self.budget_ms - elapsed
        length = self.current[n]
        rest_of = {e: max(0.0, self.cost[e][0] - self.reach_of(length, e)),             # the head
                  length: self.cost[length][0] - self.reach_of(length, e)}           # the rest of the call
        rows = [(len(ls), now + sum(ls), now == length, ls, src, speed * rest_of[now] + self._predict(ls, speed))
                for now in (e, length) for ls, src in self.options(n)]
        fits = [r for r in rows if r[5] <= room]
        merges = self.merges(n)              # none in the last step: an exit there is already its finish
        drop = 1.0 if self.drop_at_profile else speed          # the speed steps are dropped at (module doc)
        if not fits and merges and not any(drop * rest_of[now] + self._predict(ls, drop) <= room
                                           for now in (e, length) for ls, _ in self.options(n)):
            rows = [(len(ls), now + sum(ls), now == length, ls, src, drop * rest_of[now] + self._predict(ls, drop))
                    for now in (e, length) for ls, src in merges]
            fits = [r for r in rows if r[5] <= room]
        if fits:     # the most steps, then the most block evaluations
            best = max(fits, key=lambda r: (r[0], r[1], r[2], r[4].startswith("learned")))
        else:
            best = min(rows, key=lambda r: (r[5], -r[1]))
        _, _, go_on, rest, source, _ = best
        if source.startswith("merge"):
            self._cut(n, rest, elapsed, planned, True)
        else:
            self._apply(n, rest, elapsed, planned, source if fits or source != "current" else "shortest")
        if go_on:
            return False
        self._set(n, e)
        self.current[n] = e
        self.exits.append(Exit(n, elapsed, planned, length, e))
        return True

    def reach_of(self, length: int, e: int) -> float:
        return self._reach[(length, e)]

    def _apply(self, n: int, best: Sequence[int], elapsed: float, planned: float, source: str) -> None:
        """Steps n+1.. run `best` from now on (recorded as a Switch when they change)."""
        if list(best) == self.current[n + 1:]:
            return
        before = tuple(self.current[n + 1:])
        for k, length in enumerate(best, start=n + 1):
            if length != self.current[k]:
                self._set(k, length)
                self.current[k] = length
        self.switches.append(Switch(n + 1, elapsed, planned, before, tuple(best), source))

    def merges(self, n: int) -> list[tuple[tuple[int, ...], str]]:
        """Fewer, larger steps after step n at the shortest length: r - 1 .. 0 of the r left (0: finish
        now). None when finishing early is off or the cut is already made."""
        r = len(self.lengths) - n - 1
        if not self.finish or r <= 0:
            return []
        return [((self.shortest,) * j, f"merge:{j}") for j in range(r - 1, -1, -1)]

    def _cut(self, n: int, rest: Sequence[int], elapsed: float, planned: float, inside: bool) -> None:
        """From step n on the batch runs `rest` merged steps (none: it finishes now)."""
        starts = merged_starts(n + 1, len(self.lengths), len(rest)) if rest else ()
        for k in starts:
            self._set(k, self.shortest)
            self.current[k] = self.shortest
        self.cut = Finish(n, elapsed, planned, inside, len(self.lengths) - n - 1 - len(rest), starts, self.shortest)
        self.finishes.append(self.cut)

    def _predict(self, lengths: Sequence[int], speed: float) -> float:
        """The latency model's prediction of steps at `lengths` (and the decode) at this batch's speed."""
        calls = self.schedule.call_lengths(lengths)
        return self.predictor.batch_ms(self.precision, calls, self.after, speed)[1]

    def options(self, n: int) -> list[tuple[tuple[int, ...], str]]:
        """Candidate lengths for steps n+1.., never longer than the current ones."""
        cur = self.current[n + 1:]
        starts = self.starts[n + 1:]
        out = [(tuple(cur), "current")]
        for p in self.profiles:
            out.append((tuple(min(c, p.at(t)) for c, t in zip(cur, starts)), f"learned:{p.name}"))
        for cap in self.exported:
            out.append((tuple(min(c, cap) for c in cur), f"cap:{cap}"))
        return out

    def _replan(self, n: int, elapsed: float) -> None:
        speed = elapsed / self.cum[n]                  # how slowly this batch has run so far
        room = self.budget_ms - elapsed
        opts = self.options(n)
        drop = 1.0 if self.drop_at_profile else speed  # the speed steps are dropped at (module doc)
        fits = [(sum(ls), src.startswith("learned"), ls, src) for ls, src in opts if self._predict(ls, speed) <= room]
        if fits:
            _, _, best, source = max(fits, key=lambda f: (f[0], f[1]))
        elif self.finish and not any(self._predict(ls, drop) <= room for ls, _ in opts):
            # the most merged steps that fit (at the drop speed), else finish now
            rest = next((ls for ls, _ in self.merges(n) if self._predict(ls, drop) <= room), ())
            self._cut(n, rest, elapsed, self.timeline[n], False)
            return
        else:
            best, source = min(opts, key=lambda o: (self._predict(o[0], speed), -sum(o[0])))
            source = "shortest" if source == "current" else source
        if source == "current":
            return
        self._apply(n, best, elapsed, self.timeline[n], source)
