"""`generate` as a library call: bundle + options -> images and timings (the CLI only parses)."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from typing import Callable

import numpy as np

from odelt.exporter.bundle import load_manifest
from odelt.runtime.backend import check_batch, open_backend
from odelt.runtime.heuristics import resolve_schedule
from odelt.runtime.sampler import Sampler, Stats, generate
from odelt.runtime.schedule import Schedule


@dataclass(frozen=True)
class GenerateOptions:
    schedule: str | None = None        # NAME or FILE (see heuristics.resolve_schedule); None: uniform
    n: int = 16
    batch: int = 8
    seed: int = 0
    cfg_scale: float | None = None
    backend: str = "ort"
    layout: str | None = None          # None: the bundle's default (segments when exported)
    length: int | None = None          # heuristic schedules: None = the longest exported length
    threads: int = 0                   # ONNX Runtime intra-op threads; 0 = its default
    tables: bool = True                # use the bundle's modulation tables when they fit


@dataclass
class GenerateResult:
    images: np.ndarray                 # (n, C, H, W) float32
    stats: Stats
    schedule: Schedule
    peak_rss_mb: float


def generate_from_bundle(bundle: str | os.PathLike, opts: GenerateOptions,
                         progress: Callable[[int], None] | None = None) -> GenerateResult:
    manifest = load_manifest(bundle)
    schedule = resolve_schedule(opts.schedule, opts.length or max(manifest.lengths))
    if opts.length is not None and schedule.method == "heuristic":
        schedule = schedule.with_lengths(opts.length)
    schedule.check_fits(manifest.data["model"].get("source_hash") or None, manifest.lengths, opts.cfg_scale)
    rows = 2 * opts.batch if (opts.cfg_scale not in (None, 1.0) and not manifest.cfg) else opts.batch
    check_batch(manifest, rows, profile_bound=opts.backend == "tensorrt")
    if opts.n < 1:
        from odelt.errors import ConfigError
        raise ConfigError(f"-n must be >= 1, found {opts.n}")
    options = {"layout": opts.layout, "lengths": tuple(sorted(set(schedule.lengths)))}
    if opts.backend == "ort":
        options["threads"] = opts.threads
    with open_backend(opts.backend, manifest, **options) as backend:
        sampler = Sampler(backend, manifest, schedule, opts.cfg_scale, use_tables=opts.tables)
        images, stats = generate(sampler, opts.n, opts.batch, opts.seed, progress)
    return GenerateResult(images, stats, schedule, peak_rss_mb())


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
