"""Serving a latent bundle with the engine: does decoding finished requests together pay?

Workload: builtin:digits-latent (4x4x4 latents, its own SD-kind VAE to 1x32x32) exported at batch
1:8:32, segments layout, one ORT thread for the engine and one for the decoder. The engine service
of the Triton engine mode (odelt.serving.engine_model, in this process, without Triton) serves 8
closed-loop clients, requests of n = 1-4 with mixed schedules (1-4 steps, euler and heun). Two
modes on the same requests, run alternately (alone, batched, alone, batched) so that load drifts
hit both: `alone` decodes each request by itself, `batched` decodes every request queued when the
decode thread wakes in one call. Also the decoder alone, ms per image at batch 1 and 8.

Every request is counted; any error fails the group. The two modes' images must agree (float
rounding of batched kernels only).
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
from serving_modes import CLIENTS, clients, median_ms  # bench/ is on the path (bench/run.py)

SCHEDULES = ("uniform:euler:1", "uniform:euler:2", "uniform:heun:2", "uniform:euler:4")
PARAMS = {"threads": "1", "max_rows": "32", "window_ms": "0", "layout": "segments", "precision": "fp32",
          "decoder": "sd"}


def _drive(service: Any, reqs: list[tuple[int, int, str]]) -> dict[str, Any]:
    """The serving bench's closed-loop clients, each request through the engine service's callback."""
    def one(i: int) -> np.ndarray:
        n, seed, schedule = reqs[i]
        done, box = threading.Event(), {}

        def reply(out: Any, error: Any) -> None:
            box.update(out=out, error=error)
            done.set()
        service.submit(n, seed, None, None, {"schedule": schedule}, reply)
        if not done.wait(60):
            raise TimeoutError("no reply in 60 s")
        if box["error"] is not None:
            raise box["error"]
        return box["out"]["images"]
    return clients(one, len(reqs))


def _serve(bundle: Path, reqs: list, batched: bool) -> dict[str, Any]:
    from odelt.serving import SamplerService, open_engine_service

    params = {**PARAMS, "decode_batched": "1" if batched else "0"}
    svc = open_engine_service(bundle, params, lambda m: SamplerService(m, None, "fp32", 32, "sd"))
    try:
        _drive(svc, reqs[:16])                                  # warm-up: sessions, schedules
        calls0, rows0 = svc.decoding.calls, svc.decoding.rows
        run = _drive(svc, reqs)
        run["decode_rows_per_call"] = (svc.decoding.rows - rows0) / max(1, svc.decoding.calls - calls0)
    finally:
        svc.close()
    return run


def _decoder_ms_per_image(bundle: Any, batch: int, repeats: int) -> float:
    from odelt.runtime import open_decoder

    x = np.random.default_rng(0).standard_normal((batch, *bundle.decoder().latent)).astype(np.float32)
    with open_decoder(bundle, threads=1) as dec:
        return median_ms(lambda: dec.decode(x), repeats) / batch


def run(quick: bool = False, smoke: bool = False) -> dict:
    from odelt.bundle import BatchRange
    from odelt.exporter import ExportOptions, export_source
    from odelt.models import builtin_vae_path

    count = 24 if smoke else 200 if quick else 400
    rounds = 1 if smoke else 2
    reqs = [(1 + i % 4, i, SCHEDULES[(i * 7 + i // 4) % len(SCHEDULES)]) for i in range(count)]
    out: dict[str, Any] = {"serving_decode_requests": count, "serving_decode_clients": CLIENTS,
                           "serving_decode_load_avg_start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = export_source("builtin:digits-latent", Path(tmp) / "b",
                                 ExportOptions(layouts=("segments",), batch=BatchRange(1, 8, 32),
                                               vaes=(("sd", str(builtin_vae_path("digits-latent"))),)))
        for b in (1, 8):
            out[f"serving_decode_ms_per_image_b{b}"] = round(_decoder_ms_per_image(manifest, b, 5 if smoke else 30), 3)
        runs: dict[str, list[dict]] = {"alone": [], "batched": []}
        for _ in range(rounds):
            for mode in ("alone", "batched"):
                runs[mode].append(_serve(manifest.root, reqs, mode == "batched"))
    errors = [e for rs in runs.values() for r in rs for e in r["errors"]]
    out["serving_decode_errors"] = len(errors)
    if errors:
        raise RuntimeError(f"{len(errors)} serving_decode requests failed, first: {errors[0]}")
    for mode, rs in runs.items():
        ms = np.concatenate([np.array(r["lat"]) for r in rs]) * 1e3
        out[f"serving_decode_{mode}_rps"] = round(float(np.mean([len(r["lat"]) / r["wall"] for r in rs])), 1)
        out[f"serving_decode_{mode}_p50_ms"] = round(float(np.percentile(ms, 50)), 2)
        out[f"serving_decode_{mode}_p99_ms"] = round(float(np.percentile(ms, 99)), 2)
        out[f"serving_decode_{mode}_rows_per_decode"] = round(float(np.mean([r["decode_rows_per_call"] for r in rs])), 2)
    out["serving_decode_batched_vs_alone"] = round(out["serving_decode_batched_rps"] / out["serving_decode_alone_rps"], 3)
    a, b = runs["alone"][0]["images"], runs["batched"][0]["images"]
    out["serving_decode_max_abs_diff"] = float(max(np.abs(a[i] - b[i]).max() for i in a))
    out["serving_decode_load_avg_end"] = round(os.getloadavg()[0], 2)
    return out
