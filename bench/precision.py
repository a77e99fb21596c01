"""Bench group `precision` (issue 6 §3): INT8 / FP16 variants vs FP32 on ONNX Runtime CPU.

For each model (digits: builtin:digits when its weights are shipped, else random weights, said so in
`<model>.weights`; DiT-S/2: random weights, with the zero-initialised final layer and biases filled so
the output is not trivially zero): export the segments layout, then add, from the same FP32 graphs,
same calibration noise and same schedules,

  * bundle A: the fp16 variant and the int8 variant in the ``cpu`` flavour (uint8 activations, what
    ONNX Runtime CPU fuses into MatMulIntegerToFloat), and
  * bundle B: the int8 variant in the ``trt`` flavour (signed symmetric Q/DQ for TensorRT),

each through `quantize_bundle` and its accuracy guard (fallback layers are counted). Latency: one
network evaluation at the full length (cond -> chunks -> head), batch 8, one ONNX Runtime intra-op
thread (the runtime's default, and the only setting that is stable on a shared 2-core machine),
every variant timed in turn inside each repeat (side by side, so load changes hit all of them),
medians. The load average (os.getloadavg) before and after the timings is recorded: compare runs
only at similar load.

Figures, per model as `<model>.<figure>`:
  int8_speedup_b8      FP32 / INT8 (cpu flavour) latency, target >= 1.5 (ratio of medians; _paired:
                       median of the per-repeat ratios)
  int8_engine_speedup_b8  the same between built ORT engines of both (odelt.engines.ort: ONNX Runtime's
                       transformer fusions + offline optimisation), what the runtime deploys
  int8_trt_speedup_b8  the same for the trt flavour (what the CPU does with TensorRT's graph)
  int8_rmse            final samples INT8 (cpu) vs FP32, pooled over runs, target <= 0.05 (_worst: worst run)
  int8_fd_rel          |FD(INT8) - FD(FP32)| / FD(FP32), digits only, classifier, >= 256 pooled samples, <= 0.10
  fp16_rmse            target <= 0.01
  int8_fused_matmuls   MatMulIntegerToFloat nodes ORT builds from the cpu flavour (of int8_block_linears)
  int8_speedup_bound_linears_b8, _products_b8  Amdahl's bound on int8_speedup_b8: FP32 chain time / the
                       same chain with the blocks' linears (or all their products) replaced by
                       zero-cost stand-ins (ablation, extrapolated): what INT8 could reach if those
                       products took no time at all (fp32_block_*_share_b8: their share of FP32 time)

`--quick` (the CI setting, < 5 minutes on the 2-core machine): fewer calibration samples, and a
smaller DiT-S/2 workload (exported at its full length only, calibrated along uniform:euler:2).

    .venv/bin/python bench/precision.py [--quick] [--models digits DiT-S/2] --out out/bench-precision.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from odelt.bundle import Bundle, open_bundle, run_chain  # noqa: E402
from odelt.calibration import OrtGraphs, QuantizeOptions, analyse, fused_ops, name_nodes, quantize_bundle  # noqa: E402
from odelt.exporter import ExportOptions, export_bundle  # noqa: E402
from odelt.models import PRESETS, DiT  # noqa: E402

GROUP = "precision"
BATCH = 8


@dataclass(frozen=True)
class Workload:
    """How much calibration / evaluation / timing one model gets."""

    lengths: tuple[int, ...] | None          # exported lengths (None: all trained lengths)
    calib_samples: int
    eval_samples: int
    schedules: tuple[str, ...]
    repeats: int

    def options(self, precision: str, flavour: str = "trt") -> QuantizeOptions:
        return QuantizeOptions(precision, self.calib_samples, self.schedules, self.eval_samples, flavour=flavour)


def workload(name: str, quick: bool, smoke: bool = False) -> Workload:
    if smoke:              # proves the code runs: one length, one 2-step schedule, few samples
        return Workload((PRESETS[name].lengths[-1],), 4, 4, ("uniform:euler:2",), 3)
    if name == "digits":   # cheap: FD needs eval_samples x schedules x 4 lengths >= 256 pooled samples
        return Workload(None, 16 if quick else 32, 32 if quick else 64, ("uniform:euler:4", "uniform:euler:8"),
                        30 if quick else 100)
    full = PRESETS[name].lengths[-1]
    if quick:              # one length, a 2-step schedule: ~2 s per FP32 evaluation at batch 8
        return Workload((full,), 4, 8, ("uniform:euler:2",), 9)
    return Workload(None, 8, 8, ("uniform:euler:4",), 15)


def load_model(name: str) -> tuple[DiT, str]:
    if name == "digits":
        try:
            from odelt.models import load_checkpoint
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


def _feeds(manifest: Bundle) -> dict[str, np.ndarray]:
    cfg, rng = manifest.config, np.random.default_rng(0)
    return {"x": rng.standard_normal((BATCH, cfg.in_channels, cfg.input_size, cfg.input_size)).astype(np.float32),
            "t": np.full((BATCH,), 0.5, np.float32), "dt_base": np.full((BATCH,), 3, np.int32),
            "y": np.zeros((BATCH,), np.int32)}


class EngineGraphs(OrtGraphs):
    """run_graph over ORT engines (odelt.engines.ort), opened as recorded: optimisations off."""

    def session(self, spec):
        from odelt.engines import session_from_engine

        if spec.name not in self._sessions:
            self._sessions[spec.name] = session_from_engine(self.path_of(spec), self.threads)
        return self._sessions[spec.name]


def build_engines(variants: dict[str, tuple[Path, str]], keys: tuple[str, ...], tmp: Path) -> dict:
    """ORT engines (fusions + offline optimisation) of the named variants' graphs, in tmp/engines/<key>."""
    from odelt.engines import engine_from_onnx

    out = {}
    for key in keys:
        bundle, precision = variants[key]
        manifest = open_bundle(bundle)
        folder = tmp / "engines" / key
        folder.mkdir(parents=True, exist_ok=True)
        for name in manifest.graphs:
            engine_from_onnx(manifest.graph_path(name, precision), folder / f"{name}.onnx")
        out[f"{key}_engine"] = (bundle, precision, folder, True)
    return out


def _graphs(manifest: Bundle, precision: str, folder: Path | None, engines: bool, threads: int) -> OrtGraphs:
    """run_graph for a variant: the bundle's graphs at `precision`, or the graphs in `folder` (ORT
    engines, or ablated copies of some graphs) where it holds one, the bundle's elsewhere."""
    def path_of(spec, m=manifest):
        mine = folder / f"{spec.name}.onnx" if folder is not None else None
        return mine if mine is not None and mine.is_file() else m.graph_path(spec.name, precision)
    return (EngineGraphs if engines else OrtGraphs)(manifest, path_of, threads)


def latencies(variants: dict[str, tuple], repeats: int, threads: int = 1) -> dict[str, list[float]]:
    """{variant: seconds per full-length evaluation at batch 8}, variants interleaved in every repeat.
    A variant is (bundle, precision) for its graphs, or (bundle, precision, folder, engines) for the
    graphs in a folder beside the bundle: its ORT engines (engines=True) or an ablation's graphs."""
    runs = {}
    for key, (bundle, precision, *side) in variants.items():
        manifest = open_bundle(bundle)
        folder, engines = side if side else (None, False)
        runs[key] = (manifest, _graphs(manifest, precision, folder, engines, threads), _feeds(manifest))
    for manifest, graphs, feeds in runs.values():          # warm-up: sessions, arenas, prepacked weights
        for _ in range(2):
            run_chain(manifest, manifest.lengths[-1], feeds, graphs)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for key, (manifest, graphs, feeds) in runs.items():
            t0 = time.perf_counter()
            run_chain(manifest, manifest.lengths[-1], feeds, graphs)
            times[key].append(time.perf_counter() - t0)
    return times


def _free_products(model: onnx.ModelProto, weights_only: bool, twice: bool) -> int:
    """Replace block products A @ B by a near-free op of the same output shape: A's first column
    times B's first row (broadcast; a weight's row is constant-folded), i.e. one elementwise pass
    over the output. `weights_only`: only products with a weight (the linears INT8 quantises here),
    else also attention's. `twice`: the stand-in applied again to its own output (same kernels,
    same shape), to measure what the stand-ins cost. Returns how many products were replaced."""
    from onnx import helper, numpy_helper

    weights = {i.name for i in model.graph.initializer}
    nodes, count = [], 0
    for node in model.graph.node:
        if node.op_type != "MatMul" or (weights_only and node.input[1] not in weights):
            nodes.append(node)
            continue
        (a, b), y = node.input, node.output[0]
        row, first = f"{y}_row", f"{y}_once" if twice else y
        nodes.append(helper.make_node("Slice", [b, "free_0", "free_1", "free_rows"], [row]))
        for src, out in ((a, first), (first, y)) if twice else ((a, y),):
            nodes += [helper.make_node("Slice", [src, "free_0", "free_1", "free_last"], [f"{out}_col"]),
                      helper.make_node("Mul", [f"{out}_col", row], [out])]
        count += 1
    model.graph.initializer.extend(numpy_helper.from_array(np.array([v], np.int64), name) for name, v in
                                   (("free_0", 0), ("free_1", 1), ("free_last", -1), ("free_rows", -2)))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def _ablated(fp32: Path, tmp: Path, key: str, weights_only: bool, twice: bool) -> tuple[Path, str, Path, bool]:
    """The FP32 bundle's chunk graphs with stand-ins, written into a folder of their own beside it
    (the bundle itself is never edited: its integrity check refuses modified graphs); the other
    graphs run from the bundle."""
    folder = tmp / f"bound-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    manifest = open_bundle(fp32)
    for name, spec in manifest.graphs.items():
        if spec.kind == "chunk":
            model = onnx.load(str(manifest.graph_path(name)))
            _free_products(model, weights_only, twice)
            onnx.save(model, str(folder / f"{name}.onnx"))
    return fp32, "fp32", folder, False


def int8_bound(fp32: Path, tmp: Path, repeats: int, threads: int = 1) -> dict:
    """Amdahl's bound on FP32 / INT8 at batch 8, by ablation: the FP32 chain timed beside copies whose
    block products (what INT8 may speed up: embedders, final layer and conditioning stay FP32) are
    replaced by near-free stand-ins, once (T1) and twice in a row (T2); 2*T1 - T2 extrapolates to
    stand-ins of zero cost. bound = T(FP32) / that: what INT8 would reach if its products took no
    time and quantising activations cost nothing. For the linears (what we quantise) and for every
    product (attention's too; its Transpose and scaling stay, so that bound leans low). None when
    noise makes the extrapolation non-positive. ORT's profiler cannot give these shares on small
    graphs: profiling made the digits chain 3x slower (measured)."""
    variants = {"fp32": (fp32, "fp32")}
    for scope, weights_only in (("linears", True), ("products", False)):
        for twice in (False, True):
            key = f"{scope}{int(twice) + 1}"
            variants[key] = _ablated(fp32, tmp, key, weights_only, twice)
    med = {k: statistics.median(v) for k, v in latencies(variants, repeats, threads).items()}
    out: dict = {}
    for scope in ("linears", "products"):
        free = 2 * med[f"{scope}1"] - med[f"{scope}2"]
        out[f"int8_speedup_bound_{scope}_b8"] = round(med["fp32"] / free, 3) if free > 0 else None
        out[f"fp32_block_{scope}_share_b8"] = round(1 - free / med["fp32"], 3)
    return out


def fusion(bundle: Path) -> dict[str, int]:
    """How many block linears of the int8 graphs ORT really runs as MatMulIntegerToFloat."""
    manifest = open_bundle(bundle)
    fused = linears = 0
    for name in manifest.graphs:
        linears += len(analyse(name_nodes(onnx.load(str(manifest.graph_path(name))))).block_linears)
        path = manifest.graph_path(name, "int8")
        if path != manifest.graph_path(name):
            fused += fused_ops(path).get("MatMulIntegerToFloat", 0)
    return {"int8_fused_matmuls": fused, "int8_block_linears": linears}


def _accuracy(report: dict, prefix: str, seconds: float) -> dict:
    m = report["metrics"]
    out = {f"{prefix}_rmse": m["rmse"], f"{prefix}_rmse_worst": m["rmse_worst"],
           f"{prefix}_fallback_layers": len(report["fallback"]), f"{prefix}_quantize_s": round(seconds, 1)}
    if "fd_rel" in m:
        out.update({f"{prefix}_fd_rel": m["fd_rel"], f"{prefix}_fd": m["fd"], "fp32_fd": m["fd_fp32"],
                    "fd_samples": int(m.get("fd_samples", 0)) or None})
    elif "fd_skipped" in m:
        out[f"{prefix}_fd_skipped"] = m["fd_skipped"]
    return {k: v for k, v in out.items() if v is not None}


def quantise_all(fp32: Path, work: Workload, tmp: Path) -> tuple[dict, dict[str, tuple[Path, str]]]:
    """fp16 + int8(cpu) in one copy of the FP32 bundle, int8(trt) in another; accuracy figures."""
    cpu, trt = tmp / "a", tmp / "b"
    shutil.copytree(fp32, cpu)
    shutil.copytree(fp32, trt)
    out: dict = {}
    for bundle, precision, flavour, prefix in ((cpu, "fp16", "trt", "fp16"), (cpu, "int8", "cpu", "int8"),
                                               (trt, "int8", "trt", "int8_trt")):
        t0 = time.perf_counter()
        print(f"  quantize {precision} {flavour if precision == 'int8' else ''}", file=sys.stderr, flush=True)
        report = quantize_bundle(bundle, work.options(precision, flavour))
        out.update(_accuracy(report, prefix, time.perf_counter() - t0))
    variants = {"fp32": (fp32, "fp32"), "int8": (cpu, "int8"), "int8_trt": (trt, "int8"), "fp16": (cpu, "fp16")}
    return out, variants


def bench_model(name: str, quick: bool, tmp: Path, threads: int = 1, smoke: bool = False) -> dict:
    model, weights = load_model(name)
    work = workload(name, quick, smoke)
    tmp = tmp / name.replace("/", "_")
    fp32 = tmp / "fp32"
    t0 = time.perf_counter()
    lengths = export_bundle(model, fp32, ExportOptions(layouts=("segments",), lengths=work.lengths)).lengths
    out: dict = {"weights": weights, "export_s": round(time.perf_counter() - t0, 1),
                 "calibration": {"calib_samples": work.calib_samples, "eval_samples": work.eval_samples,
                                 "schedules": list(work.schedules), "lengths": lengths}}
    accuracy, variants = quantise_all(fp32, work, tmp)
    out.update(accuracy)
    out.update(fusion(variants["int8"][0]))
    out.update(int8_bound(fp32, tmp, work.repeats, threads))
    engines = build_engines(variants, ("fp32", "int8"), tmp)
    load_before = os.getloadavg()
    times = latencies({**variants, **engines}, work.repeats, threads)
    out.update(load_avg_timing=[round(x, 2) for x in (*load_before, *os.getloadavg()[:1])], threads=threads,
               repeats=work.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    for key, v in times.items():
        q1, _, q3 = statistics.quantiles(v, n=4)
        out[f"{key}_latency_b8_s"] = med[key]
        out[f"{key}_latency_iqr_rel"] = round((q3 - q1) / med[key], 3)
    for key in ("int8", "int8_trt", "fp16"):
        out[f"{key}_speedup_b8"] = med["fp32"] / med[key]
        # the same from each repeat's own pair (timed back to back): robust to load drifting between repeats
        out[f"{key}_speedup_b8_paired"] = statistics.median(a / b for a, b in zip(times["fp32"], times[key]))
    # deployed as built ORT engines (fused GELU / skip-LayerNorm, optimised offline), both precisions
    out["int8_engine_speedup_b8"] = med["fp32_engine"] / med["int8_engine"]
    out["int8_engine_speedup_b8_paired"] = statistics.median(
        a / b for a, b in zip(times["fp32_engine"], times["int8_engine"]))
    return out


def run(quick: bool = False, models: tuple[str, ...] = ("digits", "DiT-S/2"), threads: int = 1,
        smoke: bool = False) -> dict:
    """Flat {figure: value} for the bench harness (smoke: digits only, tiny workload)."""
    models = ("digits",) if smoke else models
    figures: dict = {"precision.machine": platform.processor() or platform.machine(),
                     "precision.load_avg_start": [round(x, 2) for x in os.getloadavg()]}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="odelt-bench-precision-") as tmp:
        for name in models:
            print(f"precision: {name}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            for key, value in bench_model(name, quick, Path(tmp), threads, smoke).items():
                figures[f"precision.{name}.{key}"] = value
            figures[f"precision.{name}.seconds"] = round(time.perf_counter() - t0, 1)
    figures["precision.seconds"] = round(time.perf_counter() - start, 1)
    figures["precision.load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", nargs="+", default=["digits", "DiT-S/2"])
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads for the timings")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    figures = run(args.quick, tuple(args.models), args.threads)
    text = json.dumps(figures, indent=1, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(f".{args.out.name}.partial")
        tmp.write_text(text)
        os.replace(tmp, args.out)
    print(text)


if __name__ == "__main__":
    main()
