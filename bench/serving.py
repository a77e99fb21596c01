"""Serving many budgeted requests: the per-request loop, request-level batching, the batching engine
in process, and Triton end to end, on the same requests, side by side.

Workload: the digits bundle exported with batch range 1:8:32 (segments layout), its shipped
schedules and quality table (fp32), its profile at batches 1-4. 400 requests (200 with --quick)
of n = 1 + i % 4 images, each with a budget just above one plan of the Pareto front at its n (the
front cycles, so budgets span the whole range; every budget is feasible with the predictor the
server plans with: QuantilePredictor at its n, quantile 0.95). 8 client threads each
send a request, wait for it, send the next (closed loop); every request is counted, and any error
fails the group (raised at the end, with the errors). One ORT thread per backend session.

Modes (each first warmed on 16 other requests; the in-process ones and the clients in serving_modes.py):
  loop              one worker serves requests one at a time (the runtime's Sampler): today's baseline
  request_batching  one worker takes everything queued and runs requests with the same plan as one
                    Sampler batch (up to 32 rows): only identical plans share a call
  engine            odelt.runtime.engine in this process (max 32 rows a pass, EngineOptions' defaults);
                    engine_norefill without the 1 ms refill, engine_window2 with a 2 ms window
  triton            the engine-mode repository on a real tritonserver, clients over HTTP (generate
                    endpoint); serving_triton_model_p50_ms is the part of a request spent inside the model.
serving_lone_{engine,triton,triton_model}_ms: a lone request (n=1, cheapest plan), one at a time, at the
client of the engine in process and of Triton, and inside Triton's model: each mode's fixed cost.
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
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from odelt.runtime import PlanBook, make_labels, make_noise

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from serving_modes import CLIENTS, ENGINES, MAX_ROWS, drive, figures, in_process, lone, max_diff, median_ms, requests_for

WARM = 16
DITS_SIZE = 16


# -- Triton ------------------------------------------------------------------------------------------

def triton_mode(bundle: Path, book: PlanBook, reqs: list, warm: list, work: Path) -> tuple[dict, dict]:
    """The engine-mode repository on a real tritonserver; clients over HTTP, Triton's generate
    endpoint (odelt.serving.Client: the path docs/serving.md gives users)."""
    from odelt.serving import Client, RepoOptions, TritonServer, find_env, write_repository

    repo = write_repository(bundle, work / "repo-engine", RepoOptions(sampler="engine", max_batch=MAX_ROWS))
    server = TritonServer(find_env(), repo, work / "triton", code=ROOT)
    clients: dict[int, Client] = {}
    inside: list[float] = []            # ms from submit to reply inside the model (measured_ms)
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
            inside.append(out.measured_ms)
            return lambda: out.images
        drive(call, book, warm)
        before = dict(call.stats)
        inside.clear()
        run = drive(call, book, reqs)
        after = call.stats
        model_p50 = float(np.median(inside))
        inside.clear()
        lone_ms = lone(call, book)
        lone_model = float(np.median(inside))
    finally:
        for c in clients.values():
            c.close()
        server.stop()
    rows = (after["rows"] - before["rows"]) / max(1, after["passes"] - before["passes"])
    return {**figures("serving_triton", run, rows), "serving_triton_ready_s": round(ready_s, 1),
            "serving_triton_model_p50_ms": round(model_p50, 2), "serving_lone_triton_ms": round(lone_ms, 3),
            "serving_lone_triton_model_ms": round(lone_model, 3)}, run


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
            out[b] = median_ms(lambda: be.infer(feeds), repeats, warm=2) / b
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
        figs, runs = in_process(manifest, book, reqs, warm, "serving", tuple(ENGINES))
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
