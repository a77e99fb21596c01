"""Pick (solver, schedule, NFE, per-step lengths, precision, decoder) to meet a latency budget.

A plan's latency comes from the one latency model, odelt.runtime.budget.predict.Predictor: the
profiled medians of its calls and of its decoder (a latent plan decodes the batch once, after its
last step), the runtime's host work per call and per batch, and the calls' spread at the asked
quantile (q = 0.5: the sum of the medians). `choose` is the one chooser: `plan`, `generate` (the
stream's first plan), the demo and the Triton sampler all call it.

Quality comes from a table computed once on the host (held-out error to the teacher; with a
decoder, in image space: odelt.runtime.budget.plans). Pure Python: runs on the device next to the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from odelt.errors import BudgetError
from odelt.runtime.budget.predict import Predictor

NO_PLANS = "no candidate plans: expected a quality table with at least one plan, found none"


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


def choose(candidates: Sequence[Candidate], budget_ms: float, predictor: Predictor) -> Choice:
    """The lowest-error candidate whose predicted latency (predictor.candidate) fits the budget
    (ties: the faster one). The budget is checked where it is given (odelt.validate.positive).

    Raises:
        BudgetError: when even the cheapest candidate is over budget; names it and its prediction.
    """
    if not candidates:
        raise BudgetError(NO_PLANS)
    table = tuple((c, predictor.candidate(c)) for c in candidates)
    parts = tuple((predictor.median(c), predictor.decode(c)) for c in candidates)
    fits = [(c, ms) for c, ms in table if ms <= budget_ms]
    if not fits:
        cheapest, ms = min(table, key=lambda cm: cm[1])
        decode = predictor.decode(cheapest)
        of_which = f", {decode:.3g} ms of it decoding with {cheapest.decoder}" if cheapest.decoder else ""
        raise BudgetError(f"budget {budget_ms:g} ms is below the cheapest plan at batch {predictor.batch}: expected "
                          f">= {ms:.3g} ms, the prediction at quantile {predictor.quantile:g} of {cheapest.name} "
                          f"(the minimum achievable latency{of_which})")
    best, ms = min(fits, key=lambda cm: (cm[0].error, cm[1]))
    return Choice(best, ms, table, parts)


def prediction_record(c: Candidate, predicted_ms: float, predictor: Predictor) -> dict[str, Any]:
    """A plan and its prediction as JSON: what `plan --json` prints and every `generate --log` line
    carries (the same keys, the same rounding)."""
    return {"plan": c.name, "precision": c.precision, "backend": c.backend, "solver": c.solver,
            "schedule": c.schedule, "call_lengths": list(c.lengths), "batch_size": predictor.batch,
            "predicted_ms": round(predicted_ms, 4), "quantile": predictor.quantile, "rmse": c.error,
            "decoder": f"{c.decoder}-{c.decoder_precision}" if c.decoder else None}


def pareto_front(points: Iterable[tuple[Candidate, float]]) -> list[tuple[Candidate, float]]:
    """Candidates no other candidate beats on both latency and error, fastest first."""
    front: list[tuple[Candidate, float]] = []
    for c, ms in sorted(points, key=lambda cm: (cm[1], cm[0].error)):
        if not front or c.error < front[-1][0].error:
            front.append((c, ms))
    return front
