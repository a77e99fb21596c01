"""A stream of batches under one latency budget: open loop, closed loop, closed loop + anytime.

    open     the plan chosen once from the stored profile, run as is (what `generate` did before);
    closed   every batch is measured; a SpeedTracker follows the device's speed relative to its
             profile and a Replanner re-chooses the plan between batches (odelt.runtime.budget.tracker);
    anytime  closed, and each batch's steps are shortened when it runs late (odelt.runtime.budget.anytime).

A batch's latency is its whole wall time in the stream, from taking the batch to its images
(Sampler.sample, decoding the batch when its plan decodes — a latent bundle's plans:
odelt.runtime.budget.plans — and the stream's look-ups); that end-to-end time is what the budget bounds,
and a miss is a batch over the budget. The decoded images are kept in `Stream.images`. Re-planning
cost (tracker + choice) is timed on every batch. Everything a batch did is one `BatchRecord`;
`to_json` is one line of `generate --log FILE`.
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from odelt.errors import ConfigError
from odelt.bundle.bundle import Bundle
from odelt.runtime.budget.anytime import Deadline, LengthProfile, learned_profiles
from odelt.runtime.backends import open_backend
from odelt.runtime.budget.axes import ByBackend, across_backends, predictor_of
from odelt.runtime.budget.planner import Candidate
from odelt.runtime.budget.plans import load_candidates, load_plan_schedule
from odelt.runtime.budget.profile import load_profile
from odelt.runtime.budget.predict import DEFAULT_QUANTILE, Predictor
from odelt.runtime.sampler import Sampler, Stats, generate_batches, make_labels
from odelt.ode.solvers import SOLVER_INFO
from odelt.runtime.budget.tracker import Planned, Replanner, SpeedTracker

CONTROLS = ("open", "closed", "anytime")


@dataclass(frozen=True)
class BatchRecord:
    index: int
    plan: str
    latency_ms: float
    budget_ms: float
    predicted_ms: float            # the plan's prediction when chosen (at the speed and tail then tracked)
    speed: float                   # the tracker's estimate after this batch (1: as profiled)
    tail: float                    # and its observed tail (second-largest ratio in its window)
    tail_excess_ms: float          # and excess (second-largest ms over the prediction in its window)
    excess_ms: float               # this batch's ms over the profile's median prediction of what it ran
    replanned_to: str | None       # the plan the next batch runs, when it changed
    replan_us: float               # tracker + re-planning, microseconds
    lengths: tuple[int, ...]       # every step's length as run
    switches: tuple[Any, ...] = ()
    exits: tuple[Any, ...] = ()    # steps stopped at an exit inside their call (anytime.Exit)
    cause: str = "none"            # the tracker's reading after this batch: none | wait | slowdown | both
    run_ms: float | None = None    # and the competitor's run between waits (None: no waits being read)
    finishes: tuple[Any, ...] = () # steps merged / the batch finished early (anytime.Finish)

    @property
    def missed(self) -> bool:
        return self.latency_ms > self.budget_ms

    def to_json(self) -> dict[str, Any]:
        return {"batch": self.index, "plan": self.plan, "latency_ms": round(self.latency_ms, 4),
                "budget_ms": self.budget_ms, "missed": self.missed, "predicted_ms": round(self.predicted_ms, 4),
                "speed": round(self.speed, 4), "tail": round(self.tail, 4),
                "tail_excess_ms": round(self.tail_excess_ms, 4), "excess_ms": round(self.excess_ms, 4),
                "replanned_to": self.replanned_to,
                "replan_us": round(self.replan_us, 2), "lengths": list(self.lengths),
                "switches": [s.to_dict() for s in self.switches], "exits": [e.to_dict() for e in self.exits],
                "cause": self.cause, "run_ms": None if self.run_ms is None else round(self.run_ms, 4),
                "finishes": [f.to_dict() for f in self.finishes]}


@dataclass
class StreamStats:
    control: str
    records: list[BatchRecord] = field(default_factory=list)

    @property
    def misses(self) -> int:
        return sum(r.missed for r in self.records)

    @property
    def replans(self) -> int:
        return sum(r.replanned_to is not None for r in self.records)

    @property
    def switches(self) -> int:
        return sum(len(r.switches) for r in self.records)

    @property
    def exits(self) -> int:
        return sum(len(r.exits) for r in self.records)

    @property
    def finishes(self) -> int:
        return sum(len(r.finishes) for r in self.records)

    def summary(self) -> str:
        n = len(self.records)
        us = float(np.median([r.replan_us for r in self.records])) if n else 0.0
        return (f"deadline ({self.control}): {self.misses}/{n} batches missed the budget, {self.replans} re-plans, "
                f"{self.switches} length switches, {self.exits} exits inside a step, "
                f"{self.finishes} early finishes; tracker + re-planning {us:.1f} us per batch (median)"
                + self._exit_list() + self._finish_list())

    def _exit_list(self, most: int = 5) -> str:
        """Where steps stopped inside their call: 'batch 12 step 0 at exit 2 of 8', the first few."""
        where = [f"batch {r.index} step {e.step} at exit {e.exit} of {e.length}" for r in self.records for e in r.exits]
        more = f", +{len(where) - most} more" if len(where) > most else ""
        return f"\n  exits inside a step: {', '.join(where[:most])}{more}" if where else ""


    def _finish_list(self, most: int = 5) -> str:
        """Where batches merged steps or finished: 'batch 5 step 0: finished (1 step dropped)'."""
        where = [f"batch {r.index} step {f.step}: " + (f"merged into {len(f.starts)}" if f.starts else "finished")
                 + f" ({f.dropped} step{'s' if f.dropped != 1 else ''} dropped)" for r in self.records for f in r.finishes]
        more = f", +{len(where) - most} more" if len(where) > most else ""
        return f"\n  early finishes: {', '.join(where[:most])}{more}" if where else ""


class Stream:
    """Runs batch after batch; `make_sampler(candidate)` opens (or reuses) a plan's sampler."""

    def __init__(self, replanner: Replanner, make_sampler: Callable[[Candidate], Sampler], control: str = "anytime",
                 exported: Sequence[int] = (), profiles: Sequence[LengthProfile] = (), window: int = 10,
                 clock: Callable[[], float] = time.perf_counter, horizon_ms: float = 10.0,
                 decoder: Callable[[Candidate], Any] | None = None, finish: bool = True):
        """finish: anytime control may merge the remaining steps or finish a batch early when even
        the shortest lengths cannot end it by the budget (odelt.runtime.budget.anytime)."""
        if control not in CONTROLS:
            raise ConfigError(f"--control must be one of {list(CONTROLS)}, found {control!r}")
        self.replanner, self.predictor = replanner, replanner.predictor
        self.control, self.clock, self.finish = control, clock, finish
        self.tracker = SpeedTracker(window, horizon_ms)
        self.exported, self.profiles = tuple(exported), tuple(profiles)
        self._make = make_sampler
        self._decoder = decoder            # plan -> an open decoder (odelt.runtime.backends.decoder) for its (kind, precision)
        self.images: list[np.ndarray] = []  # each decoded batch, in order
        self.decode_s = 0.0                # time spent decoding them
        self._samplers: dict[str, Sampler] = {}
        self._deadlines: dict[str, Deadline | None] = {}
        self._warm: set[tuple[str, int]] = set()
        self.current: Planned = replanner.first()
        self.chosen_ms = self.current.quantile_ms      # the current plan's prediction when chosen
        self.stats = StreamStats(control)

    def sampler(self, c: Candidate) -> Sampler:
        if c.name not in self._samplers:
            self._samplers[c.name] = self._make(c)
        return self._samplers[c.name]

    def deadline(self, c: Candidate) -> Deadline | None:
        if self.control != "anytime":
            return None
        if c.name not in self._deadlines:
            sampler = self.sampler(c)
            s = sampler.schedule
            if not SOLVER_INFO[s.solver].calls_per_step:       # adaptive steps have no timeline
                return None
            self._deadlines[c.name] = Deadline(s, c.precision, predictor_of(self.predictor, c), self.replanner.budget_ms,
                                               self.exported or s.lengths, self.profiles,
                                               self.predictor.decoding(c) if self.decodes(c) else (0.0, 0.0),
                                               getattr(sampler, "exits", None), self.finish)
        return self._deadlines[c.name]

    def decodes(self, c: Candidate) -> bool:
        return c.decoder is not None and self._decoder is not None

    def run(self, x0: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, Stats]:
        """One batch under the budget (sampling, then decoding when the plan decodes); appends its
        BatchRecord to self.stats and its decoded images to self.images. Returns the samples."""
        taken = self.clock()
        c, predicted = self.current.candidate, self.chosen_ms
        sampler = self.sampler(c)
        control = self.deadline(c)
        if control is not None:
            # a competitor's waits the plan already absorbs are expected lateness: steps are then
            # dropped only when even the profiled speed cannot end them (odelt.runtime.budget.anytime)
            control.drop_at_profile = self.tracker.waiting and self.tracker.cause in ("wait", "both")
        samples, st = sampler.sample(x0, y, control)
        if self._decoder is not None and self.decodes(c):
            began = self.clock()
            self.images.append(self._decoder(c).decode(samples, x0.shape[0]))
            self.decode_s += self.clock() - began
        start = self.clock()
        latency = (start - taken) * 1e3
        at = predictor_of(self.predictor, c)
        decoding = at.decoding(c) if self.decodes(c) else (0.0, 0.0)
        ran, ran_q = at.batch_ms(c.precision, sampler.schedule.call_lengths(st.lengths), decoding)
        replanned = None
        if self.control != "open":
            speed = self.tracker.observe(latency, ran, ran_q - ran)
            tracked = (speed, self.tracker.tail, self.tracker.excess_ms, self.tracker.run_ms)
            nxt = self.replanner.choose(*tracked)
            if nxt.candidate != c:
                self.current, replanned = nxt, nxt.candidate.name
                self.chosen_ms = nxt.at(*tracked)
        cost_us = (self.clock() - start) * 1e6
        self.stats.records.append(BatchRecord(len(self.stats.records), c.name, latency, self.replanner.budget_ms,
                                              predicted, self.tracker.speed, self.tracker.tail, self.tracker.excess_ms,
                                              latency - ran, replanned, cost_us, st.lengths, st.switches,
                                              st.exits, self.tracker.cause,
                                              self.tracker.run_ms if math.isfinite(self.tracker.run_ms) else None,
                                              st.finishes))
        if replanned is not None:
            self.warm(x0.shape[0])
        return samples, st

    def warm(self, batch: int) -> None:
        """Bind the current plan's buffers before its first timed batch (outside any batch's time)."""
        key = (self.current.candidate.name, batch)
        if key in self._warm:
            return
        c = self.current.candidate
        s = self.sampler(c)
        cfg = s.manifest.config
        x, _ = s.sample(np.zeros((batch, cfg.in_channels, cfg.input_size, cfg.input_size), np.float32),
                        make_labels(batch, cfg.num_classes))
        if self._decoder is not None and c.decoder is not None:
            self._decoder(c).decode(x, batch)
        self._warm.add(key)


def stream_for_bundle(manifest: Bundle, stack: ExitStack, budget_ms: float, batch: int,
                      quantile: float = DEFAULT_QUANTILE, control: str = "anytime", backend: str = "ort",
                      threads: int = 1, layout: str | None = None, guidance_scale: float | None = None,
                      tables: bool = True, profile: dict[str, Any] | None = None, decode: bool = True,
                      decoders: Sequence[str] | None = None,
                      profiles: dict[str, dict[str, Any]] | None = None, finish: bool = True) -> Stream:
    """A Stream over the bundle's quality table and this device's profile; backends (one per
    precision, every exported length) and decoders (one per kind and precision) are opened on
    `stack` when a plan first needs them. A latent bundle's plans decode unless `decode` is False;
    `decoders` limits the decoder kinds the planner may choose. `profiles` ({backend: profile}, several
    backends: odelt.runtime.budget.axes) plans across backends; each plan runs on the backend it names."""
    if profiles is None:
        profiles = {backend: profile if profile is not None else load_profile(manifest, backend=backend)}
    candidates = across_backends(load_candidates(manifest, decode=None if decode else False, decoders=decoders),
                                 profiles, manifest)
    predictor = ByBackend({b: Predictor(p, batch, quantile) for b, p in profiles.items()})
    replanner = Replanner(candidates, predictor, budget_ms)  # type: ignore[arg-type]
    schedules = {c.schedule: load_plan_schedule(manifest, c) for c in candidates}
    backends: dict[tuple[str, str], Any] = {}
    opened: dict[tuple[str, str, str], Any] = {}

    def make(c: Candidate) -> Sampler:
        key = (c.backend, c.precision)
        if key not in backends:
            options: dict[str, Any] = {"layout": layout, "lengths": tuple(manifest.lengths), "precision": c.precision,
                       **({"threads": threads} if c.backend in ("ort", "openvino") else {})}
            backends[key] = stack.enter_context(open_backend(c.backend, manifest, **options))
        return Sampler(backends[key], manifest, schedules[c.schedule], guidance_scale, use_tables=tables)

    def decoder(c: Candidate) -> Any:
        from odelt.runtime.backends.decoder import open_decoder

        key = (str(c.decoder), c.decoder_precision, c.backend)
        if key not in opened:
            opened[key] = stack.enter_context(open_decoder(manifest, c.decoder, c.decoder_precision, threads,
                                                           backend=c.backend))
        return opened[key]

    return Stream(replanner, make, control, manifest.lengths, learned_profiles(list(schedules.values())),
                  decoder=decoder if any(c.decoder for c in candidates) else None, finish=finish)


def generate_stream(stream: Stream, manifest: Bundle, n: int, batch: int, seed: int = 0,
                    progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, Stats]:
    """n images in batches through the stream (as sampler.generate does for one sampler)."""
    stream.warm(min(batch, n))
    return generate_batches(stream.run, manifest, n, batch, seed, progress)
