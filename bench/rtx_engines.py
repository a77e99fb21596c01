"""Bench: TensorRT-RTX engines built on this CPU-only machine (part of group `engines`).

Figures (all from real builds with `odelt.engines.build.build_bundle(..., backend="tensorrt-rtx")`):
  * trt_rtx_build_s_total[_<model>] and trt_rtx_build_s_<graph>[_<model>]: FP32 build wall time of the
    whole set and of each graph, portable targets, builder optimisation level 3 (the default; 0 with
    --quick, recorded as trt_rtx_build_opt_level);
    digits (builtin:digits; segments with --quick, both layouts otherwise), DiT-S/2 (random weights,
    segments) in the full run only.
  * trt_rtx_engine_over_onnx_bytes_<precision>: plan bytes / ONNX bytes (graph + external weights)
    over the digits set, for fp32, fp16 and int8 (trt flavour, small calibration settings);
    trt_rtx_weights_over_onnx_bytes_<precision>: the weight bytes the builder reports storing, over the same.
  * trt_rtx_device_weight_ratio_segments / _per_length: engine bytes / PyTorch parameter bytes of a
    DiT-B/2-shaped random model exported at lengths 4/8/12: the segment engines of one chain (every
    block once), and the three per-length engines together (blocks stored again for each length).
    Built once at optimisation level 0 (plan bytes do not depend on the level), both layouts from
    one export; the digits figures of the same ratio are reported beside them.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from odelt.bundle import open_bundle
from odelt.engines import BuildRequest, build_bundle
from odelt.exporter import ExportOptions, export_bundle
from odelt.models import PRESETS, DiT

CALIB = dict(calib_samples=4, eval_samples=8, schedules=("uniform:euler:4",))


def _key(model: str) -> str:
    return "" if model == "digits" else "_" + model.replace("/", "").replace("-", "").lower()


def _build(bundle: Path, precision: str = "fp32", level: int = 3) -> dict:
    return build_bundle(bundle, BuildRequest(backend="tensorrt-rtx", precision=precision,
                                             optimization_level=level, force=True))


def _ratio(entry: dict, names: list[str], param_bytes: int) -> float:
    return round(sum(entry["built"]["graphs"][n]["plan_bytes"] for n in names) / param_bytes, 4)


def _layout_graphs(bundle: Path, layout: str) -> list[str]:
    m = open_bundle(bundle)
    return sorted({g.name for n in m.lengths for g in m.chain(n, layout)})


def build_times(model: str, bundle: Path, level: int) -> dict:
    entry = _build(bundle, level=level)
    key = _key(model)
    out: dict = {f"trt_rtx_build_s_total{key}": round(entry["built"]["build_s_total"], 2),
                 f"trt_rtx_build_opt_level{key}": level}
    for name, facts in entry["built"]["graphs"].items():
        out[f"trt_rtx_build_s_{name.replace('-', '_')}{key}"] = round(facts["build_s"], 2)
    out[f"trt_rtx_plan_bytes_total{key}"] = entry["built"]["plan_bytes_total"]
    return out


def precision_sizes(bundle: Path) -> dict:
    from odelt.calibration import QuantizeOptions, quantize_bundle

    out = {}
    for precision in ("fp32", "fp16", "int8"):
        existing = open_bundle(bundle).engine_sets.get(f"tensorrt-rtx-portable-{precision}")
        if precision != "fp32":
            quantize_bundle(bundle, QuantizeOptions(precision, **CALIB))
        built = (existing or _build(bundle, precision, level=0))["built"]   # bytes do not depend on the level
        out[f"trt_rtx_engine_over_onnx_bytes_{precision}"] = round(built["plan_bytes_total"] / built["onnx_bytes_total"], 3)
        out[f"trt_rtx_weights_over_onnx_bytes_{precision}"] = round(built["weights_bytes_total"] / built["onnx_bytes_total"], 3)
    return out


def device_weight(bundle: Path, key: str) -> dict:
    m = open_bundle(bundle)
    entry = m.engine_sets.get("tensorrt-rtx-portable-fp32") or _build(bundle, level=0)
    param = m.param_bytes
    out: dict = {f"trt_rtx_param_bytes{key}": param}
    for layout in m.layouts:
        out[f"trt_rtx_device_weight_ratio_{layout.replace('-', '_')}{key}"] = _ratio(
            entry, _layout_graphs(bundle, layout), param)
    return out


def export(model: torch.nn.Module, out: Path, layouts: tuple[str, ...], lengths: tuple[int, ...] | None = None) -> Path:
    export_bundle(model, out, ExportOptions(layouts=layouts, lengths=lengths))
    return out


def run(work: Path, quick: bool, smoke: bool = False) -> dict:
    """smoke: digits only (no DiT-B/2 engine set: its build alone takes minutes)."""
    from precision import load_model  # bench/ is on the path (bench/run.py)

    t0 = time.perf_counter()
    digits, note = load_model("digits")
    # quick (CI, < 5 min): digits in the segments layout only; its per-length engines take 3/4 of its build time
    d = export(digits, work / "rtx_digits", ("segments",) if quick else ("segments", "per-length"))
    level = 0 if quick else 3          # quick (CI): the lowest level, to stay under 5 minutes
    out: dict = {"trt_rtx_digits_weights": note, **build_times("digits", d, level), **device_weight(d, "_digits")}
    out.update(precision_sizes(d))
    if smoke:
        return {**out, "trt_rtx_bench_s": round(time.perf_counter() - t0, 1)}
    torch.manual_seed(0)
    b2 = export(DiT(PRESETS["DiT-B/2"]).eval(), work / "rtx_b2", ("segments", "per-length"), (4, 8, 12))
    _build(b2, level=0)
    out.update(device_weight(b2, ""))
    if not quick:
        torch.manual_seed(0)
        s2 = export(DiT(PRESETS["DiT-S/2"]).eval(), work / "rtx_s2", ("segments",))
        out.update(build_times("DiT-S/2", s2, level))
    out["trt_rtx_bench_s"] = round(time.perf_counter() - t0, 1)
    return out
