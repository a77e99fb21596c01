"""The latency model: what a plan costs at a quantile of its batches (the one formula; the median
model is its q = 0.5, the tracked and in-batch predictions are it scaled by what was observed).

A profile keeps, for every (precision, batch, length), the median, p90 and p99 of one network
call and the raw samples behind them (`samples_ms`). A plan makes N calls; its latency at
quantile Q is predicted as

    pred_Q = sum_i median_i + host  +  sqrt( sum_i (q_Q,i - median_i)^2 )

where q_Q,i is call i's own Q-quantile (from its samples; from the recorded p50/p90/p99 by linear
interpolation in Q when a profile has no samples) and `host` is the runtime's measured host work
per call and per batch. A plan that decodes (a latent model) adds its decoder as one more term of
both sums, once per batch: its median, and its excess at Q (from the profile's `decoders`). The
first part is the median prediction (Q = 0.5: the spread is zero by definition, a call's median
being its 0.5-quantile); the spread term composes the calls' excess over their medians as
independent jitter: root-sum-square, exact for Gaussian excesses, and well below the sum of the
excesses (which would assume every call of a batch is slow at once). Slowdowns that do hit every
call at once (a second process on the core, a clock change) are not jitter: the closed loop
measures them as the device's speed (odelt.runtime.budget.tracker) and scales the whole prediction
(tracked_ms).

Every latency number of the budget engine comes from `Predictor.batch_ms`: `plan`, `generate`,
the stream's re-planner, the anytime timeline, the demo and the Triton sampler.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from odelt.bundle.bundle import Bundle
from odelt.runtime.budget.profile import call_cost, decode_cost, exit_cost, host_overheads, profile_bundle

DEFAULT_QUANTILE = 0.95
MEDIAN = 0.5                       # the median model: no spread term
_RECORDED = ((0.5, "median_ms"), (0.9, "p90_ms"), (0.99, "p99_ms"))


class Plan(Protocol):
    """What the model reads of a plan (odelt.runtime.budget.planner.Candidate)."""

    @property
    def precision(self) -> str: ...
    @property
    def lengths(self) -> tuple[int, ...]: ...        # every network call's length, in order
    @property
    def decoder(self) -> str | None: ...
    @property
    def decoder_precision(self) -> str: ...


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
        if q <= MEDIAN:                                     # the median model: by definition no excess
            return 0.0
        extra = max(0.0, call_quantile(entry, q) - float(entry["median_ms"]))
        return extra * at / max(1e-12, float(entry["median_ms"]))

    return excess


def tracked_ms(median_ms: float, quantile_ms: float, speed: float = 1.0, tail: float = 0.0,
               excess_ms: float = 0.0, run_ms: float = math.inf) -> float:
    """A prediction under what the closed loop observed (odelt.runtime.budget.tracker): the
    quantile at the tracked `speed`, and a bad batch read both as a slowdown (`tail` x the median)
    and as waits (the median at the pace plus `excess_ms` for every wait it may meet: a
    competitor that takes the core after every `run_ms` of the sampler's work stalls a batch of
    that median 1 + floor(median / run_ms) times at worst); the largest of the three. With
    nothing observed (1, 0, 0, inf) it is the quantile prediction itself (quantile_ms >= median_ms)."""
    waits = 1 + (math.floor(median_ms / run_ms) if run_ms > 0 and math.isfinite(run_ms) else 0)
    bad = max(median_ms * tail, median_ms * min(speed, 1.0) + excess_ms * waits)
    return max(quantile_ms * speed, bad)


class Predictor:
    """THE latency model: predicted ms of a batch of `batch` rows making a sequence of calls at one
    precision (its decoder included), as (median, quantile) from one profile (module doc)."""

    def __init__(self, profile: dict[str, Any], batch: int, quantile: float = DEFAULT_QUANTILE):
        self.quantile, self.batch = float(quantile), batch      # checked once where it is given (validate)
        self.backend = str(profile.get("backend", "ort"))
        self._median, self._excess = call_cost(profile), excess_cost(profile, self.quantile)
        self._decode_median, self._decode_excess = decode_cost(profile), decode_excess(profile, self.quantile)
        self.step_ms, self.sample_ms = host_overheads(profile)
        self._reach = exit_cost(profile)
        self._memo: dict[tuple[str, int], tuple[float, float]] = {}
        self._decode_memo: dict[tuple[str, str], tuple[float, float]] = {}
        self._plan_memo: dict[tuple[Any, ...], tuple[float, float]] = {}

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

    def decoding(self, c: Plan) -> tuple[float, float]:
        """(median ms, excess ms at the quantile) of decoding one batch of c; (0, 0) without a decoder."""
        if c.decoder is None:
            return 0.0, 0.0
        key = (c.decoder_precision, c.decoder)
        if key not in self._decode_memo:
            self._decode_memo[key] = (self._decode_median(*key, self.batch), self._decode_excess(*key, self.batch))
        return self._decode_memo[key]

    def batch_ms(self, precision: str, calls: Sequence[int], decoding: tuple[float, float] = (0.0, 0.0),
                 speed: float = 1.0, tail: float = 0.0, excess_ms: float = 0.0) -> tuple[float, float]:
        """(median ms, predicted ms) of one batch: `calls` (every call's length), the host work per
        batch and a decode of (median, excess); the prediction at the quantile, under the tracked
        speed, tail and excess (tracked_ms; the defaults: as profiled). The one formula."""
        med = sum(self.call(precision, n)[0] for n in calls) + self.sample_ms + decoding[0]
        spread = math.sqrt(sum(self.call(precision, n)[1] ** 2 for n in calls) + decoding[1] ** 2)
        return med, tracked_ms(med, med + spread, speed, tail, excess_ms)

    def median_ms(self, precision: str, lengths: Sequence[int]) -> float:
        """Sampling only: the calls and the host work per batch."""
        return self.batch_ms(precision, lengths)[0]

    def quantile_ms(self, precision: str, lengths: Sequence[int]) -> float:
        return self.batch_ms(precision, lengths)[1]

    def decode(self, c: Plan) -> float:
        return self.decoding(c)[0]

    def median(self, c: Plan) -> float:
        """End to end: sampling, then decoding the batch once."""
        return self._as_profiled(c)[0]

    def candidate(self, c: Plan) -> float:
        """End to end at the quantile: the decode's excess joins the calls' root-sum-square."""
        return self._as_profiled(c)[1]

    def _as_profiled(self, c: Plan) -> tuple[float, float]:
        """batch_ms of c at the profile's speed, once per plan: a server chooses per request (a scan
        of the memo, not a root-sum-square per candidate)."""
        key = (c.precision, tuple(c.lengths), c.decoder, c.decoder_precision)
        if key not in self._plan_memo:
            self._plan_memo[key] = self.batch_ms(c.precision, c.lengths, self.decoding(c))
        return self._plan_memo[key]

    def at(self, c: Plan, speed: float = 1.0, tail: float = 0.0, excess_ms: float = 0.0) -> float:
        """c's prediction at the tracked speed, tail and excess."""
        return self.batch_ms(c.precision, c.lengths, self.decoding(c), speed, tail, excess_ms)[1]


QuantilePredictor = Predictor      # the old name, the same class (callers move to Predictor)


def predict_now(manifest: Bundle, c: Plan, batch: int, stored: dict[str, Any], quantile: float = MEDIAN) -> float:
    """c's prediction from a profile of just its precision's calls and the host work, taken now (no
    per-graph timings), with the stored profile's decoder timings (re-timing a decoder takes
    seconds): next to a run, it separates the cost model's error from the machine's drift."""
    now = profile_bundle(manifest, str(stored.get("backend", "ort")), (batch,), (c.precision,), repeats=20,
                         threads=int(stored.get("threads", 1)), time_graphs=False, decoder_repeats=None)
    if "decoders" in stored:
        now["decoders"] = stored["decoders"]
    return Predictor(now, batch, quantile).candidate(c)
