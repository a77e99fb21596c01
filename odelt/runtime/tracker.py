"""Closed loop between batches: how fast the device runs now, and which plan fits at that speed.

`SpeedTracker` keeps the ratio measured / predicted-median of the last `window` batches (the
prediction is of the lengths the batch really ran, so an anytime switch does not look like a
speed-up). Its estimate is the median of that window: one stray batch (a page fault, a preempted
slice) moves nothing, a real change in speed is followed after window // 2 + 1 batches. Until the
window holds `window // 2 + 1` batches the estimate is 1 (the profile's own speed).

`Replanner` holds every candidate's median and quantile prediction at the profile's speed, sorted
by quality once; re-planning at speed s takes the best candidate with s * quantile_ms <= budget
(a scan of a list: microseconds). Pure Python, runs next to the sampler.
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

    def __init__(self, window: int = 5):
        if window < 1:
            raise ValueError(f"window must be >= 1, found {window}")
        self.window = window
        self._ratios: deque[float] = deque(maxlen=window)
        self.speed = 1.0

    def observe(self, measured_ms: float, predicted_ms: float) -> float:
        """Add one batch; returns the new estimate (slowdown factor; > 1: slower than profiled)."""
        self._ratios.append(measured_ms / max(predicted_ms, 1e-9))
        if len(self._ratios) >= self.window // 2 + 1:
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
        rows = [Planned(c, predictor.median_ms(c.precision, c.lengths), predictor.candidate(c)) for c in candidates]
        self.by_quality = sorted(rows, key=lambda p: (p.candidate.error, p.quantile_ms))
        self.cheapest = min(rows, key=lambda p: p.quantile_ms)

    def choose(self, speed: float = 1.0) -> Planned:
        """Best fit at `speed`; when nothing fits, the cheapest plan (anytime control then has the
        most room to shorten it)."""
        for p in self.by_quality:
            if p.quantile_ms * speed <= self.budget_ms:
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
