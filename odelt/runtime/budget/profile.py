"""On-device profiles: what every graph and every length's chain costs here, for the planner.

`profile/<device-id>.json` inside a bundle::

    {"format": "odelt-profile/1", "device_id": str, "device": {...}, "backend": "ort",
     "repeats": int, "step_overhead_ms": float, "sample_overhead_ms": float,
     "calls":  {precision: {str(batch): {str(length): {"median_ms", "p90_ms", "p99_ms", "samples_ms",
                                                        "exits_ms": {str(exit): median_ms}}}}},
     "graphs": {precision: {str(batch): {graph: {"median_ms", "p90_ms", "p99_ms", "samples_ms"}}}},
     "decoders": {precision: {str(batch): {kind: {"median_ms", "p90_ms", "p99_ms", "samples_ms"}}}}}

`calls` times one network call (the backend's whole chain for a length, buffers bound), which
is what a solver step pays; `graphs` times each graph alone (a fresh ONNX Runtime session on
random inputs) to show where that time goes. `decoders` (latent bundles only) times each decoder
stage's graph on a whole batch of latents, at every precision the bundle has that graph in: a
cost paid once per batch, after the last step. It is timed apart from `graphs` (and with fewer
repeats: a full SD-VAE decode takes seconds on a CPU), and the decoder kinds take turns. `step_overhead_ms` and `sample_overhead_ms` are the
runtime's host work per call and per batch (measured with the real sampler on this backend),
which the planner adds to the calls. `exits_ms` (segments layout, backends that can stop a call at
an exit) is the median time from a call's start to the end of each chunk that completes a shorter
length, timed inside the same calls: the timeline anytime control checks inside a step. Profiles
without it are still read (exit_cost falls back on the exit's own call).
"""

from __future__ import annotations

import math
import os
import platform
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from odelt import validate
from odelt.errors import ConfigError
from odelt.bundle.bundle import Bundle
from odelt.bundle.iospec import DECODER_LAYOUT
from odelt.fileio import read_json, write_json_atomic
from odelt.runtime.backends import backend_class, open_backend
from odelt.onnxrt import open_session

FORMAT = "odelt-profile/1"
DECODER_REPEATS = 5          # decodes per measurement: seconds each for an SD-VAE on a CPU


def device_description(backend: str) -> dict[str, Any]:
    desc: dict[str, Any] = {"machine": platform.machine(), "system": platform.system(),
                            "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "backend": backend}
    desc.update(backend_class(backend).describe())
    tegra = Path("/etc/nv_tegra_release")
    if tegra.is_file():
        desc["jetson"] = tegra.read_text().splitlines()[0].strip()
    return desc


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown-cpu"


def device_id(desc: dict[str, Any]) -> str:
    """A file-name-safe id: what the timings depend on (processor, cores, backend)."""
    raw = f"{desc['cpu']}-{desc['cpu_count']}c-{desc['backend']}"
    return re.sub(r"[^A-Za-z0-9]+", "-", raw).strip("-").lower()


def _summary(times: list[float]) -> dict[str, Any]:
    """Median, p90, p99 and the samples themselves (for any other quantile: odelt.runtime.budget.predict)."""
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)),
            "p99_ms": float(np.percentile(times, 99)), "samples_ms": [round(t, 5) for t in times]}


def _timed(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> dict[str, float]:
    return _timed_round_robin({"_": fn}, repeats, warmup)["_"]


def _timed_round_robin(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 3,
                       burst: int = 1) -> dict[str, dict]:
    """Time several functions taking turns, so that a burst of load on a shared machine lands on
    all of them alike rather than on whichever was being timed at that moment. Each turn runs
    `burst` consecutive calls: a sampler calls one length several times in a row, with its weights
    warm in cache, and single alternating calls overestimated that (by 15-29% on the digits model)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(1, repeats // burst)):
        for key, fn in fns.items():
            for _ in range(burst):
                start = time.perf_counter()
                fn()
                times[key].append((time.perf_counter() - start) * 1e3)
    return {k: _summary(v) for k, v in times.items()}


def step_feeds(manifest: Bundle, length: int, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of one network call at `length` (what a solver step feeds the backend)."""
    cfg = manifest.config
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.standard_normal((batch, cfg.in_channels, cfg.input_size, cfg.input_size)).astype(np.float32),
             "t": rng.random(batch).astype(np.float32), "dt_base": np.full(batch, 2, np.int32),
             "y": np.arange(batch, dtype=np.int32) % (cfg.num_classes + 1),
             "l": np.full(batch, length, np.int32)}
    if manifest.guidance:
        feeds["cfg_scale"] = np.full(batch, 1.5, np.float32)
    return feeds


def _graph_feeds(spec: Any, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for t in spec.inputs:
        shape = t.resolve(batch)
        if t.dtype == "float32":
            feeds[t.name] = rng.standard_normal(shape).astype(np.float32)
        else:  # labels, levels, lengths: small valid integers
            feeds[t.name] = np.ones(shape, dtype=t.dtype)
    return feeds


def profile_graphs(manifest: Bundle, precision: str, batch: int, repeats: int) -> dict[str, dict]:
    """Each graph of the velocity alone (the decoder stage is profile_decoders')."""
    rng = np.random.default_rng(0)
    out = {}
    for name, spec in sorted(manifest.graphs.items()):
        if spec.layout == DECODER_LAYOUT:
            continue
        sess = open_session(manifest.graph_path(name, precision), threads=1)
        feeds = _graph_feeds(spec, batch, rng)
        out[name] = _timed(lambda: sess.run(None, feeds), repeats)
    return out


def decoder_precisions(manifest: Bundle, kind: str) -> tuple[str, ...]:
    """The bundle precisions whose decoder `kind` is a graph of its own: FP32 always, and one
    variant whose decoder runs in FP16 (Bundle.decoder_dtype, recorded by quantize): the fp16
    variant's when it has one, else the first other (an int8 "trt" variant's)."""
    converted = [p for p in manifest.precisions[1:] if manifest.decoder_dtype(kind, p) != "fp32"]
    return ("fp32", *(["fp16"] if "fp16" in converted else converted[:1]))


def decoder_precision_for(manifest: Bundle, kind: str, precision: str) -> str:
    """Which of decoder_precisions stands for the decoder a run at `precision` opens: its own
    entry, FP32 when that variant decodes in FP32, else the FP16 one."""
    have = decoder_precisions(manifest, kind)
    if precision in have:
        return precision
    return "fp32" if manifest.decoder_dtype(kind, precision) == "fp32" else have[-1]


def profile_decoders(manifest: Bundle, precisions: Iterable[str], batches: Iterable[int], repeats: int,
                     threads: int = 1, backend: str = "ort") -> dict[str, dict]:
    """{precision: {str(batch): {kind: timing}}}: one decode of a whole batch per sample, through
    the decoder generation opens on `backend` (odelt.runtime.backends.decoder.open_decoder: an ORT
    engine when built; OpenVINO's compiled decoder when its set at that precision holds one), the
    kinds of one (precision, batch) taking turns; {} for a pixel-space bundle. Each timing names
    the runtime that decoded ("decoder_backend", and the OpenVINO "engine_set")."""
    from contextlib import ExitStack

    from odelt.runtime.backends.decoder import open_decoder

    rng = np.random.default_rng(0)
    out: dict[str, dict] = {}
    for precision in precisions:
        kinds = [k for k in sorted(manifest.decoders) if precision in decoder_precisions(manifest, k)]
        if not kinds:
            continue
        with ExitStack() as stack:
            decoders = {k: stack.enter_context(open_decoder(manifest, k, precision, threads, backend=backend))
                        for k in kinds}
            for batch in batches:
                latents = {k: rng.standard_normal((batch, *manifest.decoder(k).latent)).astype(np.float32)
                           for k in kinds}
                timed = _timed_round_robin({k: (lambda k=k: decoders[k].decode(latents[k])) for k in kinds},
                                           repeats, warmup=1)
                for k, cell in timed.items():
                    cell["decoder_backend"] = decoders[k].backend
                    if getattr(decoders[k], "engine_set", None):
                        cell["engine_set"] = decoders[k].engine_set
                out.setdefault(precision, {})[str(batch)] = timed
    return out


def _marked_call(backend: Any, feeds: dict[str, np.ndarray], marks: dict[int, list[float]]) -> Any:
    """One call; where the backend can stop a call at an exit, the time each exit is reached."""
    if not hasattr(backend, "exits") or not backend.exits(int(feeds["l"][0])):
        return backend.infer(feeds)
    start = time.perf_counter()

    def mark(exit_length: int) -> bool:
        marks.setdefault(exit_length, []).append((time.perf_counter() - start) * 1e3)
        return False

    return backend.infer(feeds, mark)


def measure_host_overhead(backend: Any, manifest: Bundle, batch: int, repeats: int = 30) -> tuple[float, float]:
    """(per call, per batch) ms the runtime spends outside backend calls, measured with the real
    sampler on the open backend: Euler with 1 and with 8 steps at the shortest length, taking turns;
    the host time of a batch is its wall time minus the time inside backend.infer. Host work runs
    on caches the network has just flushed, so a free stand-in model underestimates it ~2x."""
    from odelt.ode.heuristics import resolve_schedule
    from odelt.runtime.sampler import Sampler, make_labels, make_noise

    cfg, length = manifest.config, min(backend.lengths)
    x0 = make_noise(0, batch, (cfg.in_channels, cfg.input_size, cfg.input_size))
    y = make_labels(batch, cfg.num_classes)
    host: dict[int, list[float]] = {1: [], 8: []}

    def run(sampler: Any, steps: int) -> None:
        start = time.perf_counter()
        _, stats = sampler.sample(x0, y)
        host[steps].append((time.perf_counter() - start - stats.backend_s) * 1e3)

    samplers = {k: Sampler(backend, manifest, resolve_schedule(f"uniform:euler:{k}", length)) for k in host}
    _timed_round_robin({str(k): (lambda k=k: run(samplers[k], k)) for k in host}, repeats)
    one, eight = (float(np.median(host[k][3:])) for k in (1, 8))     # [3:]: the warm-up runs
    per_call = max(0.0, (eight - one) / 7)
    return per_call, max(0.0, one - per_call)


def host_overheads(profile: dict[str, Any]) -> tuple[float, float]:
    """(step_overhead_ms, sample_overhead_ms) of a profile; older profiles have no per-batch term."""
    return float(profile.get("step_overhead_ms", 0.0)), float(profile.get("sample_overhead_ms", 0.0))


def profile_bundle(manifest: Bundle, backend: str = "ort", batches: Iterable[int] = (1, 8),
                   precisions: Iterable[str] = ("fp32",), repeats: int = 20,
                   progress: Callable[[str], None] | None = None, threads: int = 1,
                   time_graphs: bool = True, decoder_repeats: int | None = DECODER_REPEATS) -> dict[str, Any]:
    """Measure every graph and every length's chain, per precision and batch, and the decoder
    stage of a latent bundle at every precision it has a decoder in (`decoder_repeats` decodes per
    (precision, batch, kind); None: not timed, for a profile that plans latents only).

    threads: ONNX Runtime intra-op threads, recorded so that generation runs as profiled. One thread
    is the default: on a small shared CPU, a second thread made calls bimodal (0.9 vs 17 ms medians
    at batch 1 on the digits model, under load) while one thread stayed linear in the length.
    time_graphs=False skips timing each graph alone (the planner needs only the calls)."""
    batches, precisions = validate.counts("--batch", batches), tuple(precisions)
    for batch in batches:
        validate.bundle_batch("--batch", batch, manifest.batch)
    repeats = validate.count("--repeats", repeats)
    threads = validate.threads("--threads", threads)
    if decoder_repeats is not None:
        decoder_repeats = validate.count("--decoder-repeats", decoder_repeats)
    desc = device_description(backend)
    result: dict[str, Any] = {"format": FORMAT, "device_id": device_id(desc), "device": desc,
                              "backend": backend, "repeats": repeats, "layout": manifest.default_layout(),
                              "threads": threads, "calls": {}, "graphs": {}}
    for precision in precisions:
        calls, graphs = result["calls"].setdefault(precision, {}), result["graphs"].setdefault(precision, {})
        with open_backend(backend, manifest, precision=precision, threads=threads) as be:
            for batch in batches:
                if progress:
                    progress(f"{precision} batch {batch}")
                feeds = {n: step_feeds(manifest, n, batch) for n in manifest.lengths}
                marks: dict[int, dict[int, list[float]]] = {n: {} for n in manifest.lengths}
                calls[str(batch)] = _timed_round_robin(
                    {str(n): (lambda n=n: _marked_call(be, feeds[n], marks[n])) for n in manifest.lengths},
                    repeats, burst=5)
                for n, at in marks.items():
                    if at:
                        calls[str(batch)][str(n)]["exits_ms"] = {str(e): float(np.median(v)) for e, v in at.items()}
            if "step_overhead_ms" not in result:
                result["step_overhead_ms"], result["sample_overhead_ms"] = \
                    measure_host_overhead(be, manifest, max(batches))
        if time_graphs and backend_class(backend).graph_timings:
            for batch in batches:
                graphs[str(batch)] = profile_graphs(manifest, precision, batch, max(3, repeats // 2))
    if decoder_repeats is not None and manifest.decoders:
        if progress:
            progress(f"decoders {sorted(manifest.decoders)}")
        # every precision the bundle has a decoder in: a plan's decoder precision is an axis of its
        # own (an FP32 DiT plan may decode in FP16), whichever DiT precisions were asked for
        result["decoders"] = profile_decoders(manifest, manifest.precisions, batches, decoder_repeats, threads,
                                              backend)
    return result


def save_profile(manifest: Bundle, profile: dict[str, Any]) -> Path:
    """Write profile/<device-id>.json into the bundle, atomically."""
    return write_json_atomic(manifest.root / "profile" / f"{profile['device_id']}.json", profile)


def load_profile(manifest: Bundle, device: str | None = None, backend: str = "ort") -> dict[str, Any]:
    """The one profile lookup: the profile of `backend` (any registered backend) on this device, or
    on the named `device` id; a one-line error naming the command that makes it when the bundle
    has none, or when the one found was taken on another backend."""
    folder = manifest.root / "profile"
    have = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
    want = device or device_id(device_description(backend))
    make = f"run `odelt-export profile {manifest.root} --backend {backend}` on this device first"
    if want not in have:
        raise ConfigError(f"{manifest.root}: no {backend} profile for device {want!r} (have {have}); {make}")
    path = folder / f"{want}.json"
    data = read_json(path, ConfigError)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"{path}: expected format {FORMAT}, found {found!r}")
    if data.get("backend", "ort") != backend:
        raise ConfigError(f"{path}: expected a profile of backend {backend}, found one of {data.get('backend')!r}; "
                          f"{make}")
    _check_timings(path, data)
    return data


def _check_timings(path: Path, data: dict[str, Any]) -> None:
    """Every timing finite and > 0 (host overheads >= 0): a profile is refused when read, before a
    NaN or a negative median can turn into a plan."""
    def bad(where: str, value: Any) -> ConfigError:
        return ConfigError(f"{path}: expected finite positive timings, found {where} = {value!r}; "
                           "re-run `odelt-export profile` on this device")

    calls = data.get("calls")
    if not isinstance(calls, dict) or not calls:
        raise bad("calls", calls)
    _check_table(bad, "calls", calls)
    decoders = data.get("decoders", {})
    if not isinstance(decoders, dict):
        raise bad("decoders", decoders)
    _check_table(bad, "decoders", decoders)
    for key in ("step_overhead_ms", "sample_overhead_ms"):
        v = data.get(key, 0.0)
        if not _finite(v) or v < 0:
            raise bad(key, v)


def _check_table(bad: Callable[[str, Any], ConfigError], section: str, table: dict[str, Any]) -> None:
    """{precision: {str(batch): {key: {"median_ms", "p90_ms", ...}}}}, every cell finite and > 0."""
    for prec, by_batch in table.items():
        if not isinstance(by_batch, dict) or not by_batch:
            raise bad(f"{section}.{prec}", by_batch)
        for b, by_key in by_batch.items():
            if not str(b).isdigit() or int(b) < 1 or not isinstance(by_key, dict) or not by_key:
                raise bad(f"{section}.{prec}.{b}", by_key)
            for n, cell in by_key.items():
                for key in ("median_ms", "p90_ms"):
                    v = cell.get(key) if isinstance(cell, dict) else None
                    if not _finite(v) or v <= 0:
                        raise bad(f"{section}.{prec}.{b}.{n}.{key}", v)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def profiled_batches(profile: dict[str, Any]) -> tuple[int, int]:
    """(smallest, largest) batch every precision of the profile was timed at."""
    sizes = [sorted(int(b) for b in by_batch) for by_batch in profile["calls"].values()]
    return max(s[0] for s in sizes), min(s[-1] for s in sizes)


def check_plan_batch(manifest: Bundle, profile: dict[str, Any], batch: int, extrapolate: bool = False) -> int:
    """A batch the planner may predict: inside the bundle's range, and inside the profiled batches
    unless `extrapolate` (the cost model is linear in the rows, measured only between them)."""
    validate.bundle_batch("--batch", batch, manifest.batch)
    if not extrapolate:
        low, high = profiled_batches(profile)
        validate.batch_in("--batch", batch, low, high, "the profiled range",
                          " (profile that batch, or pass --extrapolate)")
    return batch


def call_cost(profile: dict[str, Any]) -> Callable[[str, int, int], float]:
    """The planner's cost function: median ms of one call at (precision, length, batch).

    Batches between profiled ones are interpolated linearly (CPU cost grows ~linearly in rows)."""
    median = median_cost(profile["calls"], "call", "length ")
    return lambda precision, length, batch: median(precision, str(length), batch)


def exit_cost(profile: dict[str, Any]) -> Callable[[str, int, int, int], float]:
    """(precision, length, exit, batch) -> median ms from the start of a call at `length` to the end
    of the chunk that completes `exit`: the profile's `exits_ms` (interpolated over batches like
    call_cost); without it, a whole call at `exit` (the same graphs and a head: a little late)."""
    median = call_cost(profile)

    def reach(precision: str, length: int, exit_length: int, batch: int) -> float:
        by_batch = {int(b): v for b, v in profile["calls"].get(precision, {}).items()}
        at = {b: v.get(str(length), {}).get("exits_ms", {}).get(str(exit_length)) for b, v in by_batch.items()}
        at = {b: ms for b, ms in at.items() if ms is not None}
        return interpolate_batches(at, batch) if at else median(precision, exit_length, batch)

    return reach


def decode_cost(profile: dict[str, Any]) -> Callable[[str, str, int], float]:
    """Median ms of decoding one batch with decoder (kind, precision) at `batch`, interpolated
    like call_cost; a one-line error when the profile did not time that decoder."""
    return median_cost(profile.get("decoders", {}), "decoder", "")


def median_cost(table: dict[str, Any], what: str, label: str) -> Callable[[str, str, int], float]:
    """(precision, key, batch) -> median ms from a {precision: {str(batch): {key: timing}}} table."""
    def cost(precision: str, key: str, batch: int) -> float:
        if not table:
            raise ConfigError(f"profile has no {what} timings; expected one taken with them "
                              "(re-run `odelt-export profile` on this device)")
        if precision not in table:
            raise ConfigError(f"profile has no {precision} {what} timings; expected one of {sorted(table)} "
                              "(re-run `odelt-export profile` on this device)")
        by_batch = {int(b): v for b, v in table[precision].items()}
        if key not in next(iter(by_batch.values())):
            raise ConfigError(f"profile has no {what} timings for {label}{key} at {precision} "
                              "(re-run `odelt-export profile` on this device)")
        return interpolate_batches({b: v[key]["median_ms"] for b, v in by_batch.items()}, batch)

    return cost


def interpolate_batches(by_batch: dict[int, float], batch: int) -> float:
    """A per-batch cost at `batch` from the profiled batches: linear between two, proportional to
    the rows beyond the profiled range (the planner refuses that unless told to extrapolate)."""
    bs = sorted(by_batch)
    if batch in by_batch:
        return float(by_batch[batch])
    lo = max([b for b in bs if b < batch], default=bs[0])
    hi = min([b for b in bs if b > batch], default=bs[-1])
    if lo == hi:
        return float(by_batch[lo]) * batch / lo
    a, b = by_batch[lo], by_batch[hi]
    return float(a + (b - a) * (batch - lo) / (hi - lo))
