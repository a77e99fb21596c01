"""Closed loop between batches: how fast the device runs now, and which plan fits at that speed.

`SpeedTracker` keeps the ratio measured / predicted-median of the last `window` batches (the
prediction is of the lengths the batch really ran, so an anytime switch does not look like a
speed-up). Two robust estimates come from that window:

* `speed`, its median (from 3 batches on; 1 before): how fast the device runs now, typically;
* `tail`, its second-largest ratio (from 2 batches on): how slow a bad batch is now. One stray
  batch moves neither; a second process on the core is followed after two batches (its time
  slices make batches bimodal, which a median hides), and forgotten `window - 1` batches after it
  stops.

`Replanner` holds every candidate's median and quantile prediction at the profile's speed, sorted
by quality once. Re-planning takes the best candidate with

    speed * quantile_ms <= budget   and   tail * median_ms <= budget

(the profile's tail at the current speed, and the tail observed now): a scan of a list,
microseconds. Pure Python, runs next to the sampler.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from statistics import median
from typing import Sequence

from odelt.runtime.planner import BudgetError, Candidate
from odelt.runtime.quantile import QuantilePredictor


class SpeedTracker:
    """Robust online estimate of (measured / predicted) batch time."""

    def __init__(self, window: int = 10):
        if window < 3:
            raise ValueError(f"window must be >= 3, found {window}")
        self.window = window
        self._ratios: deque[float] = deque(maxlen=window)
        self.speed, self.tail = 1.0, 1.0

    def observe(self, measured_ms: float, predicted_ms: float) -> float:
        """Add one batch; returns the new speed (slowdown factor; > 1: slower than profiled)."""
        self._ratios.append(measured_ms / max(predicted_ms, 1e-9))
        if len(self._ratios) >= 2:
            self.tail = sorted(self._ratios)[-2]
        if len(self._ratios) >= 3:
            self.speed = float(median(self._ratios))
        return self.speed


@dataclass(frozen=True)
class Planned:
    candidate: Candidate
    median_ms: float           # at the profile's speed
    quantile_ms: float


class Replanner:
    """The best candidate whose quantile prediction, scaled by the tracked speed, fits the budget."""

    def __init__(self, candidates: Sequence[Candidate], predictor: QuantilePredictor, budget_ms: float):
        if not budget_ms > 0:
            raise BudgetError(f"--budget-ms must be a positive number of milliseconds, found {budget_ms}")
        if not candidates:
            raise BudgetError("no candidate plans: expected a quality table with at least one plan, found none")
        self.budget_ms, self.predictor = budget_ms, predictor
        rows = [Planned(c, predictor.median(c), predictor.candidate(c)) for c in candidates]
        self.by_quality = sorted(rows, key=lambda p: (p.candidate.error, p.quantile_ms))
        self.cheapest = min(rows, key=lambda p: p.quantile_ms)

    def choose(self, speed: float = 1.0, tail: float = 0.0) -> Planned:
        """Best fit at `speed` and observed `tail` (0: none observed yet); when nothing fits, the
        cheapest plan (anytime control then has the most room to shorten it)."""
        for p in self.by_quality:
            if p.quantile_ms * speed <= self.budget_ms and p.median_ms * tail <= self.budget_ms:
                return p
        return self.cheapest

    def first(self) -> Planned:
        """The plan for the first batch: refuses a budget nothing fits at the profile's speed."""
        p = self.choose(1.0)
        if p.quantile_ms > self.budget_ms:
            raise BudgetError(f"budget {self.budget_ms:g} ms is below the cheapest plan at batch "
                              f"{self.predictor.batch}: {p.candidate.name} needs {p.quantile_ms:.3g} ms at "
                              f"quantile {self.predictor.quantile:g} (the minimum achievable latency)")
        return p
