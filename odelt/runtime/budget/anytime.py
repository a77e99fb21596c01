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

Being early never lengthens a step, so for a fixed seed a batch that is never late gives exactly
the plan's images: quality is reproducible whenever the deadline is not at risk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

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
                 after: tuple[float, float] = (0.0, 0.0)):
        if not SOLVER_INFO[schedule.solver].calls_per_step:
            raise ValueError(f"anytime control needs a fixed-step solver, found {schedule.solver}")
        self.schedule, self.budget_ms = schedule, float(budget_ms)
        self.predictor, self.precision = predictor, precision
        self.lengths = tuple(schedule.lengths)
        self.starts = tuple(float(t) for t in schedule.t_grid[:-1])
        self.cost = {n: predictor.call(precision, n) for n in sorted(set(exported) | set(self.lengths))}
        self.host_ms = predictor.sample_ms
        self.after = after                 # (median, excess at the quantile) of decoding the batch
        blocks = sum(self.lengths)
        self.profiles = [p for p in profiles if p.blocks < blocks]
        self.exported = sorted(set(exported), reverse=True)
        cum, total = [], 0.0
        for k in range(len(self.lengths)):             # the medians of each step's calls (Heun: two)
            total += sum(self.cost[m][0] for m in schedule.call_lengths(self.lengths[k:k + 1]))
            cum.append(total)
        self.cum = cum
        self.timeline = [(self.budget_ms - self.host_ms - after[0]) * c / total for c in cum]
        self.switches: list[Switch] = []
        self.current: list[int] = list(self.lengths)
        self._start, self._clock, self._set = 0.0, (lambda: 0.0), (lambda n, length: None)

    def begin(self, start: float, clock: Callable[[], float], set_length: SetLength) -> None:
        """A batch starts at clock() == start (seconds); the sampler's steps run the plan's lengths."""
        self._start, self._clock, self._set = start, clock, set_length
        self.switches = []
        self.current = list(self.lengths)

    def after_step(self, n: int, t: object, x: object) -> None:
        """The solver's callback: step n has landed."""
        elapsed = (self._clock() - self._start) * 1e3
        if elapsed <= self.timeline[n] or n + 1 >= len(self.lengths):
            return
        self._replan(n, elapsed)

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
        fits = [(sum(ls), src.startswith("learned"), ls, src) for ls, src in opts if self._predict(ls, speed) <= room]
        if fits:
            _, _, best, source = max(fits, key=lambda f: (f[0], f[1]))
        else:
            best, source = min(opts, key=lambda o: (self._predict(o[0], speed), -sum(o[0])))
            source = "shortest" if source == "current" else source
        if source == "current" or list(best) == self.current[n + 1:]:
            return
        before = tuple(self.current[n + 1:])
        for k, length in enumerate(best, start=n + 1):
            if length != self.current[k]:
                self._set(k, length)
                self.current[k] = length
        self.switches.append(Switch(n + 1, elapsed, self.timeline[n], before, tuple(best), source))
