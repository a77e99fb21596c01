"""Bench group `runtime` (issue 4): the numpy runtime over ONNX Runtime (CPU) against PyTorch eager.

Figures (all measured in this run, side by side):
  runtime_overhead_frac          time outside backend calls / wall time, batch 1, digits, euler 8 steps
                                 (sums over repeats); _floor_frac: the bare Euler loop beside it
  ort_vs_torch_speedup_b1, _b8   PyTorch eager reference sampler time / runtime time (FP32 graphs),
                                 DiT-S/2-sized model (random weights), same schedule (uniform:euler:4,
                                 full length), one thread each (PyTorch and ONNX Runtime: on this
                                 shared 2-core machine two threads made both bimodal); the runtime is
                                 timed in a torch-free child process
  fp32_speedup_bound_b1, _b8     PyTorch time / the time the FP32 FLOPs take at one thread's MatMul
                                 throughput (timed in every repeat beside the runtime): the most any
                                 FP32 runtime could reach here; _runtime_gemm_efficiency: ours vs it
  ort_int8_vs_torch_speedup_b1, _b8  the same with the runtime on the bundle's INT8 variant (cpu
                                 flavour, calibrated along the same schedule; int8_rmse_vs_fp32 beside)
  length_latency_ratio_error     max over lengths |(lat(l)/lat(L)) / (FLOPs(l)/FLOPs(L)) - 1|, DiT-S/2,
                                 per network call at batch 8 (also _b1); FLOPs count the forward at l
  rss_reuse_over_naive           highest RSS after sampling calls, runtime (bound reused buffers, one
                                 arena shared by the chain's sessions) / a loop where every call
                                 allocates (session.run, an arena per session), DiT-S/2 batch 8, separate
                                 torch-free processes; _bindings_only: reused buffers without the shared
                                 arena (process peaks beside them)
  sampler_parity_max_abs         runtime vs PyTorch sampler on the same noise, max over every solver
                                 (digits) and DiT-S/2 euler
  soak_rss_growth                RSS growth over 1,000 consecutive generate calls in one torch-free
                                 process, relative to the RSS after warm-up (digits, batch 1)
Timings are medians over repeats. The machine is shared: absolute times are noisy.

    .venv/bin/python bench/run.py --only runtime [--quick] --out out/bench-runtime.json
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from precision import load_model  # bench/ is on the path (bench/run.py)

from odelt.exporter import ExportOptions, export_bundle
from odelt.models import DiT, DiTConfig
from odelt.runtime import SOLVERS, Sampler, make_labels, make_noise, open_backend, resolve_schedule, torch_sample

GROUP = "runtime"
ROOT = Path(__file__).resolve().parents[1]


def flops(cfg: DiTConfig, length: int) -> float:
    """FLOPs (2 x MACs) of one forward at `length`, batch 1: live blocks, embeddings, final layer."""
    n, d, p, c = cfg.num_tokens, cfg.hidden_size, cfg.patch_size, cfg.in_channels
    mlp = int(d * cfg.mlp_ratio)
    block = 4 * n * d * d + 2 * n * n * d + 2 * n * d * mlp + 6 * d * d     # qkv+proj, attention, MLP, adaLN
    embed = n * p * p * c * d + 2 * (cfg.frequency_embedding_size * d + d * d)
    final = n * d * p * p * cfg.out_channels + 2 * d * d
    return 2.0 * (cfg.live_depth(length) * block + embed + final)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def overhead(bundle, repeats: int) -> dict:
    """Timed in a fresh torch-free process, as on a device (bench/overhead.py): in this process,
    after two exports with torch, the host loop ran ~20% slower, the floor alike (measured)."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "overhead.py"), str(bundle.root), str(repeats)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"overhead child failed: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


_TIME_SCRIPT = """
import json, statistics, sys, time
import numpy as np
from odelt.onnxrt import open_session
from onnx import TensorProto, helper, numpy_helper
from odelt.bundle import open_bundle
from odelt.runtime import Sampler, make_labels, make_noise, open_backend, resolve_schedule
bundle, batch, repeats, precisions = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(",")
m = open_bundle(bundle)
cfg = m.config
s = resolve_schedule("uniform:euler:4", max(m.lengths))
x0, y = make_noise(batch, batch, (cfg.in_channels, cfg.input_size, cfg.input_size)), make_labels(batch, cfg.num_classes)
backends = {p: open_backend("ort", m, precision=p, threads=1).__enter__() for p in precisions}
samplers = {p: Sampler(be, m, s) for p, be in backends.items()}
# The FP32 ceiling, timed in every repeat beside the samplers: one thread's MatMul on the model's
# MLP shape (its largest GEMM).
rows, d, h = batch * cfg.num_tokens, cfg.hidden_size, int(cfg.hidden_size * cfg.mlp_ratio)
w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((d, h)).astype(np.float32), "w")
g = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["b"])], "gemm",
                      [helper.make_tensor_value_info("a", TensorProto.FLOAT, [rows, d])],
                      [helper.make_tensor_value_info("b", TensorProto.FLOAT, [rows, h])], [w])
gemm = open_session(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), threads=1, spinning=True)
a = {"a": np.random.default_rng(1).standard_normal((rows, d)).astype(np.float32)}
times, outs = {p: [] for p in [*precisions, "gemm"]}, {}
for p, sampler in samplers.items():
    outs[p] = sampler.sample(x0, y)[0]
for _ in range(repeats):                      # precisions take turns: load drift hits them alike
    for p, sampler in samplers.items():
        t0 = time.perf_counter()
        sampler.sample(x0, y)
        times[p].append(time.perf_counter() - t0)
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        gemm.run(None, a)
        runs.append(time.perf_counter() - t0)
    times["gemm"].append(min(runs))
rmse = {p: float(np.sqrt(np.mean((outs[p] - outs["fp32"]) ** 2))) for p in precisions}
gflops = 2 * rows * d * h / statistics.median(times.pop("gemm")) / 1e9   # best of 3 per repeat: a ceiling
print(json.dumps({"median_s": {p: statistics.median(v) for p, v in times.items()}, "rmse": rmse, "gemm_gflops": gflops}))
"""


def speedup(dit: DiT, bundle, batch: int, repeats: int) -> dict:
    """The runtime runs in a fresh torch-free process (as on a device): two thread pools that
    spin-wait (torch's OpenMP and ONNX Runtime's) in one process fight over 2 cores and would
    slow whichever runs second. PyTorch runs here, with no ONNX Runtime session open."""
    schedule = resolve_schedule("uniform:euler:4", max(bundle.lengths))
    cfg = bundle.config
    x0 = make_noise(batch, batch, (cfg.in_channels, cfg.input_size, cfg.input_size))
    y = make_labels(batch, cfg.num_classes)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch_sample(dit, schedule, x0, y)                     # warm up
        a = _median_time(lambda: torch_sample(dit, schedule, x0, y), repeats)
    finally:
        torch.set_num_threads(threads)
    r = subprocess.run([sys.executable, "-c", _TIME_SCRIPT, str(bundle.root), str(batch), str(repeats), "fp32,int8"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"runtime timing child failed: {r.stderr.strip().splitlines()[-1:]}")
    child = json.loads(r.stdout.strip().splitlines()[-1])
    b, q = child["median_s"]["fp32"], child["median_s"]["int8"]
    return {f"ort_vs_torch_speedup_b{batch}": round(a / b, 3), f"ort_int8_vs_torch_speedup_b{batch}": round(a / q, 3),
            f"torch_eager_ms_b{batch}": round(1e3 * a, 2), f"runtime_ms_b{batch}": round(1e3 * b, 2),
            f"runtime_int8_ms_b{batch}": round(1e3 * q, 2),
            f"runtime_int8_rmse_vs_fp32_b{batch}": round(child["rmse"]["int8"], 5),
            **_fp32_bound(cfg, batch, schedule.nfe, a, b, child["gemm_gflops"])}


def _fp32_bound(cfg: DiTConfig, batch: int, calls: int, torch_s: float, runtime_s: float, gflops: float) -> dict:
    """The most any FP32 runtime could beat PyTorch by on this CPU: every FLOP of the sampling run at
    one thread's MatMul throughput (timed beside the runtime), nothing else costing anything; and
    the share of that throughput the runtime reaches end to end."""
    floor_s = calls * batch * flops(cfg, max(cfg.lengths)) / (gflops * 1e9)
    return {f"fp32_gemm_gflops_1thread_b{batch}": round(gflops, 1),
            f"fp32_speedup_bound_b{batch}": round(torch_s / floor_s, 3),
            f"fp32_runtime_gemm_efficiency_b{batch}": round(floor_s / runtime_s, 3)}


def add_int8(bundle) -> None:
    """The INT8 variant (cpu flavour) of the DiT-S/2 bundle, calibrated along the timed schedule."""
    from odelt.calibration import QuantizeOptions, quantize_bundle

    quantize_bundle(bundle.root, QuantizeOptions("int8", calib_samples=4, schedules=("uniform:euler:4",),
                                                 eval_samples=4, flavour="cpu"))


def length_ratio(bundle, batch: int, repeats: int) -> dict:
    cfg = bundle.config
    feeds = {"x": make_noise(0, batch, (cfg.in_channels, cfg.input_size, cfg.input_size)),
             "t": np.full(batch, 0.5, np.float32), "dt_base": np.full(batch, 7, np.int32),
             "y": make_labels(batch, cfg.num_classes)}
    times: dict[int, list[float]] = {n: [] for n in bundle.lengths}
    with open_backend("ort", bundle) as be:
        per_length = {n: {**feeds, "l": np.full(batch, n, np.int32)} for n in bundle.lengths}
        for f in per_length.values():
            be.infer(f)
        for _ in range(repeats):                   # lengths interleaved: load drift hits all alike
            for n, f in per_length.items():
                times[n].append(_median_time(lambda: be.infer(f), 1))
    lat = {n: statistics.median(v) for n, v in times.items()}
    top = max(lat)
    errors = [abs((lat[n] / lat[top]) / (flops(cfg, n) / flops(cfg, top)) - 1) for n in lat]
    out = {f"length_latency_ratio_error{'' if batch == 8 else f'_b{batch}'}": round(max(errors), 4)}
    out.update({f"length_latency_ms_l{n}_b{batch}": round(1e3 * v, 3) for n, v in lat.items()})
    return out


def parity(digits: DiT, digits_bundle, s2: DiT, s2_bundle, solvers=tuple(SOLVERS)) -> dict:
    worst = 0.0
    x0, y = make_noise(3, 4, (1, 8, 8)), make_labels(4, digits.config.num_classes)
    with open_backend("ort", digits_bundle) as be:
        for name in solvers:
            schedule = resolve_schedule(f"cosine:{name}:6", max(digits_bundle.lengths))
            out, _ = Sampler(be, digits_bundle, schedule).sample(x0, y)
            worst = max(worst, float(np.abs(out - torch_sample(digits, schedule, x0, y)).max()))
    cfg = s2.config
    x0, y = make_noise(4, 2, (cfg.in_channels, cfg.input_size, cfg.input_size)), make_labels(2, cfg.num_classes)
    schedule = resolve_schedule("uniform:euler:4", max(s2_bundle.lengths))
    with open_backend("ort", s2_bundle) as be:
        out, _ = Sampler(be, s2_bundle, schedule).sample(x0, y)
    worst = max(worst, float(np.abs(out - torch_sample(s2, schedule, x0, y)).max()))
    return {"sampler_parity_max_abs": worst}


# Run in fresh, torch-free processes: RSS then belongs to the runtime alone.
_RSS_SCRIPT = """
import json, resource, sys
import numpy as np
from odelt.bundle import open_bundle
from odelt.runtime import Sampler, make_labels, make_noise, open_backend, resolve_schedule

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

bundle, mode, batch, calls, schedule = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
m = open_bundle(bundle)
cfg = m.config
s = resolve_schedule(schedule, max(m.lengths))
x0 = make_noise(0, batch, (cfg.in_channels, cfg.input_size, cfg.input_size))
y = make_labels(batch, cfg.num_classes)
rss, during = [], 0.0
with open_backend("ort", m, naive=mode == "naive", shared_arena=mode == "reuse") as be:
    loaded = rss_mb()
    sampler = Sampler(be, m, s)
    for i in range(calls):
        sampler.sample(x0, y)
        during = max(during, rss_mb())
        if i in (min(99, calls - 1), calls - 1):
            rss.append(rss_mb())
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_mb": rss,
                  "loaded_mb": loaded, "sampling_peak_mb": during}))
"""


def _rss_child(bundle: Path, mode: str, batch: int, calls: int, schedule: str) -> dict:
    r = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(bundle), mode, str(batch),
                        str(calls), schedule], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"RSS child failed: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def memory(s2_bundle: Path, digits_bundle: Path, quick: bool, smoke: bool = False) -> dict:
    calls = 5 if quick else 20
    reuse = _rss_child(s2_bundle, "reuse", 8, calls, "uniform:euler:4")
    naive = _rss_child(s2_bundle, "naive", 8, calls, "uniform:euler:4")
    bound = _rss_child(s2_bundle, "bindings", 8, calls, "uniform:euler:4")
    soak = _rss_child(digits_bundle, "reuse", 1, 200 if smoke else 1000, "uniform:euler:4")
    start, end = soak["rss_mb"]
    # ru_maxrss is set while ONNX Runtime loads the sessions (identical in both modes), so the
    # figure compares the highest RSS seen after sampling calls; the process peaks are kept beside it.
    return {"rss_reuse_over_naive": round(reuse["sampling_peak_mb"] / naive["sampling_peak_mb"], 4),
            "rss_sampling_peak_mb_reuse_b8": round(reuse["sampling_peak_mb"], 1),
            "rss_sampling_peak_mb_naive_b8": round(naive["sampling_peak_mb"], 1),
            "rss_reuse_over_naive_bindings_only": round(bound["sampling_peak_mb"] / naive["sampling_peak_mb"], 4),
            "rss_after_load_mb_b8": round(reuse["loaded_mb"], 1),
            "rss_peak_mb_reuse_b8": round(reuse["peak_mb"], 1), "rss_peak_mb_naive_b8": round(naive["peak_mb"], 1),
            "soak_rss_growth": round((end - start) / start, 5), "soak_rss_mb_after_100": round(start, 1),
            "soak_rss_mb_after_1000": round(end, 1)}


def run(quick: bool = False, smoke: bool = False) -> dict:
    """smoke: the digits model stands in for DiT-S/2 (same figures, tiny sizes: they only prove the code runs)."""
    reps = 2 if smoke else 5 if quick else 20
    with tempfile.TemporaryDirectory() as tmp:
        digits, note = load_model("digits")
        s2, _ = load_model("digits" if smoke else "DiT-S/2")
        d_bundle = export_bundle(digits, Path(tmp) / "digits", ExportOptions(layouts=("segments",)))
        s2_bundle = export_bundle(s2, Path(tmp) / "dits2", ExportOptions(layouts=("segments",)))
        out: dict = {"runtime_digits_weights": note}
        stages = [("overhead", lambda: overhead(d_bundle, 20 if smoke else 100 if quick else 300)),
                  ("int8 variant", lambda: add_int8(s2_bundle) or {}),
                  ("speedup b1", lambda: speedup(s2, s2_bundle, 1, reps)),
                  ("speedup b8", lambda: speedup(s2, s2_bundle, 8, 3 if quick else reps)),
                  ("length ratio b8", lambda: length_ratio(s2_bundle, 8, reps)),
                  ("length ratio b1", lambda: length_ratio(s2_bundle, 1, 3 * reps)),
                  ("parity", lambda: parity(digits, d_bundle, s2, s2_bundle, ("euler", "heun") if smoke else SOLVERS)),
                  ("memory", lambda: memory(s2_bundle.root, d_bundle.root, quick, smoke))]
        for name, stage in stages:
            t0 = time.perf_counter()
            out.update(stage())
            print(f"runtime: {name} {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
        out["runtime_torch_threads"] = torch.get_num_threads()
    return out
