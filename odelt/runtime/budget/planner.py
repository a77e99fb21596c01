"""Pick (solver, schedule, NFE, per-step lengths, precision, decoder) to meet a latency budget.

A plan's latency is predicted from an on-device profile: the cost of one network call at a
given (precision, length, batch) is the sum of the medians of the graphs its chain runs, plus
the runtime's host-side cost per call and per batch, both measured on the device with the real
sampler. A latent model's plan also decodes: its decoder's profiled time for the whole batch is
added once (not per step), so

    end-to-end = sum over calls (call + host per call) + host per batch + decode of the batch.

Quality comes from a table computed once on the host (held-out error to the teacher; with a
decoder, in image space: odelt.runtime.budget.plans). Pure Python: runs on the device next to the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, Sequence

from odelt.errors import BudgetError, ConfigError


@dataclass(frozen=True)
class Candidate:
    name: str                      # e.g. "ld3-euler-nfe4-int8"
    schedule: str                  # schedule artifact name or file
    solver: str
    lengths: tuple[int, ...]       # the length of every network call, in order (len = NFE)
    precision: str                 # "fp32" | "fp16" | "int8" (| "bf16": OpenVINO)
    error: float                   # held-out RMSE to the teacher (lower is better; image space with a decoder)
    fd: float | None = None        # FD-digits, when measured
    decoder: str | None = None     # decoder kind ("sd" | "taesd") of a latent plan; None: latents only
    decoder_precision: str = "fp32"
    backend: str = "ort"           # the runtime backend that runs it (odelt.runtime.budget.axes)

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
    # per row of `table`: (end-to-end median ms, its decoder's median ms); () when not known
    parts: tuple[tuple[float, float], ...] = field(default=(), repr=False)

    def decode_share(self, candidate: Candidate | None = None) -> tuple[float, float] | None:
        """(decoder ms, its share of the end-to-end median) of a row (default: the chosen plan);
        None for a plan that does not decode."""
        c = candidate or self.candidate
        if c.decoder is None or not self.parts:
            return None
        total, decode = self.parts[[row for row, _ in self.table].index(c)]
        return decode, decode / total if total > 0 else 0.0


# A call cost: (precision, length, batch) -> milliseconds for one network call, from a profile.
CallCost = Callable[[str, int, int], float]
# A decode cost: (decoder precision, decoder kind, batch) -> milliseconds to decode the whole batch.
DecodeCost = Callable[[str, str, int], float]


class Predictor(Protocol):
    """What the planner asks of a latency model (MedianPredictor; QuantilePredictor in quantile.py)."""

    @property
    def batch(self) -> int: ...

    def candidate(self, c: Candidate) -> float: ...      # the prediction a plan must fit the budget with
    def median(self, c: Candidate) -> float: ...         # the end-to-end median
    def decode(self, c: Candidate) -> float: ...         # the decoder's median (0 without one)


def decoder_ms(candidate: Candidate, decode_ms: DecodeCost | None, batch: int) -> float:
    """The decoder's ms for one batch of `candidate` (0 for a plan that returns latents)."""
    if candidate.decoder is None:
        return 0.0
    if decode_ms is None:
        raise ConfigError(f"plan {candidate.name} decodes with {candidate.decoder}: expected a profile with "
                          "decoder timings, found none (re-run `odelt-export profile`)")
    return decode_ms(candidate.decoder_precision, candidate.decoder, batch)


def predict_ms(candidate: Candidate, call_ms: CallCost, batch: int, step_overhead_ms: float = 0.0,
               sample_overhead_ms: float = 0.0, decode_ms: DecodeCost | None = None) -> float:
    """Predicted wall time of one generation: every call's chain, plus the runtime's host work per
    call (solver arithmetic, input writes) and per batch (setup, the final finiteness check), plus
    decoding the batch once when the plan decodes."""
    calls = sum(call_ms(candidate.precision, length, batch) for length in candidate.lengths)
    return (calls + step_overhead_ms * candidate.nfe + sample_overhead_ms
            + decoder_ms(candidate, decode_ms, batch))


@dataclass(frozen=True)
class MedianPredictor:
    """A plan's latency as the sum of its parts' medians (predict_ms)."""

    call_ms: CallCost
    batch: int = 1
    step_overhead_ms: float = 0.0
    sample_overhead_ms: float = 0.0
    decode_ms: DecodeCost | None = None

    def median(self, c: Candidate) -> float:
        return predict_ms(c, self.call_ms, self.batch, self.step_overhead_ms, self.sample_overhead_ms, self.decode_ms)

    def decode(self, c: Candidate) -> float:
        return decoder_ms(c, self.decode_ms, self.batch)

    candidate = median


def choose(candidates: Sequence[Candidate], budget_ms: float, call_ms: CallCost | None = None, batch: int = 1,
           step_overhead_ms: float = 0.0, sample_overhead_ms: float = 0.0, decode_ms: DecodeCost | None = None,
           predictor: Predictor | None = None) -> Choice:
    """The lowest-error candidate whose predicted latency fits the budget (ties: the faster one).
    predictor: the latency model (e.g. at a quantile: odelt.runtime.budget.predict.QuantilePredictor);
    default the sum of medians from call_ms, the host overheads and decode_ms (MedianPredictor).

    Raises:
        BudgetError: when even the cheapest candidate is over budget; names the minimum.
    """
    if not candidates:
        raise BudgetError("no candidate plans: expected a quality table with at least one plan, found none")
    if not budget_ms > 0:
        raise BudgetError(f"--budget-ms: expected a number > 0, found {budget_ms}")
    if predictor is None:
        if call_ms is None:
            raise ValueError("choose needs call_ms or a predictor")
        predictor = MedianPredictor(call_ms, batch, step_overhead_ms, sample_overhead_ms, decode_ms)
    return _choose(candidates, budget_ms, predictor)


def _choose(candidates: Sequence[Candidate], budget_ms: float, predictor: Predictor) -> Choice:
    table = tuple((c, predictor.candidate(c)) for c in candidates)
    parts = tuple((predictor.median(c), predictor.decode(c)) for c in candidates)
    fits = [(c, ms) for c, ms in table if ms <= budget_ms]
    if not fits:
        cheapest, ms = min(table, key=lambda cm: cm[1])
        decode = predictor.decode(cheapest)
        of_which = f", {decode:.3g} ms of it decoding with {cheapest.decoder}" if cheapest.decoder else ""
        raise BudgetError(f"budget {budget_ms:g} ms is below the cheapest plan at batch {predictor.batch}: "
                          f"{cheapest.name} needs {ms:.3g} ms (the minimum achievable latency{of_which})")
    best, ms = min(fits, key=lambda cm: (cm[0].error, cm[1]))
    return Choice(best, ms, table, parts)


def pareto_front(points: Iterable[tuple[Candidate, float]]) -> list[tuple[Candidate, float]]:
    """Candidates no other candidate beats on both latency and error, fastest first."""
    front: list[tuple[Candidate, float]] = []
    for c, ms in sorted(points, key=lambda cm: (cm[1], cm[0].error)):
        if not front or c.error < front[-1][0].error:
            front.append((c, ms))
    return front
