"""A FAKE backend on a FAKE clock, for exact deadline tests: no network runs and no real time passes.

`FakeClock` is a number of seconds that only `FakeTimedBackend.infer` advances: a call at length l
takes ms_per_block * l * factor(call index) milliseconds of work and waits stall(call index, work)
milliseconds for the core. `FakeHog` is such a wait: a competitor time-sliced with the sampler,
as a CPU hog pinned to the sampler's core is by the kernel. The velocity it returns depends on the
state and the length, so a switched length changes the images. `FakeSegmentBackend` is the
segments layout: a call runs chunks of 2 blocks (ms_per_block each block, the stall asked per
chunk) and may stop at an exit (every shorter served length), the velocity then being the head on
the chunks' sum so far, each chunk modulated by the call's own length as in the real model (so an
exit at e is not a call at e). `FakeBundle` carries only what the
Sampler reads from a bundle. None of this tests ONNX Runtime; the real backend's timings are
measured in bench/deadline.py.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import numpy as np


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeHog:
    """While on, the competitor takes the core for slice_ms after every run_ms of the sampler's
    work (counted from start()): the stall of a call is slice_ms per run_ms boundary it crosses."""

    def __init__(self, run_ms: float, slice_ms: float):
        self.run_ms, self.slice_ms = run_ms, slice_ms
        self.on, self._ran = False, 0.0

    def start(self) -> None:
        self.on, self._ran = True, 0.0

    def stop(self) -> None:
        self.on = False

    def __call__(self, call: int, ms: float) -> float:
        if not self.on:
            return 0.0
        before, self._ran = self._ran, self._ran + ms
        return self.slice_ms * (int(self._ran // self.run_ms) - int(before // self.run_ms))


class FakeTimedBackend:
    name, layout = "fake", "per-length"

    def __init__(self, clock: FakeClock, lengths=(2, 4, 8), ms_per_block: float = 1.0,
                 factor: Callable[[int], float] = lambda call: 1.0,
                 stall: Callable[[int, float], float] = lambda call, ms: 0.0):
        self.clock, self.lengths, self.ms_per_block, self.factor = clock, tuple(lengths), ms_per_block, factor
        self.stall = stall
        self.calls: list[int] = []          # the length of every call, in order
        self.slow = 1.0                     # a whole-device slowdown a test may set between batches

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def infer(self, feeds):
        length = int(feeds["l"][0])
        ms = self.ms_per_block * length * self.factor(len(self.calls)) * self.slow
        self.clock.now += (ms + self.stall(len(self.calls), ms)) / 1e3
        self.calls.append(length)
        return {"velocity": (0.1 * length) * np.tanh(feeds["x"]) + 0.01}


class FakeSegmentBackend(FakeTimedBackend):
    layout = "segments"

    def __init__(self, clock: FakeClock, lengths=(2, 4, 6, 8), **kw):
        super().__init__(clock, lengths, **kw)
        self.ran: list[int] = []            # the blocks every call really ran, in order

    def exits(self, length: int) -> tuple[int, ...]:
        return tuple(e for e in sorted(self.lengths) if e < length)

    def infer(self, feeds, after_segment=None):
        length = int(feeds["l"][0])
        call, exits = len(self.calls), set(self.exits(length))
        v = np.zeros_like(feeds["x"])
        done = 0
        for done in range(2, length + 1, 2):
            ms = self.ms_per_block * 2 * self.factor(call) * self.slow
            self.clock.now += (ms + self.stall(call, ms)) / 1e3
            v += (0.2 + 0.01 * length) * np.tanh(feeds["x"] + 0.1 * done)
            if done in exits and after_segment is not None and after_segment(done):
                break
        self.calls.append(length)
        self.ran.append(done)
        return {"velocity": v + 0.01}


def fake_bundle(num_classes: int = 10) -> SimpleNamespace:
    cfg = SimpleNamespace(in_channels=1, out_channels=1, input_size=4, num_classes=num_classes)
    return SimpleNamespace(model_hash=None, null_class=num_classes, tables={}, guidance=False, config=cfg)


def synthetic_profile(lengths=(2, 4, 8), step_ms: float = 0.0, sample_ms: float = 0.0, exits: bool = False) -> dict:
    """Batch 1, fp32: a call at length l has 21 samples evenly spaced over [l - 1, l + 1] ms, so
    its median is l and its 0.95-quantile exactly l + 0.9 (numpy's linear interpolation).
    exits: each call also reaches every shorter length's exit at e ms (FakeSegmentBackend)."""
    calls = {str(n): {"median_ms": float(n), "p90_ms": n + 0.8, "p99_ms": n + 0.98,
                      "samples_ms": [n - 1 + 0.1 * i for i in range(21)],
                      **({"exits_ms": {str(e): float(e) for e in lengths if e < n}} if exits else {})}
             for n in lengths}
    return {"calls": {"fp32": {"1": calls}}, "step_overhead_ms": step_ms, "sample_overhead_ms": sample_ms}


class FakeDecoder:
    """A FAKE decoder stage on the fake clock: decoding a batch takes `ms` (times `slow`) and
    returns the samples upsampled 2x, so decoded and latent batches differ in shape."""

    def __init__(self, clock: FakeClock, ms: float):
        self.clock, self.ms, self.slow = clock, ms, 1.0
        self.batches: list[int] = []

    def decode(self, x, batch=None):
        self.clock.now += self.ms * self.slow / 1e3
        self.batches.append(x.shape[0])
        return np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)


def decoder_timings(**median_ms: float) -> dict:
    """A profile's `decoders` section at batch 1, fp32: 21 samples evenly over median +- 1 ms."""
    return {"fp32": {"1": {k: {"median_ms": m, "p90_ms": m + 0.8, "p99_ms": m + 0.98,
                               "samples_ms": [m - 1 + 0.1 * i for i in range(21)]} for k, m in median_ms.items()}}}


def amb_stream(clock, backend, budget_ms: float, control: str = "closed", reads: int | None = None):
    """A Stream over the stream tests' plans A, M, B (4 Euler steps at l8, l4, l2: 32, 16 and 8 ms
    median on the synthetic profile) on a FAKE timed backend. reads: the re-planner reads only the
    first `reads` of (speed, tail, excess_ms) - an older rule replayed beside the current one."""
    from odelt.ode.heuristics import heuristic_schedule
    from odelt.runtime.budget.planner import Candidate
    from odelt.runtime.budget.predict import Predictor
    from odelt.runtime.budget.stream import Stream
    from odelt.runtime.budget.tracker import Replanner
    from odelt.runtime.sampler import Sampler

    plans = [Candidate("a-4xl8", "a", "euler", (8, 8, 8, 8), "fp32", error=0.1),
             Candidate("m-4xl4", "m", "euler", (4, 4, 4, 4), "fp32", error=0.15),
             Candidate("b-4xl2", "b", "euler", (2, 2, 2, 2), "fp32", error=0.2)]
    schedules = {c.schedule: heuristic_schedule("uniform", "euler", 4, c.lengths[0]) for c in plans}
    rp = Replanner(plans, Predictor(synthetic_profile(), 1, 0.95), budget_ms=budget_ms)
    if reads is not None:
        choose = rp.choose
        rp.choose = lambda speed=1.0, tail=0.0, excess_ms=0.0, run_ms=0.0: choose(*(speed, tail, excess_ms)[:reads])
    return Stream(rp, lambda c: Sampler(backend, fake_bundle(), schedules[c.schedule], clock=clock), control,
                  exported=(2, 4, 8), clock=clock)


def run_batches(stream, hog, on: int, off: int, batches: int = 40, at=None):
    """`batches` batches of one 4x4 image through `stream`, the FAKE hog running from batch `on` up
    to `off`; at: {batch: callable} run just before that batch (a stray stall, say)."""
    import numpy as np

    x0, y = np.zeros((1, 1, 4, 4), np.float32), np.zeros(1, np.int32)
    for i in range(batches):
        if i == on:
            hog.start()
        if i == off:
            hog.stop()
        if at and i in at:
            at[i]()
        stream.run(x0, y)
    return stream.stats

