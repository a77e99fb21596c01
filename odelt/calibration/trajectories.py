"""Real ODE trajectories through a bundle, and a recording of what each graph sees along them.

Calibration data for W8A8 DiTs must cover every time step (activation ranges move with t: research
notes deploy.md §8), so we do not sample random (x, t) pairs: we integrate the ODE from noise with the
target schedules, at every length the bundle offers, through the bundle's own FP32 graphs (the
runtime's Sampler over `odelt.bundle.chain.run_chain`), and keep a copy of every graph's inputs at
every model call. The same loop, run once with FP32 graphs and once with a precision variant from
the same noise, gives the accuracy guard its final samples.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from odelt.errors import ConfigError
from odelt.bundle.bundle import Bundle
from odelt.bundle.chain import RunGraph
from odelt.bundle.iospec import GraphSpec
from odelt.runtime.backends.graphs import ChainBackend
from odelt.runtime.sampler import Sampler
from odelt.ode.schedule import Schedule
from odelt.ode.seeds import make_labels, make_noise

GraphPath = Callable[[GraphSpec], Path]


def resolve_schedule(name: str, manifest: Bundle) -> Schedule:
    """`--calib-schedule NAME|FILE`, resolved as the runtime resolves `--schedule`."""
    from odelt.ode.heuristics import resolve_schedule as runtime_resolve

    sched = runtime_resolve(name, manifest.lengths[-1])
    sched.check_fits(None, manifest.lengths)   # the runtime checks the model hash when it samples
    return sched


def per_length(schedules: list[Schedule], manifest: Bundle) -> list[Schedule]:
    """Each schedule at every bundle length (calibration must see every length), and as written when
    it mixes lengths per step."""
    out = []
    for s in schedules:
        out += [s.with_lengths(n) for n in manifest.lengths]
        if len(set(s.lengths)) > 1:
            out.append(s)
    return out


class OrtGraphs:
    """run_graph for run_chain: one ONNX Runtime CPU session per graph file, created on first use."""

    def __init__(self, manifest: Bundle, path_of: GraphPath | None = None, threads: int = 1):
        self.manifest = manifest
        self.path_of = path_of or (lambda spec: manifest.graph_path(spec.name))
        self.threads = threads
        self._sessions: dict[str, object] = {}

    def session(self, spec: GraphSpec):
        from odelt.onnxrt import open_session

        if spec.name not in self._sessions:
            self._sessions[spec.name] = open_session(self.path_of(spec), threads=self.threads)
        return self._sessions[spec.name]

    def __call__(self, spec: GraphSpec, feeds: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        sess = self.session(spec)
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feeds)))


class Recorder:
    """Wraps a run_graph and keeps a copy of every feed, per graph name."""

    def __init__(self, run_graph: Callable[[GraphSpec, dict], Mapping[str, np.ndarray]]):
        self.run_graph = run_graph
        self.feeds: dict[str, list[dict[str, np.ndarray]]] = defaultdict(list)

    def __call__(self, spec: GraphSpec, feeds: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        self.feeds[spec.name].append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self.run_graph(spec, feeds)


@dataclass(frozen=True)
class Noise:
    """The shared starting point of FP32 and quantised runs: x0 and labels (and guidance scale)."""

    x0: np.ndarray             # (B, C, H, W) float32
    y: np.ndarray              # (B,) int32
    guidance_scale: float = 1.5

    @classmethod
    def draw(cls, manifest: Bundle, samples: int, seed: int) -> Noise:
        if samples < 1:
            raise ConfigError(f"calibration needs at least 1 sample, found {samples}")
        cfg = manifest.config
        x0 = make_noise(seed, samples, (cfg.in_channels, cfg.input_size, cfg.input_size))
        return cls(x0, make_labels(samples, cfg.num_classes))


def sample(manifest: Bundle, run_graph: RunGraph, schedule: Schedule, noise: Noise,
           layout: str | None = None) -> np.ndarray:
    """Integrate one schedule (its per-step lengths) from `noise.x0` with the runtime's Sampler (no
    modulation tables: every graph is seen); final samples (B, C, H, W), non-finite ones kept."""
    scale = noise.guidance_scale if manifest.guidance else None      # guidance only where folded into the graphs
    sampler = Sampler(ChainBackend(manifest, run_graph, layout), manifest, schedule, scale, use_tables=False,
                      check_finite=False)
    return sampler.sample(noise.x0, noise.y)[0]


def schedule_key(s: Schedule) -> str:
    lengths = sorted(set(s.lengths))
    return f"{s.name or s.solver}@l={lengths[0] if len(lengths) == 1 else 'mixed'}"


def trajectories(manifest: Bundle, run_graph: RunGraph, schedules: list[Schedule], noise: Noise,
                 layout: str | None = None) -> dict[str, np.ndarray]:
    """Final samples for every schedule (already expanded per length), keyed by schedule_key."""
    return {schedule_key(s): sample(manifest, run_graph, s, noise, layout) for s in schedules}


def record_feeds(manifest: Bundle, schedules: list[Schedule], noise: Noise,
                 batch: int = 16) -> dict[str, list[dict[str, np.ndarray]]]:
    """Every FP32 graph's inputs along every trajectory of every layout, in batches of <= `batch`."""
    recorder = Recorder(OrtGraphs(manifest))
    for start in range(0, noise.x0.shape[0], batch):
        part = Noise(noise.x0[start:start + batch], noise.y[start:start + batch], noise.guidance_scale)
        for layout in manifest.layouts:
            trajectories(manifest, recorder, schedules, part, layout)
    return dict(recorder.feeds)
