"""Serving on a real tritonserver vs a single-process generate loop doing the same work.

The digits bundle (the demo's stages, in a temporary folder), its `cpu` repository with one
instance of each graph model per core and one sampler instance per client, and 8 concurrent
clients each sending requests of 1-4 images with budgets spread over the fp32 plans' predicted
range (the planner picks a plan per request). The loop runs the same requests (n, seed, budget)
one after another in one process: the runtime's Sampler on ONNX Runtime (same graphs, one
thread), the same planner choice. Figures:

  serving_rps / serving_p50_ms / serving_p99_ms     8 clients against the server (client-side latency)
  serving_loop_rps / _p50_ms / _p99_ms              the loop (p50/p99 of one request's own time)
  serving_rps_ratio                                  serving_rps / serving_loop_rps
  serving_step_batching                              rows per execution of the step models
                                                     (Triton's inference_count / execution_count)
  serving_rows_per_call_unbatched                    what one request alone sends per step call (mean n)
  serving_per_length_*                               the same with the per-length layout (one graph
                                                     model call per step instead of the chain's 3-6)

Needs the serving environment (`make serve-env`); raises where tritonserver cannot run.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from odelt.runtime import (MEDIAN, Predictor, Sampler, choose, load_candidates, load_plan_schedule, make_labels,
                           make_noise)

CLIENTS = 8


def _requests(manifest, prof, count: int) -> list[tuple[int, int, float]]:
    """(n, seed, budget_ms) per request: budgets log-spaced over the fp32 plans' predictions at n, by the
    predictor the sampler model plans with (the 0.95 quantile): a budget under its cheapest plan is refused."""
    candidates = [c for c in load_candidates(manifest) if c.precision == "fp32"]
    out = []
    for i in range(count):
        n = 1 + i % 4
        ms = sorted(m for _, m in choose(candidates, float("inf"), Predictor(prof, n, MEDIAN)).table)
        budgets = np.geomspace(ms[0] * 1.05, ms[-1] * 1.01, 5)
        out.append((n, i, float(budgets[(i * 3) % 5])))
    return out


def _loop(manifest, prof, requests, layout: str) -> list[float]:
    from odelt.runtime import open_backend

    candidates = [c for c in load_candidates(manifest) if c.precision == "fp32"]
    cfg = manifest.config
    samplers: dict[str, Sampler] = {}
    times = []
    with open_backend("ort", manifest, layout=layout, threads=1, use_engines=False) as be:
        for n, seed, budget in requests:
            start = time.perf_counter()
            c = choose(candidates, budget, Predictor(prof, n, MEDIAN)).candidate
            s = samplers.get(c.name) or samplers.setdefault(c.name, Sampler(be, manifest, load_plan_schedule(manifest, c)))
            s.sample(make_noise(seed, n, (cfg.in_channels, cfg.input_size, cfg.input_size)),
                     make_labels(n, cfg.num_classes))
            times.append(time.perf_counter() - start)
    return times


def _serve(url: str, requests) -> tuple[list[float], float, list[str]]:
    from odelt.serving import Client

    latencies: list[float] = []
    errors: list[str] = []
    queue = list(enumerate(requests))
    lock = threading.Lock()

    def work() -> None:
        c = Client(url)
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    _, (n, seed, budget) = queue.pop()
                t0 = time.perf_counter()
                c.generate(n=n, seed=seed, budget_ms=budget)
                latencies.append(time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - reported as a figure
            errors.append(repr(e))
        finally:
            c.close()

    threads = [threading.Thread(target=work) for _ in range(CLIENTS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start, errors


def _step_counts(url: str, models) -> tuple[int, int]:
    from odelt.serving import Client

    c = Client(url)
    stats = [c.model_stats(m) for m in models]
    c.close()
    return sum(int(s["inference_count"]) for s in stats), sum(int(s["execution_count"]) for s in stats)


def _prepare(opts):
    """The demo's export, schedules, quality table and profile (fp32 only: the repository serves one
    precision, and quantising and building engines would only cost time here)."""
    from odelt import pipeline as demo
    from odelt.bundle import open_bundle
    from odelt.exporter import model_for_bundle

    log = lambda msg: None  # noqa: E731
    manifest = demo.stage_export(opts, log)
    model = model_for_bundle(open_bundle(manifest.root))
    schedules = demo.stage_schedules(opts, manifest, model, log)
    demo.stage_quality(opts, manifest, model, schedules, log)
    prof = demo.stage_profile(opts, manifest, log)
    return open_bundle(manifest.root), prof


def _measure(env, manifest, prof, layout: str, requests, warm, work: Path, prefix: str) -> dict:
    from odelt.serving import RepoOptions, TritonServer, write_repository

    _loop(manifest, prof, warm, layout)
    loop = _loop(manifest, prof, requests, layout)
    cores = os.cpu_count() or 1
    repo = write_repository(manifest.root, work / f"repo-{layout}",
                            RepoOptions(engines="cpu", instances=cores, sampler_instances=CLIENTS, layout=layout))
    models = json.loads((repo / "odelt_repository.json").read_text())["models"].values()
    server = TritonServer(env, repo, work / f"work-{layout}")
    t0 = time.perf_counter()
    server.start()
    try:
        server.wait_ready(300)
        ready_s = time.perf_counter() - t0
        _serve(server.url, warm)
        before = _step_counts(server.url, models)
        lat, wall, errors = _serve(server.url, requests)
        after = _step_counts(server.url, models)
    finally:
        server.stop()
    if errors:          # a run with errors is a failed run, not a figure
        raise RuntimeError(f"{len(errors)} clients of the {layout} repository failed; the first: {errors[0]}")
    rows, execs = after[0] - before[0], after[1] - before[1]
    ms, loop_ms = np.array(lat) * 1e3, np.array(loop) * 1e3
    rps, loop_rps = len(lat) / wall, len(loop) / sum(loop)
    return {f"{prefix}_errors": len(errors), f"{prefix}_ready_s": round(ready_s, 1),
            f"{prefix}_rps": round(rps, 1), f"{prefix}_p50_ms": round(float(np.percentile(ms, 50)), 2),
            f"{prefix}_p99_ms": round(float(np.percentile(ms, 99)), 2),
            f"{prefix}_loop_rps": round(loop_rps, 1),
            f"{prefix}_loop_p50_ms": round(float(np.percentile(loop_ms, 50)), 2),
            f"{prefix}_loop_p99_ms": round(float(np.percentile(loop_ms, 99)), 2),
            f"{prefix}_rps_ratio": round(rps / loop_rps, 3),
            f"{prefix}_step_batching": round(rows / max(1, execs), 2),
            f"{prefix}_graph_models": len(models)}


def run(quick: bool = False, smoke: bool = False) -> dict:
    """smoke: 16 requests; without a serving environment (`make serve-env`) it says so and stops
    there, as the serving tests skip."""
    from odelt import pipeline as demo
    from odelt.errors import BackendUnavailable
    from odelt.serving import find_env

    try:
        env = find_env()
    except BackendUnavailable as e:
        if not smoke:
            raise
        return {"serving_skipped": str(e)}
    count = 16 if smoke else 200 if quick else 400
    with tempfile.TemporaryDirectory() as tmp:
        opts = demo.DemoOptions(out=Path(tmp), quick=quick, quality_n=8 if smoke else 32, precisions=("fp32",))
        manifest, prof = _prepare(opts)
        requests, warm = _requests(manifest, prof, count), _requests(manifest, prof, 2 * CLIENTS)
        out: dict = {"serving_requests": count, "serving_clients": CLIENTS,
                     "serving_graph_instances": os.cpu_count() or 1,
                     "serving_rows_per_call_unbatched": round(float(np.mean([n for n, _, _ in requests])), 2),
                     "serving_load_avg_start": list(os.getloadavg())}
        for layout in manifest.layouts:
            prefix = "serving" if layout == manifest.default_layout() else f"serving_{layout.replace('-', '_')}"
            out.update(_measure(env, manifest, prof, layout, requests, warm, Path(tmp), prefix))
        out["serving_load_avg_end"] = list(os.getloadavg())
    return out
