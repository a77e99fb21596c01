"""Closed loop between batches: how fast the device runs now, and which plan fits at that speed.

A batch can run late in two ways that act differently on another plan. A slowdown (a slower
clock, a busy memory bus) makes every call slower alike: it scales with the plan's work. A wait
(another process has the core) adds a fixed time: a CPU hog pinned to the sampler's core makes the
sampler run one scheduler tick and then wait one (4 ms at HZ=250, measured), so a 0.9 ms plan
that waits once takes 4.9 ms, a 4.5 ms plan 8.5 ms. Read only as ratios (5.4x, 1.9x), the big
plan's wait predicted 1.7-3 ms for the cheaper plans, and the re-planner walked down plan by plan,
missing at every step (6 misses in a row on the digits bench); read as 4 ms, it goes straight to
the plans that absorb it.

`SpeedTracker` keeps, per batch, its wall time and the median prediction of the lengths it really
ran (an anytime switch does not look like a speed-up). Over a window (the last `window` batches,
extended back until they hold `horizon_ms` of predicted work) it keeps three robust estimates:

* `speed`, the median of measured / predicted (from 3 batches on; 1 before): how fast the
  device runs now, typically;
* `tail`, the second-largest ratio (from 2 batches on; 1 before; the largest while `waiting`): a
  bad batch read as a slowdown;
* `excess_ms`, the second-largest measured - pace * predicted (from 2 batches on; 0 before):
  the same bad batch read as a wait. The pace is the speed, or the profile's when the speed is
  slower: a wait on every batch (a plan longer than a tick) inflates the median ratio, and the
  wait would vanish into it.

The re-planner holds each plan to the larger of the two readings, so whichever a bad batch was,
the next plan absorbs it (the other reading is the conservative one: a real slowdown seen on a
big plan overestimates a cheap plan's time by the big plan's excess). The wall clock is the only
clock read: the sampling thread's CPU time would tell a wait from a slowdown, but reading it is a
system call, where the kernel hands the core to a due competitor mid-tick; the hog's waits then
spread from ~4.0 ms to 2-6 ms and the cheapest digits plan missed 8% of its batches under the
hog instead of 5.5% (1,600 batches each way, measured).

A batch waited when its excess is >= `wait_ms` and >= its own spread at the quantile (what
observe() is given, up to JITTER_FRAC of its median: the profile's jitter for that batch is no
wait; batches of 64 jitter 1-2 ms).
One stray batch moves none of the estimates. A competitor that recurs (two waits in the window)
puts the tracker in `waiting`: the excess and the tail are then the largest in the
window, held while one wait is left in it or until `calm` batches in a row ran untouched (below),
and dropped to the second-largest (jitter) then.
The competitor's effect varies from batch to batch, and the second-largest of a few let plans
through that the next batch pushed over: waits of 4-5 ms under the hog on batches of 8; on batches
of 128 (each spanning several of the hog's slices) slowdowns of 1.8-2.35x, where a tail of 2.04
let a plan through at 96% of the budget and its batch ran 2.35x slower than profiled (48.4 ms
against 43.6, measured). Why the horizon: a time-sliced competitor stalls the
sampler once per tick of the sampler's own running, so the window must span the longest run
between two waits whatever the plan. The digits model's cheapest plan (0.9 ms) waited on every
4th-5th batch under the hog, but now and then ran 8-12 batches between waits (measured); ten
batches (9 ms of work) held two waits only barely, and when they did not, the stream jumped back
to a big plan and missed. Held on one wait, a window of >= 10 ms of work (11-12 such batches)
bridges those runs. That made going back after the competitor stopped take as long as its last
wait stayed in the window (~12 batches, 8-11 in the bench); now three calm batches forget it, and a
run that long under the competitor costs a climb. After that one wait is a stray like any other
(re-arming on one let a stray stall pull the plan down right after the climb); a competitor back
is seen at its second wait (its first waited batch: a closed-loop miss at most; anytime exits
absorb what they can).

A time-sliced competitor stalls a plan once per run of the sampler's work (`run_ms`: the window's
predicted work over its waited ms, times the held wait), so a plan of median m meets up to
1 + floor(m / run_ms) waits: under the hog at batch 8 a 10.6 ms plan waited twice (8.6-8.9 ms)
where one 4.7 ms wait had let it in, and missed.

The cause decides which reading holds the plans (`cause`): late batches with untouched ones
between them are a competitor's time slices (`wait`: a plan fits when its own time + the wait
does, so the best such plan runs, not the cheapest), every batch late for three or more in a row
is a `slowdown` (the competitor spread over batches long against its slices: the ratio alone),
one or two late in a row are either (`both`: the max of the two). The competitor is gone when
`calm` (3) batches in a row ran untouched: the window then forgets its waits and the plans climb
back at once; after that one wait is a stray again, and two within the window a competitor.

`Replanner` holds every candidate's median and quantile prediction at the profile's speed, sorted
by quality once. Re-planning takes the best candidate with

    speed * quantile_ms <= budget   and   max(tail * median_ms, pace * median_ms + waits * excess_ms) <= budget

(the profile's jitter at the current speed, and the bad batch observed now): a scan of a list,
microseconds. Pure Python, runs next to the sampler.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Sequence

from odelt.runtime.budget.planner import NO_PLANS, BudgetError, Candidate, Choice, choose
from odelt.runtime.budget.predict import Predictor, tracked_ms


WAIT_MS = 1.0           # a batch this much over its prediction (and over its own jitter) waited
# the most of a batch's median its profiled jitter may forgive: a spread above it comes from a
# profile taken on a busy machine (a loaded run profiled 2-l4 at 11 ms +- 10 ms), and forgiving
# it hid the hog's 4-9 ms waits from the tracker (a miss and a 12-batch climb, measured)
JITTER_FRAC = 0.1


class SpeedTracker:
    """Robust online estimates of the speed and tail (measured / predicted) and the excess (ms)."""

    def __init__(self, window: int = 10, horizon_ms: float = 10.0, wait_ms: float = WAIT_MS, max_window: int = 64,
                 calm: int = 3):
        if window < 3:
            raise ValueError(f"window must be >= 3, found {window}")
        self.window, self.horizon_ms, self.wait_ms, self.calm = window, float(horizon_ms), float(wait_ms), calm
        # (measured, predicted median, lateness threshold) per batch, oldest first
        self._batches: deque[tuple[float, float, float]] = deque(maxlen=max(window, max_window))
        self.speed, self.tail, self.excess_ms = 1.0, 1.0, 0.0
        self.run_ms = math.inf         # the sampler's work between two of a competitor's waits (inf: none seen)
        self.waiting = False
        self.cause = "none"            # what the window's late batches look like: none | wait | slowdown | both

    def observe(self, measured_ms: float, predicted_ms: float, spread_ms: float = 0.0) -> float:
        """Add one batch (its wall time, the median prediction of what it ran, and that
        prediction's spread at the quantile: jitter the profile prices is no wait); returns the
        new speed (slowdown factor; > 1: slower than profiled)."""
        self._batches.append((measured_ms, max(predicted_ms, 1e-9),
                              max(self.wait_ms, min(spread_ms, JITTER_FRAC * predicted_ms))))
        if self.waiting and self._calmed():
            while len(self._batches) > self.calm:       # the competitor has gone: forget its waits
                self._batches.popleft()
            self.waiting = False
        recent = self._recent()
        ratios = [m / p for m, p, _ in recent]                        # newest first
        ordered = sorted(ratios)
        if len(recent) >= 3:
            self.speed = _middle(ordered)
        self.run_ms = math.inf
        if len(recent) >= 2:
            pace = min(self.speed, 1.0)
            over = [m - pace * p for m, p, _ in recent]
            late = [o >= t for o, (_, _, t) in zip(over, recent)]
            excess = sorted(over)
            self.waiting = sum(late) >= 2 or (self.waiting and any(late))
            worst = -1 if self.waiting else -2
            self.tail, self.excess_ms = ordered[worst], max(0.0, excess[worst])
            self.cause = self._cause(ratios, over, late)
            if self.cause in ("wait", "both"):
                self.run_ms = _run_ms(recent, over, late, self.excess_ms)
        return self.speed

    def _calmed(self) -> bool:
        """The last `calm` batches ran as profiled: none waited."""
        b, pace = self._batches, min(self.speed, 1.0)
        return len(b) >= self.calm and all(b[-k][0] - pace * b[-k][1] < b[-k][2] for k in range(1, self.calm + 1))

    def _cause(self, ratios: list[float], over: list[float], late: list[bool]) -> str:
        """Read the window's late batches (`late`: over the pace by >= wait_ms and the batch's own
        jitter), from the oldest late one on:
        some untouched in between -> a competitor's `wait` (time slices: a batch waits a whole
        one or none, whatever its size): the tail is then the untouched batches' largest ratio
        and only the excess holds plans (plan + wait <= budget); every one late for >= 3 batches
        -> a `slowdown` (the competitor spreads over every batch: batches long against its
        slices): only the ratio holds plans. Otherwise (1-2 late batches in a row: either) both
        readings hold, the conservative max (module doc). Lists are newest first."""
        if not self.waiting:
            return "none"
        oldest = max((i for i, v in enumerate(late) if v), default=-1)
        if oldest < 0:
            return "none"
        if not all(late[:oldest + 1]):
            clean = sorted(r for r, v in zip(ratios, late) if not v)
            self.tail = clean[-1]
            self.speed = min(self.speed, _middle(clean))
            return "wait"
        if oldest >= 2:
            self.excess_ms = 0.0
            return "slowdown"
        return "both"

    def _recent(self) -> list[tuple[float, float, float]]:
        """The last `window` batches, and older ones until their predicted work reaches `horizon_ms`."""
        out: list[tuple[float, float, float]] = []
        work = 0.0
        for b in reversed(self._batches):
            if len(out) >= self.window and work >= self.horizon_ms:
                break
            out.append(b)
            work += b[1]
        return out


def _run_ms(recent: list[tuple[float, float, float]], over: list[float], late: list[bool], wait_ms: float) -> float:
    """The sampler's work between two of a competitor's waits: the window's work over the number
    of waits in it, counting the late batches' excess in units of the held wait (a batch that
    waited twice counts twice): wait_ms / (waited ms per ms of work)."""
    waited = sum(o for o, v in zip(over, late) if v)
    work = sum(p for _, p, _ in recent)
    return wait_ms * work / waited if waited > 0 and wait_ms > 0 else math.inf


def _middle(ordered: list[float]) -> float:
    """The median of a sorted list (statistics.median sorts again)."""
    n = len(ordered)
    return float(ordered[n // 2] + ordered[(n - 1) // 2]) / 2


@dataclass(frozen=True)
class Planned:
    candidate: Candidate
    median_ms: float           # at the profile's speed
    quantile_ms: float

    def at(self, speed: float = 1.0, tail: float = 0.0, excess_ms: float = 0.0, run_ms: float = math.inf) -> float:
        """Predicted ms at the tracked speed, tail, excess and competitor's run (what choose() holds
        to the budget): the latency model's tracked prediction (predict.tracked_ms) of the stored
        median and quantile."""
        return tracked_ms(self.median_ms, self.quantile_ms, speed, tail, excess_ms, run_ms)


class Replanner:
    """The best candidate whose prediction at the tracked speed, tail and excess fits the budget."""

    def __init__(self, candidates: Sequence[Candidate], predictor: Predictor, budget_ms: float):
        if not candidates:
            raise BudgetError(NO_PLANS)
        self.budget_ms, self.predictor = budget_ms, predictor     # the budget is checked where it is given
        self.choice: Choice | None = None                         # first(): the first batch's choice
        rows = [Planned(c, predictor.median(c), predictor.candidate(c)) for c in candidates]
        self.by_quality = sorted(rows, key=lambda p: (p.candidate.error, p.quantile_ms))
        self.cheapest = min(rows, key=lambda p: p.quantile_ms)

    def choose(self, speed: float = 1.0, tail: float = 0.0, excess_ms: float = 0.0,
               run_ms: float = math.inf) -> Planned:
        """Best fit at `speed`, observed `tail` and `excess_ms` (0: none observed yet), a wait
        recurring every `run_ms` of work; when nothing fits, the cheapest plan (anytime control
        then has the most room to shorten it)."""
        for p in self.by_quality:
            if p.at(speed, tail, excess_ms, run_ms) <= self.budget_ms:
                return p
        return self.cheapest

    def first(self) -> Planned:
        """The plan for the first batch, by the one chooser (planner.choose: its BudgetError when
        nothing fits at the profile's speed); kept in `self.choice`."""
        self.choice = choose([p.candidate for p in self.by_quality], self.budget_ms, self.predictor)
        return next(p for p in self.by_quality if p.candidate == self.choice.candidate)
