"""The serving bench's in-process modes and its client driver (bench/serving.py runs the group).

  loop              one worker serves requests one at a time (the runtime's Sampler): today's baseline
  request_batching  one worker takes everything queued and runs requests with the same plan as one
                    Sampler batch (up to MAX_ROWS rows): only identical plans share a call
  engine            odelt.runtime.engine in this process (MAX_ROWS rows a pass, EngineOptions' defaults:
                    no window, a 1 ms refill); engine_norefill without the refill, engine_window2 with a
                    2 ms gathering window as well (the trade-offs, measured on the same requests)

`drive` is the workload's clients for every mode, Triton's included: CLIENTS closed-loop threads,
every request counted, errors collected (the group fails on any).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from odelt.runtime import Engine, EngineOptions, Job, PlanBook, Sampler, make_labels, make_noise, pareto_front

CLIENTS = 8
MAX_ROWS = 32


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
    def one(i: int) -> np.ndarray:
        n, seed, budget = reqs[i]
        return submit(book.plan(n, budget), n, seed, budget)()
    return clients(one, len(reqs))


def median_ms(call: Callable[[], Any], repeats: int, warm: int = 1) -> float:
    """Median ms of `call` over `repeats` timed runs, after `warm` untimed ones."""
    for _ in range(warm):
        call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def clients(request: Callable[[int], np.ndarray], count: int) -> dict[str, Any]:
    """CLIENTS closed-loop threads taking requests 0..count-1 in turn; request(i) returns its images
    (or raises: counted as that request's error)."""
    lock, cursor = threading.Lock(), [0]
    lat: list[float] = []
    errors: list[str] = []
    images: dict[int, np.ndarray] = {}

    def client() -> None:
        while True:
            with lock:
                i = cursor[0]
                cursor[0] += 1
            if i >= count:
                return
            t0 = time.perf_counter()
            try:
                images[i] = request(i)
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


ENGINES = {"engine": {}, "engine_norefill": {"refill_ms": 0.0}, "engine_window2": {"window_ms": 2.0}}


def in_process(manifest: Any, book: PlanBook, reqs: list, warm: list, prefix: str,
               engines: tuple[str, ...] = ("engine",)) -> tuple[dict[str, Any], dict[str, dict]]:
    """loop, request_batching and the engine (each configuration of ENGINES named) on one open ORT backend."""
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
        for name in engines:
            engine = Engine(manifest, be, EngineOptions(max_rows=MAX_ROWS, **ENGINES[name])).start()

            def call(plan: Any, n: int, seed: int, budget: float, engine: Engine = engine) -> Callable:
                ticket = engine.submit(Job(n=n, seed=seed, schedule=plan.schedule, plan=plan.name, budget_ms=budget))
                return lambda: ticket.result(120)
            drive(call, book, warm)
            before = (engine.stats.rows, engine.stats.passes, engine.stats.over_budget)
            runs[name] = drive(call, book, reqs)
            rows = (engine.stats.rows - before[0]) / max(1, engine.stats.passes - before[1])
            out.update(figures(f"{prefix}_{name}", runs[name], rows))
            out[f"{prefix}_{name}_over_budget"] = engine.stats.over_budget - before[2]
            if name == "engine":
                out[f"{prefix}_lone_engine_ms"] = round(lone(call, book), 3)
            engine.stop()
    return out, runs


LONE = 50


def lone(submit: Callable, book: PlanBook) -> float:
    """Median ms of a lone request (n=1, the cheapest plan), one after another: the fixed cost of a
    request in a mode, next to its work (`submit` as `drive` takes it)."""
    fastest = min(book.predictor(1).candidate(c) for c in book.candidates)
    plan = book.plan(1, fastest * 1.001)
    times = []
    for i in range(LONE + 2):
        t0 = time.perf_counter()
        submit(plan, 1, 20_000 + i, fastest * 1.001)()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times[2:]))


def max_diff(runs: dict[str, dict], ref: str, others: tuple[str, ...]) -> float:
    worst = 0.0
    for name in others:
        for i, img in runs[name]["images"].items():
            if i % 10 == 0 and i in runs[ref]["images"]:
                worst = max(worst, float(np.abs(img - runs[ref]["images"][i]).max()))
    return worst
