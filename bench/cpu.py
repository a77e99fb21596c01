"""Bench group `cpu` (issue 22 §4): every backend x precision this CPU supports, beside PyTorch.

Workloads: a DiT-S/2-shaped model (random weights with the zero-initialised final layer and biases
filled, so the output is not 0) at batch 1 and 8, and builtin:digits (the shipped model) at batch 8;
each exported as one per-length graph at its full length (DiT-S/2: l = 12, digits: l = 8), INT8
(trt and cpu flavours) and FP16 variants made by the project's own `quantize_bundle` (calibrated
along trajectories, accuracy-guarded). Paths (cpu_paths.py), all one thread, all in this process:

  ort_fp32 ort_int8_trt ort_int8_cpu ort_fp16       ONNX Runtime on the bundle's graphs
  ov_fp32 ov_bf16 ov_fp16                           OpenVINO on the FP32 graph, inference precision hint
  ov_int8_f32 ov_int8_bf16                          OpenVINO on our INT8 Q/DQ graph (trt flavour),
                                                    f32 / bf16 for what the graph leaves in float
  torch_eager_fp32 torch_eager_bf16 torch_compile_fp32 torch_compile_bf16   the PyTorch peer

BF16 paths run only where the CPU has BF16 instructions (avx512_bf16 or amx_bf16), ov_fp16 only with
avx512_fp16 or amx_fp16; elsewhere their status says "unsupported" and they have no number.
Timing: two warm-up calls each, then every path called in turn inside each repeat (round-robin, so
load changes hit all of them), median. Accuracy: the final sample of a 4-step Euler run (t = 0, .25,
.5, .75; shortcut level 2) from the same noise through each path, RMSE against ort_fp32's sample,
relative to that sample's RMS. The guard: relative RMSE <= the project's quantize limit for the
path's precision class (odelt.calibration.quantize.MAX_RMSE: 0.05 for int8 paths, 0.01 for every
other path). GFLOP/s: the forward's flops (PyTorch's flop counter on the same model) / time, and
that over the same library's GEMM peak at that precision (cpu_paths.gemm_calls: 1024^3, timed in
the same round-robin as the paths, so load hits both alike).

    PYTHONPATH=$PWD .venv/bin/python bench/run.py --only cpu [--quick] --out FILE.json
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cpu_paths import (
    GEMM_N,
    TimedPath,
    forward_flops,
    gemm_calls,
    ort_path,
    ov_path,
    torch_path,
)

ISA_FLAGS = ("avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")
STEPS, LEVEL = 4, 2                      # the accuracy sample: 4 uniform Euler steps, dt_base = log2(4)
MAIN_BATCH = 8


@dataclass(frozen=True)
class Setting:
    repeats: int                         # timed rounds (every path and every GEMM probe once per round)
    calib_samples: int                   # quantize_bundle: calibration noise samples
    eval_samples: int                    # quantize_bundle: held-out samples of its guard
    schedule: str                        # quantize_bundle: the calibration / guard schedule
    workloads: tuple[tuple[str, int], ...]   # (model, batch); the first model at MAIN_BATCH is the headline
    compile: bool                        # run the torch.compile paths (seconds to minutes of compiling)


def setting(quick: bool, smoke: bool) -> Setting:
    if smoke:      # seconds: a tiny DiT instead of DiT-S/2, no torch.compile
        return Setting(3, 2, 2, "uniform:euler:2", (("tiny", MAIN_BATCH),), False)
    if quick:      # the CI setting, < ~5 minutes on the 2-core machine
        return Setting(5, 4, 4, "uniform:euler:2", (("dits2", MAIN_BATCH),), True)
    return Setting(9, 4, 4, "uniform:euler:4", (("dits2", MAIN_BATCH), ("dits2", 1), ("digits", MAIN_BATCH)), True)


# -- the machine ------------------------------------------------------------------------------------
def cpu_info() -> tuple[str, tuple[str, ...]]:
    """(model name, the ISA_FLAGS found in /proc/cpuinfo). Elsewhere than Linux: the platform's name, ()."""
    import platform

    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), ()
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    flags = {f for ln in text.splitlines() if ln.startswith("flags") for f in ln.split(":", 1)[1].split()}
    return name or platform.machine(), tuple(f for f in ISA_FLAGS if f in flags)


def unsupported(precision: str, isa: tuple[str, ...]) -> str | None:
    """Why a bf16/fp16 path has no number on this CPU (the instruction sets the runtime's own rule
    asks for: odelt.engines.openvino.native_precisions), else None."""
    from odelt.engines import NATIVE_ISA, native_precisions

    if precision in NATIVE_ISA and precision not in native_precisions(isa):
        return f"unsupported: no {' or '.join(NATIVE_ISA[precision])} on this CPU"
    return None


# -- models and their bundles -----------------------------------------------------------------------
def load_model(key: str):
    """(DiT in eval mode, its full length, what its weights are)."""
    import torch

    from odelt.models import PRESETS, DiT, DiTConfig

    if key == "digits":
        from odelt.models import load_checkpoint

        model = load_checkpoint("builtin:digits").eval()
        return model, model.config.depth, "builtin:digits (trained)"
    config = PRESETS["DiT-S/2"] if key == "dits2" else DiTConfig(
        input_size=8, in_channels=4, out_channels=4, hidden_size=32, depth=4, num_heads=2, depth_group=2,
        depth_min=2)
    torch.manual_seed(0)
    model = DiT(config).eval()
    with torch.no_grad():       # the default init zeroes the final layer (and biases): output would be 0
        for p in model.parameters():
            if not p.detach().abs().sum():
                p.normal_(0.0, 0.02)
    return model, config.depth, "random weights, non-zero final layer"


def make_graphs(model, length: int, s: Setting, tmp: Path) -> tuple[dict[str, Path], dict]:
    """{variant: per-length graph file} for fp32, fp16, int8_cpu, int8_trt, and their guard figures."""
    from odelt.bundle import open_bundle
    from odelt.calibration import QuantizeOptions, quantize_bundle
    from odelt.exporter import ExportOptions, export_bundle

    fp32, a, b = tmp / "fp32", tmp / "a", tmp / "b"
    t0 = time.perf_counter()
    export_bundle(model, fp32, ExportOptions(layouts=("per-length",), lengths=(length,)))
    figures: dict = {"export_s": round(time.perf_counter() - t0, 1)}
    shutil.copytree(fp32, a)
    shutil.copytree(fp32, b)
    for bundle, precision, flavour, key in ((a, "fp16", "trt", "fp16"), (a, "int8", "cpu", "int8_cpu"),
                                            (b, "int8", "trt", "int8_trt")):
        print(f"cpu:   quantize {key}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        report = quantize_bundle(bundle, QuantizeOptions(precision, s.calib_samples, (s.schedule,),
                                                         s.eval_samples, flavour=flavour))
        figures.update({f"quantize_{key}_s": round(time.perf_counter() - t0, 1),
                        f"quantize_{key}_guard_rmse": report["metrics"]["rmse"],
                        f"quantize_{key}_fallback_layers": len(report["fallback"])})
    name = f"length_{length}"
    graphs = {"fp32": open_bundle(fp32).graph_path(name), "fp16": open_bundle(a).graph_path(name, "fp16"),
              "int8_cpu": open_bundle(a).graph_path(name, "int8"), "int8_trt": open_bundle(b).graph_path(name, "int8")}
    return graphs, figures


# -- the paths --------------------------------------------------------------------------------------
# name -> (library, precision, graph variant or None for torch, OpenVINO hint / torch (compiled, bf16))
PATHS: dict[str, tuple] = {
    "ort_fp32": ("ort", "fp32", "fp32", None),
    "ort_int8_trt": ("ort", "int8", "int8_trt", None),
    "ort_int8_cpu": ("ort", "int8", "int8_cpu", None),
    "ort_fp16": ("ort", "fp16", "fp16", None),
    "ov_fp32": ("openvino", "fp32", "fp32", "f32"),
    "ov_bf16": ("openvino", "bf16", "fp32", "bf16"),
    "ov_fp16": ("openvino", "fp16", "fp32", "f16"),
    "ov_int8_f32": ("openvino", "int8", "int8_trt", "f32"),
    "ov_int8_bf16": ("openvino", "int8", "int8_trt", "bf16"),
    "torch_eager_fp32": ("torch", "fp32", None, (False, False)),
    "torch_eager_bf16": ("torch", "bf16", None, (False, True)),
    "torch_compile_fp32": ("torch", "fp32", None, (True, False)),
    "torch_compile_bf16": ("torch", "bf16", None, (True, True)),
}
HINT_PRECISION = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


def path_status(name: str, isa: tuple[str, ...], s: Setting) -> str | None:
    """Why a path does not run here (None: it runs). The hardware need is the float precision it
    computes in: ort_fp16 runs anywhere (ONNX Runtime's own kernels), OpenVINO and torch need BF16 / FP16."""
    library, precision, _, extra = PATHS[name]
    if library == "openvino":
        if importlib.util.find_spec("openvino") is None:
            return "unsupported: openvino is not installed (pip install openvino)"
        return unsupported(HINT_PRECISION[extra], isa)
    if library == "torch":
        if extra[0] and not s.compile:
            return "skipped: torch.compile off in the smoke setting"
        return unsupported(precision, isa)
    return None


def make_path(name: str, graphs: dict[str, Path], model, length: int, extras: dict, x: np.ndarray) -> TimedPath:
    library, precision, variant, extra = PATHS[name]
    if library == "ort":
        return ort_path(graphs[variant], precision, extras)
    if library == "openvino":
        return ov_path(graphs[variant], precision, extra, extras, x.shape[0], x.shape[1:])
    return torch_path(model, length, extras, bf16=extra[1], compiled=extra[0])


def euler_sample(path: TimedPath, noise: np.ndarray) -> np.ndarray:
    x, h = noise.copy(), 1.0 / STEPS
    for k in range(STEPS):
        x = x + h * path.call(x, np.full((x.shape[0],), k * h, np.float32))
    return x


def guard_limit(precision: str) -> float:
    from odelt.calibration import MAX_RMSE

    return MAX_RMSE["int8" if precision == "int8" else "fp16"]


# -- one workload -----------------------------------------------------------------------------------
def bench_workload(model, length: int, graphs: dict[str, Path], batch: int, isa: tuple[str, ...], s: Setting,
                   gemms: dict) -> dict:
    cfg = model.config
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((batch, cfg.in_channels, cfg.input_size, cfg.input_size)).astype(np.float32)
    extras = {"dt_base": np.full((batch,), LEVEL, np.int32),
              "y": (np.arange(batch) % cfg.num_classes).astype(np.int32)}
    out: dict = {"gflop": round(forward_flops(model, length, extras, noise) / 1e9, 3)}
    paths: dict[str, TimedPath] = {}
    for name in PATHS:
        status = path_status(name, isa, s)
        if status is None:
            t0 = time.perf_counter()
            try:           # a path that fails to build or run is recorded with its error line, not hidden
                path = make_path(name, graphs, model, length, extras, noise)
                path.call(noise, np.full((batch,), 0.5, np.float32))         # compiles / prepacks here
                out[f"{name}_first_call_s"] = round(time.perf_counter() - t0, 1)
                out.update({f"{name}_{k}": v for k, v in path.info.items()})
                paths[name] = path
            except Exception as e:  # noqa: BLE001
                status = f"error: {type(e).__name__}: {e}".splitlines()[0][:300]
        if status is not None:
            out[f"{name}_status"] = status
            print(f"cpu:   {name}: {status}", file=sys.stderr, flush=True)
    samples = {name: euler_sample(path, noise) for name, path in paths.items()}
    ref = samples["ort_fp32"]
    ref_rms = float(np.sqrt(np.mean(ref ** 2)))
    out["ref_sample_rms"] = round(ref_rms, 4)
    t_mid = np.full((batch,), 0.5, np.float32)
    calls = {**{name: lambda p=path: p.call(noise, t_mid) for name, path in paths.items()},
             **{("gemm", *key): call for key, call in gemms.items()}}
    times: dict = {name: [] for name in calls}
    load = os.getloadavg()[0]
    for _ in range(s.repeats):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    out["load_avg_before_after"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    peaks = {key: 2.0 * GEMM_N ** 3 / statistics.median(times[("gemm", *key)]) / 1e9 for key in gemms}
    out.update({f"peak_gflops_{lib}_{prec}": round(v, 1) for (lib, prec), v in peaks.items()})
    base = statistics.median(times["ort_fp32"])
    for name, path in paths.items():
        med = statistics.median(times[name])
        q1, _, q3 = statistics.quantiles(times[name], n=4) if len(times[name]) > 1 else (med, med, med)
        rel = float(np.sqrt(np.mean((samples[name] - ref) ** 2))) / ref_rms
        gflops = out["gflop"] / med
        out.update({f"{name}_ms": round(med * 1e3, 3), f"{name}_iqr_rel": round((q3 - q1) / med, 3),
                    f"{name}_speedup": round(base / med, 3), f"{name}_rmse_rel": float(f"{rel:.3g}"),
                    f"{name}_guard": "pass" if rel <= guard_limit(path.precision) else "fail",
                    f"{name}_gflops": round(gflops, 1),
                    f"{name}_peak_frac": round(gflops / peaks[path.library, path.precision], 3)})
    return out


def best(fig: dict, prefix: str) -> dict:
    """The fastest guarded non-torch path, and it against ORT FP32 and the fastest guarded torch path."""
    guarded = {n: fig[f"{prefix}{n}_ms"] for n in PATHS if fig.get(f"{prefix}{n}_guard") == "pass"}
    ours = {n: ms for n, ms in guarded.items() if not n.startswith("torch")}
    torch_ = {n: ms for n, ms in guarded.items() if n.startswith("torch")}
    if not ours:
        return {}
    name = min(ours, key=ours.get)
    out = {"best_path": name, "best_speedup_vs_ort_fp32": round(fig[f"{prefix}ort_fp32_ms"] / ours[name], 3)}
    if torch_:
        peer = min(torch_, key=torch_.get)
        out.update(best_torch_path=peer, best_vs_torch_compile=round(torch_[peer] / ours[name], 3))
    return out


def target(isa: tuple[str, ...], found: dict) -> str:
    amx = bool({"amx_bf16", "amx_int8"} & set(isa))
    need_ort, need_torch = (4.0, 1.5) if amx else (1.2, 1.0)
    got_ort, got_torch = found.get("best_speedup_vs_ort_fp32", 0.0), found.get("best_vs_torch_compile", 0.0)
    verdict = "met" if got_ort >= need_ort and got_torch >= need_torch else "missed"
    return (f"{verdict} ({'AMX' if amx else 'no AMX'}: need >= {need_ort}x ORT FP32 and >= {need_torch}x "
            f"fastest PyTorch; got {got_ort}x and {got_torch}x)")


# -- the group --------------------------------------------------------------------------------------
def run(quick: bool = False, smoke: bool = False, **_) -> dict:
    """Flat {figure: value} for the bench harness (bench/run.py)."""
    import torch

    s = setting(quick, smoke)
    name, isa = cpu_info()
    figures: dict = {"cpu_model_name": name, "cpu_isa": " ".join(isa),
                     "cpu_guard_limit_int8": guard_limit("int8"), "cpu_guard_limit_other": guard_limit("fp32"),
                     "cpu_repeats": s.repeats, "cpu_load_avg_start": round(os.getloadavg()[0], 2)}
    if importlib.util.find_spec("openvino") is not None:
        import openvino as ov

        figures["cpu_openvino_capabilities"] = " ".join(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="odelt-bench-cpu-") as tmp:
            figures.update(_measure(s, isa, Path(tmp)))
    finally:
        torch.set_num_threads(threads)
    figures["cpu_errors"] = sum(1 for k, v in figures.items() if k.endswith("_status") and str(v).startswith("error"))
    return figures


def _measure(s: Setting, isa: tuple[str, ...], tmp: Path) -> dict:
    needed: dict[str, set] = {}
    for n in PATHS:
        if path_status(n, isa, s) is None:
            needed.setdefault(PATHS[n][0], set()).add(PATHS[n][1])
    gemms = gemm_calls({k: tuple(sorted(v)) for k, v in needed.items()}, tmp)
    out: dict = {}
    models: dict = {}
    for key, batch in s.workloads:
        if key not in models:
            print(f"cpu: {key}: export + quantize", file=sys.stderr, flush=True)
            model, length, weights = load_model(key)
            graphs, figs = make_graphs(model, length, s, tmp / key)
            models[key] = (model, length, graphs)
            out.update({f"cpu_{key}_{k}": v for k, v in figs.items()})
            out.update({f"cpu_{key}_weights": weights, f"cpu_{key}_length": length})
        model, length, graphs = models[key]
        print(f"cpu: {key} b{batch}: paths", file=sys.stderr, flush=True)
        prefix = f"cpu_{key}_b{batch}_"
        out.update({prefix + k: v for k, v in bench_workload(model, length, graphs, batch, isa, s, gemms).items()})
    head = f"{s.workloads[0][0]}_b{MAIN_BATCH}"
    found = best(out, f"cpu_{head}_")
    out.update({f"cpu_{k}_{head}": v for k, v in found.items()})
    out[f"cpu_target_{head}"] = target(isa, found)
    return out


def table(fig: dict, workload: str) -> str:
    """A markdown table of one workload's paths from a run's figures (docs/cpu.md is made with this)."""
    prefix = f"cpu_{workload}_"
    rows = ["| path | ms | vs ORT FP32 | rel. RMSE, 4-step sample | guard | GFLOP/s | of library peak |",
            "|---|---|---|---|---|---|---|"]
    for name in PATHS:
        if f"{prefix}{name}_ms" in fig:
            ms, up, rmse, guard, gflops, frac = (fig[f"{prefix}{name}_{k}"] for k in
                                                 ("ms", "speedup", "rmse_rel", "guard", "gflops", "peak_frac"))
            rows.append(f"| {name} | {ms:.1f} | {up:.2f} | {rmse:.3g} | {guard} | {gflops:.1f} | {frac:.0%} |")
        else:
            rows.append(f"| {name} | {fig.get(f'{prefix}{name}_status', 'not run')} | | | | | |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    from odelt.fileio import write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI setting: under ~5 minutes")
    parser.add_argument("--smoke", action="store_true", help="a tiny DiT, few repeats, no torch.compile: seconds")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--table", type=Path, metavar="FILE.json", help="print the markdown tables of a run's JSON")
    args = parser.parse_args(argv)
    if args.table:
        fig = json.loads(args.table.read_text())
        for w in sorted({k.split("_ort_fp32_ms")[0][4:] for k in fig if k.endswith("_ort_fp32_ms")}):
            print(f"\n{w}:\n\n{table(fig, w)}")
        return
    figures = run(args.quick, args.smoke)
    if args.out:
        write_json_atomic(args.out, figures)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
