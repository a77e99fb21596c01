"""Pick (solver, schedule, NFE, per-step lengths, precision) to meet a latency budget.

A plan's latency is predicted from an on-device profile: the cost of one network call at a
given (precision, length, batch) is the sum of the medians of the graphs its chain runs, plus
the runtime's host-side cost per call and per batch, both measured on the device with the real
sampler. Quality comes from a table computed once on the
host (held-out error to the teacher). Pure Python: runs on the device next to the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from odelt.errors import BudgetError


@dataclass(frozen=True)
class Candidate:
    name: str                      # e.g. "ld3-euler-nfe4-int8"
    schedule: str                  # schedule artifact name or file
    solver: str
    lengths: tuple[int, ...]       # the length of every network call, in order (len = NFE)
    precision: str                 # "fp32" | "fp16" | "int8"
    error: float                   # held-out RMSE to the teacher (lower is better)
    fd: float | None = None        # FD-digits, when measured

    @property
    def nfe(self) -> int:
        return len(self.lengths)

    @property
    def block_evals(self) -> int:
        return sum(self.lengths)


@dataclass(frozen=True)
class Choice:
    candidate: Candidate
    predicted_ms: float
    table: tuple[tuple[Candidate, float], ...] = field(repr=False)  # every candidate, with its prediction


# A call cost: (precision, length, batch) -> milliseconds for one network call, from a profile.
CallCost = Callable[[str, int, int], float]


def predict_ms(candidate: Candidate, call_ms: CallCost, batch: int, step_overhead_ms: float = 0.0,
               sample_overhead_ms: float = 0.0) -> float:
    """Predicted wall time of one generation: every call's chain, plus the runtime's host work per
    call (solver arithmetic, input writes) and per batch (setup, the final finiteness check)."""
    calls = sum(call_ms(candidate.precision, length, batch) for length in candidate.lengths)
    return calls + step_overhead_ms * candidate.nfe + sample_overhead_ms


def choose(candidates: Sequence[Candidate], budget_ms: float, call_ms: CallCost, batch: int = 1,
           step_overhead_ms: float = 0.0, sample_overhead_ms: float = 0.0,
           predict: Callable[[Candidate], float] | None = None) -> Choice:
    """The lowest-error candidate whose predicted latency fits the budget (ties: the faster one).
    predict: a candidate's predicted ms (e.g. at a quantile: odelt.runtime.quantile); default the
    sum of medians, predict_ms.

    Raises:
        BudgetError: when even the cheapest candidate is over budget; names the minimum.
    """
    if not candidates:
        raise BudgetError("no candidate plans: expected a quality table with at least one plan, found none")
    if not budget_ms > 0:
        raise BudgetError(f"--budget-ms: expected a number > 0, found {budget_ms}")
    pred = predict or (lambda c: predict_ms(c, call_ms, batch, step_overhead_ms, sample_overhead_ms))
    table = tuple((c, pred(c)) for c in candidates)
    fits = [(c, ms) for c, ms in table if ms <= budget_ms]
    if not fits:
        cheapest, ms = min(table, key=lambda cm: cm[1])
        raise BudgetError(f"budget {budget_ms:g} ms is below the cheapest plan at batch {batch}: "
                          f"{cheapest.name} needs {ms:.3g} ms (the minimum achievable latency)")
    best, ms = min(fits, key=lambda cm: (cm[0].error, cm[1]))
    return Choice(best, ms, table)


def pareto_front(points: Iterable[tuple[Candidate, float]]) -> list[tuple[Candidate, float]]:
    """Candidates no other candidate beats on both latency and error, fastest first."""
    front: list[tuple[Candidate, float]] = []
    for c, ms in sorted(points, key=lambda cm: (cm[1], cm[0].error)):
        if not front or c.error < front[-1][0].error:
            front.append((c, ms))
    return front
