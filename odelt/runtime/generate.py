"""`generate` as a library call: bundle + options -> images and timings (the CLI only parses)."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from odelt import validate
from odelt.errors import ConfigError
from odelt.bundle.bundle import Bundle, open_bundle
from odelt.runtime.backends import backend_class, check_batch, open_backend
from odelt.ode.heuristics import resolve_schedule
from odelt.runtime.budget.planner import Choice, prediction_record
from odelt.runtime.budget.axes import load_profiles
from odelt.runtime.budget.profile import check_plan_batch
from odelt.runtime.sampler import Sampler, Stats, generate, guidance_rows
from odelt.ode.schedule import Schedule
from odelt.runtime.budget.stream import StreamStats


@dataclass(frozen=True)
class GenerateOptions:
    schedule: str | None = None        # NAME or FILE (see heuristics.resolve_schedule); None: uniform
    n: int = 16
    batch: int = 8
    seed: int = 0
    guidance_scale: float | None = None
    backend: str = "ort"
    layout: str | None = None          # None: the bundle's default (segments when exported)
    length: int | None = None          # heuristic schedules: None = the longest exported length
    threads: int = 0                   # ONNX Runtime intra-op threads; 0 = its default
    tables: bool = True                # use the bundle's modulation tables when they fit
    precision: str = "fp32"            # a precision variant the bundle has (odelt-export quantize)
    budget_ms: float | None = None     # choose (schedule, precision) by the planner instead
    extrapolate: bool = False          # with budget_ms: allow a batch outside the profiled ones
    quantile: float = 0.95             # with a budget: plans must fit at this latency quantile
    control: str = "anytime"           # with a budget: open | closed | anytime (odelt.runtime.budget.stream)
    early_finish: bool = True          # anytime: merge steps / finish early when even the shortest lengths are late
    decode: bool = True                # latent bundles: run the decoder stage (False: keep the latents)
    decoder: str | None = None         # decoder kind when the bundle has several; None: Bundle.decoder()
    plan_backends: tuple[str, ...] | None = None   # with a budget: backends to plan across; None: every
                                                   # backend with a profile on this device

    def __post_init__(self) -> None:
        validate.count("-n", self.n, 1, validate.MAX_SAMPLES)
        validate.count("--batch", self.batch)
        validate.count("--seed", self.seed, 0)
        validate.threads("--threads", self.threads)
        if self.guidance_scale is not None:
            validate.number("--guidance-scale", self.guidance_scale)
        if self.length is not None:
            validate.count("--length", self.length)
        if self.budget_ms is not None:
            validate.positive("--budget-ms", self.budget_ms)
            validate.quantile("--quantile", self.quantile)
            if self.schedule is not None:
                raise ConfigError(f"--budget-ms lets the planner choose the schedule: expected --schedule or "
                                  f"--budget-ms, found both (--schedule {self.schedule})")
        if self.decoder is not None and not self.decode:
            raise ConfigError(f"--latents skips the decoder: expected --decoder or --latents, found both "
                              f"(--decoder {self.decoder})")


@dataclass
class GenerateResult:
    images: np.ndarray                 # (n, C, H, W) float32: decoded images of a latent bundle (not
                                       # clamped), else the samples themselves
    stats: Stats
    schedule: Schedule
    peak_rss_mb: float
    plan: Choice | None = None         # the planner's choice when a budget was given (the first batch's)
    stream: StreamStats | None = None  # with a budget: every batch's latency, plan and switches
    latents: np.ndarray | None = None  # latent bundles: the sampler's output the images were decoded from
    decoded: DecodeStats | None = None  # latent bundles, when decoded: which decoder and its time
    log: list[dict] | None = None      # with a budget: one JSON object per batch (`generate --log`)


@dataclass(frozen=True)
class DecodeStats:
    kind: str                          # "sd" | "taesd"
    precision: str
    seconds: float                     # time inside the decoder's calls


def check_decoder(manifest: Bundle, opts: GenerateOptions) -> None:
    """Before any sampling: a --decoder the bundle lacks fails in one line."""
    if opts.decoder is not None:
        manifest.decoder(opts.decoder)


def check_applies(manifest: Bundle, opts: GenerateOptions) -> None:
    """Options that cannot apply to this bundle are errors, not no-ops."""
    if not opts.decode and not manifest.decoders:
        raise ConfigError(f"--latents: expected a latent bundle (with a decoder stage), found the pixel-space "
                          f"bundle {manifest.root}")
    if opts.budget_ms is not None and opts.precision != "fp32":
        have = "" if opts.precision in manifest.precisions else f"; this bundle has no {opts.precision} variant"
        raise ConfigError(f"--precision {opts.precision}: the plan under --budget-ms chooses the precision "
                          f"(from {list(manifest.precisions)}); expected no --precision with --budget-ms{have}")


def decode_result(manifest: Bundle, res: GenerateResult, opts: GenerateOptions) -> GenerateResult:
    """Decode a latent bundle's samples (its decoder graph at the run's precision) unless --latents."""
    if not manifest.decoders or not opts.decode:
        return res
    from odelt.runtime.backends.decoder import open_decoder

    with open_decoder(manifest, opts.decoder, opts.precision, opts.threads, backend=opts.backend) as dec:
        images = dec.decode(res.images, opts.batch)
    res.latents, res.images = res.images, images
    # the decoder's own precision: an int8 run decodes in FP16 or FP32, never INT8
    res.decoded = DecodeStats(dec.kind, manifest.decoder_dtype(dec.kind, opts.precision), dec.seconds)
    res.peak_rss_mb = peak_rss_mb()
    return res


def generate_from_bundle(bundle: str | os.PathLike, opts: GenerateOptions,
                         progress: Callable[[int], None] | None = None) -> GenerateResult:
    manifest = open_bundle(bundle)
    validate.bundle_batch("--batch", opts.batch, manifest.batch)
    check_decoder(manifest, opts)
    check_applies(manifest, opts)
    if opts.budget_ms is not None:           # the plans decode each batch themselves (within the budget)
        return generate_budgeted(manifest, opts, progress)
    schedule = resolve_schedule(opts.schedule, opts.length or max(manifest.lengths))
    if opts.length is not None and schedule.method == "heuristic":
        schedule = schedule.with_lengths(opts.length)
    schedule.check_fits(manifest.model_hash, manifest.lengths, opts.guidance_scale)
    check_batch(manifest, guidance_rows(manifest, opts.batch, opts.guidance_scale),
                profile_bound=backend_class(opts.backend).batch_bound)
    with open_backend(opts.backend, manifest, layout=opts.layout, lengths=tuple(sorted(set(schedule.lengths))),
                      precision=opts.precision, threads=opts.threads) as backend:
        sampler = Sampler(backend, manifest, schedule, opts.guidance_scale, use_tables=opts.tables)
        images, stats = generate(sampler, opts.n, opts.batch, opts.seed, progress)
    return decode_result(manifest, GenerateResult(images, stats, schedule, peak_rss_mb()), opts)


def generate_budgeted(manifest: Bundle, opts: GenerateOptions,
                      progress: Callable[[int], None] | None = None) -> GenerateResult:
    """Batches under opts.budget_ms through a Stream: the plan re-chosen between batches as the
    device's speed moves, steps shortened inside a batch that runs late (opts.control)."""
    from contextlib import ExitStack

    from odelt.runtime.budget.stream import generate_stream, stream_for_bundle

    rows = guidance_rows(manifest, opts.batch, opts.guidance_scale)
    profiles = load_profiles(manifest, opts.plan_backends)
    for name, prof in profiles.items():
        check_batch(manifest, rows, profile_bound=backend_class(name).batch_bound)
        check_plan_batch(manifest, prof, opts.batch, opts.extrapolate)
    threads = opts.threads or next(iter(profiles.values())).get("threads", 1)
    with ExitStack() as stack:
        stream = stream_for_bundle(manifest, stack, float(opts.budget_ms or 0), opts.batch, opts.quantile,
                                   opts.control, opts.backend, threads, opts.layout,
                                   opts.guidance_scale, opts.tables, decode=opts.decode,
                                   decoders=None if opts.decoder is None else (opts.decoder,), profiles=profiles,
                                   finish=opts.early_finish)
        first = stream.current
        latents, stats = generate_stream(stream, manifest, opts.n, opts.batch, opts.seed, progress)
        schedule = stream.sampler(first.candidate).schedule
        decoded = _stream_decoded(manifest, stream)
    res = GenerateResult(latents, stats, schedule, peak_rss_mb(), stream.replanner.choice, stream.stats,
                         log=log_records(stream))
    if decoded is not None:
        res.latents, res.images, res.decoded = latents, np.concatenate(stream.images), decoded
    return res


def log_records(stream: Any) -> list[dict]:
    """Every batch of a stream as one JSON object: its record (latency, plan, switches, ...) and its
    plan's prediction in the keys `plan --json` prints (planner.prediction_record), the predicted
    ms being the one the batch ran under (at the tracked speed in closed loops)."""
    plans = {p.candidate.name: p.candidate for p in stream.replanner.by_quality}
    return [{**r.to_json(), **prediction_record(plans[r.plan], r.predicted_ms, stream.predictor)}
            for r in stream.stats.records]


def _stream_decoded(manifest: Bundle, stream) -> DecodeStats | None:
    """What decoded a stream's batches: its plans' decoders ("sd", or "sd+taesd" when the planner
    switched), their precisions ("fp16+fp32" when it switched) and the time inside them."""
    used = [p for p in stream.replanner.by_quality if p.candidate.name in {r.plan for r in stream.stats.records}]
    kinds = sorted({f"{p.candidate.decoder}" for p in used if p.candidate.decoder})
    if not stream.images or not kinds:
        return None
    precisions = sorted({manifest.decoder_dtype(p.candidate.decoder, p.candidate.decoder_precision)
                         for p in used if p.candidate.decoder})
    return DecodeStats("+".join(kinds), "+".join(precisions), stream.decode_s)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
