"""Latency at a quantile: what a plan costs on a bad batch, not on a typical one.

A profile keeps, for every (precision, batch, length), the median, p90 and p99 of one network
call and the raw samples behind them (`samples_ms`). A plan makes N calls; its latency at
quantile Q is predicted as

    pred_Q = sum_i median_i + host  +  sqrt( sum_i (q_Q,i - median_i)^2 )

where q_Q,i is call i's own Q-quantile (from its samples; from the recorded p50/p90/p99 by linear
interpolation in Q when a profile has no samples) and `host` is the runtime's measured host work
per call and per batch. A plan that decodes (a latent model) adds its decoder as one more term of
both sums, once per batch: its median, and its excess at Q (from the profile's `decoders`). The first part is the median plan (what the planner predicted before); the
spread term composes the calls' excess over their medians as independent jitter: root-sum-square,
exact for Gaussian excesses, and well below the sum of the excesses (which would assume every call
of a batch is slow at once). Slowdowns that do hit every call at once (a second process on the
core, a clock change) are not jitter: the closed loop measures them as the device's speed
(odelt.runtime.budget.tracker) and scales the whole prediction.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from odelt.errors import ConfigError
from odelt.runtime.budget.planner import Candidate
from odelt.runtime.budget.profile import call_cost, decode_cost, exit_cost, host_overheads
from odelt.ode.solvers import SOLVER_INFO

DEFAULT_QUANTILE = 0.95
_RECORDED = ((0.5, "median_ms"), (0.9, "p90_ms"), (0.99, "p99_ms"))


def check_quantile(q: float) -> float:
    if not 0.5 <= q < 1.0:
        raise ConfigError(f"--quantile must lie in [0.5, 1), found {q}")
    return float(q)


def call_quantile(entry: dict[str, Any], q: float) -> float:
    """Quantile q of one call's time (ms), from its samples or its recorded p50/p90/p99."""
    samples = entry.get("samples_ms")
    if samples:
        return float(np.quantile(np.asarray(samples, np.float64), q))
    known = [(p, float(entry[k])) for p, k in _RECORDED if k in entry]
    if q <= known[0][0]:
        return known[0][1]
    for (p0, v0), (p1, v1) in zip(known, known[1:]):
        if q <= p1:
            return v0 + (v1 - v0) * (q - p0) / (p1 - p0)
    return known[-1][1]            # past the highest recorded quantile: no extrapolation


def excess_cost(profile: dict[str, Any], q: float) -> Callable[[str, int, int], float]:
    """(precision, length, batch) -> ms by which one call's q-quantile exceeds its median.
    Between profiled batches the nearest profiled batch's excess is scaled by the median's ratio."""
    excess = _excess(profile["calls"], call_cost(profile), q)
    return lambda precision, length, batch: excess(precision, length, str(length), batch)


def decode_excess(profile: dict[str, Any], q: float) -> Callable[[str, str, int], float]:
    """(decoder precision, kind, batch) -> ms by which one decode's q-quantile exceeds its median."""
    excess = _excess(profile.get("decoders", {}), decode_cost(profile), q)
    return lambda precision, kind, batch: excess(precision, kind, kind, batch)


def _excess(table: dict[str, Any], median: Callable[[str, Any, int], float], q: float) -> Callable[..., float]:
    def excess(precision: str, what: Any, key: str, batch: int) -> float:
        at = median(precision, what, batch)                 # first: its one-line error on a missing entry
        by_batch = {int(b): v for b, v in table[precision].items()}
        near = min(by_batch, key=lambda b: (abs(b - batch), b))
        entry = by_batch[near][key]
        extra = max(0.0, call_quantile(entry, q) - float(entry["median_ms"]))
        return extra * at / max(1e-12, float(entry["median_ms"]))

    return excess


class QuantilePredictor:
    """Predicted ms of a sequence of call lengths at one (precision, batch), and of a whole plan
    (its decoder included): median and quantile."""

    def __init__(self, profile: dict[str, Any], batch: int, quantile: float = DEFAULT_QUANTILE):
        self.quantile, self.batch = check_quantile(quantile), batch
        self._median, self._excess = call_cost(profile), excess_cost(profile, self.quantile)
        self._decode_median, self._decode_excess = decode_cost(profile), decode_excess(profile, self.quantile)
        self.step_ms, self.sample_ms = host_overheads(profile)
        self._reach = exit_cost(profile)
        self._memo: dict[tuple[str, int], tuple[float, float]] = {}
        self._decode_memo: dict[tuple[str, str], tuple[float, float]] = {}

    def call(self, precision: str, length: int) -> tuple[float, float]:
        """(median ms, excess ms at the quantile) of one call, host work per call included."""
        key = (precision, length)
        if key not in self._memo:
            self._memo[key] = (self._median(precision, length, self.batch) + self.step_ms,
                               self._excess(precision, length, self.batch))
        return self._memo[key]

    def reach(self, precision: str, length: int, exit_length: int) -> float:
        """Median ms from a call's start at `length` to the chunk that completes `exit_length` (an
        exit inside the call: odelt.runtime.budget.anytime's decision points inside a step)."""
        return self._reach(precision, length, exit_length, self.batch)

    def decoding(self, c: Candidate) -> tuple[float, float]:
        """(median ms, excess ms at the quantile) of decoding one batch of c; (0, 0) without a decoder."""
        if c.decoder is None:
            return 0.0, 0.0
        key = (c.decoder_precision, c.decoder)
        if key not in self._decode_memo:
            self._decode_memo[key] = (self._decode_median(*key, self.batch), self._decode_excess(*key, self.batch))
        return self._decode_memo[key]

    def median_ms(self, precision: str, lengths: Sequence[int]) -> float:
        """Sampling only: the calls and the host work per batch."""
        return sum(self.call(precision, n)[0] for n in lengths) + self.sample_ms

    def quantile_ms(self, precision: str, lengths: Sequence[int]) -> float:
        spread = math.sqrt(sum(self.call(precision, n)[1] ** 2 for n in lengths))
        return self.median_ms(precision, lengths) + spread

    def decode(self, c: Candidate) -> float:
        return self.decoding(c)[0]

    def median(self, c: Candidate) -> float:
        """End to end: sampling, then decoding the batch once."""
        return self.median_ms(c.precision, c.lengths) + self.decode(c)

    def candidate(self, c: Candidate) -> float:
        """End to end at the quantile: the decode's excess joins the calls' root-sum-square."""
        med, extra = self.decoding(c)
        spread = math.sqrt(sum(self.call(c.precision, n)[1] ** 2 for n in c.lengths) + extra ** 2)
        return self.median_ms(c.precision, c.lengths) + med + spread


def step_lengths_to_calls(solver: str, lengths: Sequence[int]) -> list[int]:
    """Per-step lengths -> per-call lengths of a fixed-step solver (Heun calls twice per step)."""
    per = SOLVER_INFO[solver].calls_per_step or 1
    return [n for n in lengths for _ in range(per)]
