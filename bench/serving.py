"""Serving many budgeted requests: the per-request loop, request-level batching, the batching engine
in process, and Triton end to end, on the same requests, side by side.

Workload: the digits bundle exported with batch range 1:8:32 (segments layout), its shipped
schedules and quality table (fp32), its profile at batches 1-4. 400 requests (200 with --quick)
of n = 1 + i % 4 images, each with a budget just above one plan of the Pareto front at its n (the
front cycles, so budgets span the whole range; every budget is feasible with the predictor the
server plans with: QuantilePredictor at its n, quantile 0.95). 8 client threads each
send a request, wait for it, send the next (closed loop); every request is counted, and any error
fails the group (raised at the end, with the errors). One ORT thread per backend session.

Modes (each first warmed on 16 other requests):
  loop              one worker serves requests one at a time (the runtime's Sampler): today's baseline
  request_batching  one worker takes everything queued and runs requests with the same plan as one
                    Sampler batch (up to 32 rows): only identical plans share a call
  engine            odelt.runtime.engine in this process (max 32 rows a pass, no gathering window);
                    engine_window2 the same with a 2 ms window
  triton            the engine-mode repository on a real tritonserver, clients over HTTP (generate endpoint)
Keys, for mode in those: serving_<mode>_rps, _p50_ms, _p99_ms (client-side latency, queueing included),
_rows_per_call (rows per velocity evaluation: a Sampler call, an engine pass); serving_errors (all
modes); serving_engine_rps_ratio (engine / loop), serving_engine_vs_request_batching,
serving_rps_ratio (triton / loop); serving_engine_max_abs_diff (engine and Triton images vs the
loop's, every 10th request). serving_<model>_ms_per_row_b<B>: one full-length evaluation at batch B
divided by B (where batching stops paying on this CPU), for digits and a DiT-S/2-shaped model
(random weights, non-zero final layer, 16x16x4, lengths 4/8/12) whose three in-process modes run
too (serving_dits_*; its plans are uniform Euler schedules with made-up errors: a cost ladder).
smoke=True: tiny sizes in seconds (no Triton, no DiT-S/2).
"""

from __future__ import annotations

import os
import queue
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from odelt.runtime import Engine, EngineOptions, Job, PlanBook, Sampler, make_labels, make_noise, pareto_front

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 8
MAX_ROWS = 32
WARM = 16
DITS_SIZE = 16


# -- workload ----------------------------------------------------------------------------------------

def requests_for(book: PlanBook, count: int, seed0: int = 0) -> list[tuple[int, int, float]]:
    """(n, seed, budget_ms): budgets 2% above the k-th plan of the Pareto front at n, k cycling."""
    fronts = {n: pareto_front((c, book.predictor(n).candidate(c)) for c in book.candidates) for n in (1, 2, 3, 4)}
    out = []
    for i in range(count):
        n = 1 + i % 4
        front = fronts[n]
        out.append((n, seed0 + i, 1.02 * front[(i * 7 + i // 4) % len(front)][1]))
    return out


class Modes:
    """The in-process servers over one open backend; each mode: (submit(request) -> wait() -> images, rows/call)."""

    def __init__(self, manifest: Any, backend: Any, book: PlanBook):
        self.manifest, self.backend, self.book = manifest, backend, book
        cfg = manifest.config
        self.shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
        self.samplers: dict[str, Sampler] = {}
        self.rows = self.calls = 0

    def sampler(self, plan: Any) -> Sampler:
        s = self.samplers.get(plan.name)
        if s is None:
            s = self.samplers[plan.name] = Sampler(self.backend, self.manifest, plan.schedule)
        return s

    def run_group(self, items: list[tuple[Any, int, int]]) -> list[np.ndarray]:
        """Requests with one plan as one Sampler batch: [(plan, n, seed)] -> their images."""
        plan = items[0][0]
        x0 = np.concatenate([make_noise(seed, n, self.shape) for _, n, seed in items])
        y = np.concatenate([make_labels(n, self.manifest.config.num_classes) for _, n, _ in items])
        images, stats = self.sampler(plan).sample(x0, y)
        self.rows += int(x0.shape[0]) * stats.calls
        self.calls += stats.calls
        cuts = np.cumsum([n for _, n, _ in items])[:-1]
        return np.split(images, cuts)


class Reply:
    """One request's answer from a worker server."""

    def __init__(self) -> None:
        self.images: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def wait(self) -> np.ndarray:
        if not self.done.wait(120):
            raise RuntimeError("no answer in 120 s")
        if self.error is not None:
            raise self.error
        assert self.images is not None
        return self.images


def worker_server(modes: Modes, batching: bool) -> tuple[Callable, Callable[[], None]]:
    """A one-thread server: FIFO one request at a time, or (batching) all queued, grouped by plan."""
    inbox: queue.Queue = queue.Queue()

    def serve() -> None:
        while (first := inbox.get()) is not None:
            batch = [first]
            while batching and not inbox.empty():
                batch.append(inbox.get())
            if batch[-1] is None:
                batch.pop()
                inbox.put(None)
            groups: dict[str, list] = {}
            for item in batch:
                groups.setdefault(item[0].name, []).append(item)
            for items in groups.values():
                for lo, hi in _row_chunks([it[1] for it in items]):
                    part = items[lo:hi]
                    try:
                        for it, images in zip(part, modes.run_group([it[:3] for it in part])):
                            it[3].images = images
                    except Exception as e:  # noqa: BLE001 - handed to the waiting clients
                        for it in part:
                            it[3].error = e
                    for it in part:
                        it[3].done.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def submit(plan: Any, n: int, seed: int) -> Callable[[], np.ndarray]:
        reply = Reply()
        inbox.put((plan, n, seed, reply))
        return reply.wait

    def close() -> None:
        inbox.put(None)
        thread.join(30)
    return submit, close


def _row_chunks(ns: list[int]) -> list[tuple[int, int]]:
    """Consecutive index ranges whose rows fit MAX_ROWS."""
    out, lo, rows = [], 0, 0
    for i, n in enumerate(ns):
        if rows + n > MAX_ROWS and i > lo:
            out.append((lo, i))
            lo, rows = i, 0
        rows += n
    out.append((lo, len(ns)))
    return out


def drive(submit: Callable, book: PlanBook, reqs: list[tuple[int, int, float]]) -> dict[str, Any]:
    """8 closed-loop clients over `reqs`: latencies (s), wall time, errors, images by request index."""
    lock, cursor = threading.Lock(), [0]
    lat: list[float] = []
    errors: list[str] = []
    images: dict[int, np.ndarray] = {}

    def client() -> None:
        while True:
            with lock:
                i = cursor[0]
                cursor[0] += 1
            if i >= len(reqs):
                return
            n, seed, budget = reqs[i]
            t0 = time.perf_counter()
            try:
                wait = submit(book.plan(n, budget), n, seed, budget)
                images[i] = wait()
                lat.append(time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - counted, and the group fails
                errors.append(f"request {i}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"lat": lat, "wall": time.perf_counter() - start, "errors": errors, "images": images}


def figures(prefix: str, run: dict[str, Any], rows_per_call: float) -> dict[str, Any]:
    ms = np.array(run["lat"] or [float("nan")]) * 1e3
    return {f"{prefix}_rps": round(len(run["lat"]) / run["wall"], 1),
            f"{prefix}_p50_ms": round(float(np.percentile(ms, 50)), 2),
            f"{prefix}_p99_ms": round(float(np.percentile(ms, 99)), 2),
            f"{prefix}_rows_per_call": round(rows_per_call, 2), f"{prefix}_errors": len(run["errors"])}


def in_process(manifest: Any, book: PlanBook, reqs: list, warm: list, prefix: str,
               windows: tuple[float, ...] = (0.0,)) -> tuple[dict[str, Any], dict[str, dict]]:
    """loop, request_batching and the engine (one per window) on one open ORT backend."""
    from odelt.runtime import open_backend

    out: dict[str, Any] = {}
    runs: dict[str, dict] = {}
    with open_backend("ort", manifest, threads=1, use_engines=False) as be:
        for mode, batching in (("loop", False), ("request_batching", True)):
            modes = Modes(manifest, be, book)
            submit, close = worker_server(modes, batching)
            call = lambda plan, n, seed, budget: submit(plan, n, seed)  # noqa: E731
            drive(call, book, warm)
            modes.rows = modes.calls = 0
            runs[mode] = drive(call, book, reqs)
            close()
            out.update(figures(f"{prefix}_{mode}", runs[mode], modes.rows / max(1, modes.calls)))
        for w in windows:
            name = "engine" if w == 0 else f"engine_window{w:g}"
            engine = Engine(manifest, be, EngineOptions(max_rows=MAX_ROWS, window_ms=w)).start()

            def call(plan: Any, n: int, seed: int, budget: float, engine: Engine = engine) -> Callable:
                ticket = engine.submit(Job(n=n, seed=seed, schedule=plan.schedule, plan=plan.name, budget_ms=budget))
                return lambda: ticket.result(120)
            drive(call, book, warm)
            before = (engine.stats.rows, engine.stats.passes, engine.stats.over_budget)
            runs[name] = drive(call, book, reqs)
            engine.stop()
            rows = (engine.stats.rows - before[0]) / max(1, engine.stats.passes - before[1])
            out.update(figures(f"{prefix}_{name}", runs[name], rows))
            out[f"{prefix}_{name}_over_budget"] = engine.stats.over_budget - before[2]
    return out, runs


def triton_mode(bundle: Path, book: PlanBook, reqs: list, warm: list, work: Path) -> tuple[dict, dict]:
    from odelt.serving import Client, RepoOptions, TritonServer, find_env, write_repository

    repo = write_repository(bundle, work / "repo-engine", RepoOptions(sampler="engine", max_batch=MAX_ROWS))
    server = TritonServer(find_env(), repo, work / "triton", code=ROOT)
    clients: dict[int, Client] = {}
    t0 = time.perf_counter()
    server.start()
    try:
        server.wait_ready(300)
        ready_s = time.perf_counter() - t0

        def call(plan: Any, n: int, seed: int, budget: float) -> Callable:
            c = clients.setdefault(threading.get_ident(), Client(server.url))
            out = c.generate(n=n, seed=seed, budget_ms=budget)
            if out.plan != plan.name:
                raise RuntimeError(f"the server chose {out.plan}, the client's planner {plan.name}")
            call.stats = out.stats
            return lambda: out.images
        drive(call, book, warm)
        before = dict(call.stats)
        run = drive(call, book, reqs)
        after = call.stats
    finally:
        for c in clients.values():
            c.close()
        server.stop()
    rows = (after["rows"] - before["rows"]) / max(1, after["passes"] - before["passes"])
    return {**figures("serving_triton", run, rows), "serving_triton_ready_s": round(ready_s, 1)}, run


def max_diff(runs: dict[str, dict], ref: str, others: tuple[str, ...]) -> float:
    worst = 0.0
    for name in others:
        for i, img in runs[name]["images"].items():
            if i % 10 == 0 and i in runs[ref]["images"]:
                worst = max(worst, float(np.abs(img - runs[ref]["images"][i]).max()))
    return worst


# -- bundles -------------------------------------------------------------------------------------------

def ladder_quality(manifest: Any, specs: list[tuple[int, int]]) -> None:
    """A quality table of uniform Euler plans (steps, length) with made-up errors falling with cost:
    for a random-weight model (or a smoke run) whose plans only need to form a cost ladder."""
    from odelt.runtime import heuristic_schedule, save_schedule
    from odelt.schedules import write_quality

    rows = []
    for steps, length in specs:
        s = heuristic_schedule("uniform", "euler", steps, length)
        name = f"uniform-euler-{steps}-l{length}"
        save_schedule(s, manifest.root / "schedules" / f"{name}.json")
        rows.append({"name": name, "schedule": name, "solver": "euler", "precision": "fp32",
                     "error": 1.0 / (steps * length), "fd": None, "call_lengths": list(s.call_lengths())})
    write_quality(manifest, rows, 0, 0, teacher="none: made-up errors falling with cost (a cost ladder)")


def prepare_digits(work: Path, smoke: bool) -> tuple[Any, dict]:
    """builtin:digits at batch 1:8:32, its shipped schedules and quality table (fp32), profile at 1-4."""
    from odelt.bundle import BatchRange, open_bundle
    from odelt.exporter import ExportOptions, export_source

    # the segments layout only: the one served (a per-length export would double the profiling time)
    manifest = export_source("builtin:digits", work / "bundle", ExportOptions(layouts=("segments",),
                                                                           batch=BatchRange(1, 8, 32)))
    if smoke:
        ladder_quality(manifest, [(1, 2), (2, 4), (4, 8)])
    else:
        from odelt import pipeline as demo
        from odelt.exporter import model_for_bundle

        opts = demo.DemoOptions(out=work, quality_n=32, precisions=("fp32",))
        model = model_for_bundle(manifest)
        demo.stage_quality(opts, manifest, model, demo.stage_schedules(opts, manifest, model, lambda m: None),
                           lambda m: None)
    return _profiled(open_bundle(manifest.root), 5 if smoke else 20)


def _profiled(manifest: Any, repeats: int) -> tuple[Any, dict]:
    from odelt.bundle import open_bundle
    from odelt.runtime import profile_bundle, save_profile

    prof = profile_bundle(manifest, "ort", (1, 2, 3, 4), ("fp32",), repeats=repeats, time_graphs=False)
    save_profile(manifest, prof)
    return open_bundle(manifest.root), prof


def prepare_dits(work: Path) -> tuple[Any, dict]:
    """A DiT-S/2-shaped model (hidden 384, depth 12, 6 heads, patch 2) on 16x16x4 latents (64 tokens:
    at 32x32 one evaluation takes ~0.3 s on this CPU, too slow for a request stream), random weights
    with a non-zero final layer, segments at lengths 4/8/12, batch 1:8:32; a ladder of Euler plans."""
    import torch

    from odelt.bundle import BatchRange
    from odelt.exporter import ExportOptions, export_bundle
    from odelt.models import PRESETS, DiT

    torch.manual_seed(0)
    dit = DiT(replace(PRESETS["DiT-S/2"], input_size=DITS_SIZE)).eval()
    with torch.no_grad():
        for p in dit.final.parameters():
            p.normal_(0.0, 0.02)
    manifest = export_bundle(dit, work / "dits", ExportOptions(layouts=("segments",), batch=BatchRange(1, 8, 32)),
                             source="bench:DiT-S/2-random", source_hash="random-seed0")
    ladder_quality(manifest, [(1, 4), (1, 8), (2, 8), (1, 12), (2, 12)])
    return _profiled(manifest, 3)


def ms_per_row(manifest: Any, batches: tuple[int, ...], repeats: int) -> dict[int, float]:
    """One evaluation at the longest length, at each batch: median ms divided by the batch."""
    from odelt.runtime import open_backend

    cfg, length = manifest.config, max(manifest.lengths)
    out = {}
    with open_backend("ort", manifest, threads=1, use_engines=False) as be:
        for b in batches:
            feeds = {"x": make_noise(0, b, (cfg.in_channels, cfg.input_size, cfg.input_size)),
                     "t": np.full(b, 0.5, np.float32), "dt_base": np.zeros(b, np.int32),
                     "y": make_labels(b, cfg.num_classes), "l": np.full(b, length, np.int32)}
            for _ in range(2):
                be.infer(feeds)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                be.infer(feeds)
                times.append(time.perf_counter() - t0)
            out[b] = 1e3 * float(np.median(times)) / b
    return out


def cpu_flags() -> str:
    """The instruction sets this run had (the ones ONNX Runtime's CPU kernels dispatch on)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    have = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    wanted = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")
    return " ".join(f for f in wanted if f in have) or "none of " + " ".join(wanted)


# -- the group -----------------------------------------------------------------------------------------

def _ratios(out: dict[str, Any], prefix: str) -> None:
    loop, rb, eng = (out[f"{prefix}_{m}_rps"] for m in ("loop", "request_batching", "engine"))
    out[f"{prefix}_engine_rps_ratio"] = round(eng / loop, 3)
    out[f"{prefix}_engine_vs_request_batching"] = round(eng / rb, 3)


def run(quick: bool = False, smoke: bool = False) -> dict:
    from odelt.bundle import open_bundle  # noqa: F401 - fails early where the package is missing

    count = 24 if smoke else 200 if quick else 400
    out: dict[str, Any] = {"serving_cpu_flags": cpu_flags(), "serving_clients": CLIENTS, "serving_requests": count,
                           "serving_max_rows": MAX_ROWS, "serving_load_avg_start": list(os.getloadavg())}
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest, prof = prepare_digits(work, smoke)
        book = PlanBook(manifest, prof)
        reqs, warm = requests_for(book, count), requests_for(book, WARM, seed0=10_000)
        out["serving_plans_used"] = len({book.plan(n, b).name for n, _, b in reqs})
        out["serving_rows_per_request"] = round(float(np.mean([n for n, _, _ in reqs])), 2)
        figs, runs = in_process(manifest, book, reqs, warm, "serving", (0.0, 2.0))
        out.update(figs)
        if not smoke:
            tri, runs["triton"] = triton_mode(manifest.root, book, reqs, warm, work)
            out.update(tri)
            out["serving_rps_ratio"] = round(out["serving_triton_rps"] / out["serving_loop_rps"], 3)
        _ratios(out, "serving")
        out["serving_engine_max_abs_diff"] = max_diff(runs, "loop", tuple(m for m in runs if m.startswith(("engine", "triton"))))
        errors += [f"{m}: {e}" for m, r in runs.items() for e in r["errors"]]
        per_row = ms_per_row(manifest, (1, 2, 4, 8, 16, 32), 5 if smoke else 30)
        out.update({f"serving_digits_ms_per_row_b{b}": round(v, 4) for b, v in per_row.items()})
        print(f"serving (digits part): {out}", file=sys.stderr, flush=True)   # kept if a later part fails
        if not smoke:
            dits, dprof = prepare_dits(work)
            dbook = PlanBook(dits, dprof)
            dreqs, dwarm = requests_for(dbook, 16 if quick else 32), requests_for(dbook, 2, seed0=10_000)
            dfigs, druns = in_process(dits, dbook, dreqs, dwarm, "serving_dits")
            out.update(dfigs)
            _ratios(out, "serving_dits")
            errors += [f"dits {m}: {e}" for m, r in druns.items() for e in r["errors"]]
            per_row = ms_per_row(dits, (1, 2, 4, 8), 5)
            out.update({f"serving_dits_ms_per_row_b{b}": round(v, 3) for b, v in per_row.items()})
    if out["serving_engine_max_abs_diff"] > 1e-4:
        errors.append(f"engine images differ from the loop's by {out['serving_engine_max_abs_diff']:.3g} (> 1e-4)")
    out["serving_errors"] = len(errors)
    out["serving_load_avg_end"] = list(os.getloadavg())
    if errors:
        raise RuntimeError(f"{len(errors)} serving errors (figures: {out}): " + " | ".join(errors[:5]))
    return out
