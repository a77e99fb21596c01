"""Bench group `precision` (issue 6 §3): INT8 / FP16 variants vs FP32 on ONNX Runtime CPU.

For each model (digits: builtin:digits when its weights are shipped, else random weights, said so in
the output; DiT-S/2: random weights, with the zero-initialised final layer and biases filled so the
output is not trivially zero): export the segments layout, add the fp16 and int8 variants with
`quantize_bundle` (same noise, same schedules for FP32 and the variant), then time one network
evaluation at the full length (cond -> chunks -> head) at batch 8, FP32 vs INT8, median of repeats.

Figures: int8_speedup_b8 (target >= 1.5), int8_rmse (<= 0.05), int8_fd_rel (<= 0.10, digits with the
classifier only), fp16_rmse (<= 0.01); each per model as `<model>.<figure>`.

    .venv/bin/python bench/precision.py [--quick] [--models digits DiT-S/2] --out out/bench-precision.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from odelt.calibration.quantize import QuantizeOptions, quantize_bundle
from odelt.calibration.trajectories import OrtGraphs
from odelt.calibration.variants import variant_graph_path
from odelt.exporter.bundle import load_manifest, run_chain
from odelt.exporter.export import ExportOptions, export_bundle
from odelt.models import DiT
from odelt.models.config import PRESETS

GROUP = "precision"


def load_model(name: str) -> tuple[DiT, str]:
    if name == "digits":
        try:
            from odelt.models.checkpoint import load_checkpoint
            return load_checkpoint("builtin:digits").eval(), "builtin:digits (trained)"
        except Exception as e:  # noqa: BLE001 - the bench must still run before the weights ship
            print(f"builtin:digits unavailable ({e}); using random weights", file=sys.stderr)
    torch.manual_seed(0)
    model = DiT(PRESETS[name]).eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.detach().abs().sum():
                p.normal_(0.0, 0.02)
    return model, "random weights"


def latency(bundle: Path, precision: str, batch: int, repeats: int) -> float:
    manifest = load_manifest(bundle, check_files=False)
    run = OrtGraphs(manifest, lambda spec: variant_graph_path(manifest, spec.name, precision))
    cfg, length = manifest.config, manifest.lengths[-1]
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((batch, cfg.in_channels, cfg.input_size, cfg.input_size)).astype(np.float32),
             "t": np.full((batch,), 0.5, np.float32), "dt_base": np.full((batch,), 3, np.int32),
             "y": np.zeros((batch,), np.int32)}
    for _ in range(3):                                   # warm-up: sessions, arenas
        run_chain(manifest, length, feeds, run)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_chain(manifest, length, feeds, run)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_model(name: str, quick: bool, work: Path) -> dict:
    model, weights = load_model(name)
    bundle = work / name.replace("/", "_")
    export_bundle(model, bundle, ExportOptions(layouts=("segments",)))
    small = name != "digits"
    common = dict(calib_samples=4 if quick or small else 32, eval_samples=8 if quick or small else 64,
                  schedules=("uniform:euler:4",) if quick or small else ("uniform:euler:4", "uniform:euler:8"))
    out: dict = {"weights": weights}
    for precision in ("fp16", "int8"):
        t0 = time.perf_counter()
        report = quantize_bundle(bundle, QuantizeOptions(precision, **common))
        m = report["metrics"]
        out[f"{precision}_rmse"] = m["rmse"]
        out[f"{precision}_rmse_worst"] = m["rmse_worst"]
        out[f"{precision}_fallback_layers"] = len(report["fallback"])
        out[f"{precision}_quantize_s"] = time.perf_counter() - t0
        if "fd_rel" in m:
            out[f"{precision}_fd_rel"] = m["fd_rel"]
            out[f"{precision}_fd"], out["fp32_fd"] = m["fd"], m["fd_fp32"]
        elif "fd_skipped" in m:
            out[f"{precision}_fd_skipped"] = m["fd_skipped"]
    repeats = 5 if quick else 20
    fp32, int8, fp16 = (latency(bundle, p, 8, repeats) for p in ("fp32", "int8", "fp16"))
    out.update(fp32_latency_b8_s=fp32, int8_latency_b8_s=int8, fp16_latency_b8_s=fp16,
               int8_speedup_b8=fp32 / int8, fp16_speedup_b8=fp32 / fp16, calibration=common)
    return out


def run(quick: bool = False, models: tuple[str, ...] = ("digits", "DiT-S/2")) -> dict:
    """Flat {figure: value} for the bench harness."""
    figures: dict = {"precision.machine": platform.processor() or platform.machine()}
    with tempfile.TemporaryDirectory(prefix="odelt-bench-precision-") as tmp:
        for name in models:
            for key, value in bench_model(name, quick, Path(tmp)).items():
                figures[f"precision.{name}.{key}"] = value
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", nargs="+", default=["digits", "DiT-S/2"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    figures = run(args.quick, tuple(args.models))
    text = json.dumps(figures, indent=1, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
