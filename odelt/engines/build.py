"""Build engines for every graph of an export bundle and record them in its manifest.

Layout inside the bundle (one folder per engine set; a set is backend x target x precision)::

    BUNDLE/engines/ort-fp32/<graph>.onnx (+ .json record)            --backend ort
    BUNDLE/engines/tensorrt-orin-nano-fp16/<graph>.plan (+ .json)    --backend tensorrt
    BUNDLE/engines/tensorrt-rtx-portable-int8/<graph>.plan (+ .json) --backend tensorrt-rtx
    BUNDLE/engines/openvino-cpu-bf16/<graph>.blob (+ .json)          --backend openvino --device CPU

manifest.json gains `engines`: {set name: {"backend", "target", "precision", "dir",
"graphs": {graph name: engine file relative to the bundle}, "built": backend facts}}.
A set is built in a hidden temporary folder and renamed into place only when every graph built,
so a failed or interrupted build leaves the bundle as it was. A TensorRT-RTX set is keyed by its
inputs (odelt/engines/rtx_build.py): rebuilding it unchanged is a no-op, `force` rebuilds.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from odelt.engines.rtx_targets import get_rtx_targets, set_label
from odelt.engines.targets import get_target
from odelt.errors import BuildError, BundleError, ConfigError
from odelt.bundle.bundle import MANIFEST, Bundle, open_bundle
from odelt.fileio import make_dir, partial_dir, swap_in_dir

BACKENDS = ("ort", "tensorrt", "tensorrt-rtx", "openvino")
TYPED_ONLY = ("ort", "tensorrt-rtx")   # run the graph's own precision: need the bundle's variant
BUILD_PRECISIONS = ("fp32", "fp16", "int8", "bf16")   # bf16: OpenVINO only (an inference precision hint)
OV_HINTED = ("bf16", "fp16")           # OpenVINO lowers the FP32 graphs itself (accuracy-guarded)


@dataclass(frozen=True)
class BuildRequest:
    backend: str
    target: str = "desktop"
    precision: str = "fp32"
    force: bool = False
    ort_format: str = "onnx"            # ORT only: "onnx" or "ort"
    optimization_level: int = 3         # TensorRT only
    use_dla: bool = False               # TensorRT only
    cache_dir: Path | None = None       # TensorRT engine + timing cache
    rtx_targets: tuple[str, ...] = ("portable",)   # TensorRT-RTX only (odelt/engines/rtx_targets.py)
    device: str = "CPU"                 # OpenVINO only: CPU | GPU | NPU | AUTO (GPU/NPU untested)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.precision not in BUILD_PRECISIONS:
            raise ConfigError(f"precision {self.precision!r}: expected one of {', '.join(BUILD_PRECISIONS)}")
        if self.use_dla and self.backend != "tensorrt":       # an option that cannot apply is an error
            raise ConfigError(f"--dla applies only to --backend tensorrt, found --backend {self.backend}")
        if self.precision == "bf16" and self.backend != "openvino":
            raise ConfigError(f"precision bf16 is built by --backend openvino only, found --backend {self.backend}")
        if self.backend == "openvino":
            from odelt.engines.openvino import OvEngineOptions

            OvEngineOptions(self.device, self.precision)      # its one-line error for a bad device
        elif self.backend == "tensorrt-rtx":
            get_rtx_targets(self.rtx_targets)
        else:
            get_target(self.target)

    @property
    def set_name(self) -> str:
        if self.backend == "tensorrt-rtx":
            return f"{self.backend}-{set_label(get_rtx_targets(self.rtx_targets))}-{self.precision}"
        middle = (f"-{self.target}" if self.backend == "tensorrt" else
                  f"-{self.device.lower()}" if self.backend == "openvino" else "")
        return f"{self.backend}{middle}-{self.precision}"


def graph_source(manifest: Bundle, name: str, precision: str) -> tuple[Path, bool]:
    """(ONNX file to build from, whether it already holds `precision`).

    FP16/INT8 graphs are the bundle's precision variants written by `odelt-export quantize`
    (recorded under the bundle's `precisions`). Without one the FP32 graph is returned: TensorRT 8.x can still
    build it with precision flags; ONNX Runtime and TensorRT >= 10 refuse."""
    if precision in manifest.precisions:
        return manifest.graph_path(name, precision), True
    return manifest.graph_path(name), False


BuildOne = Callable[[str, Path, bool, Path], dict]


class Guard(Protocol):
    """An accuracy guard for an OpenVINO bf16/fp16 set (odelt/calibration/ov_guard.py): `check` gets the
    set's folder and {graph: engine file} once every graph built; it returns None when the set passes,
    else {graph: node names} to keep in FP32 on the next round (it raises AccuracyError when none are left)."""

    def check(self, graphs: dict[str, Path]) -> dict[str, tuple[str, ...]] | None: ...

    def report(self) -> dict: ...


def build_bundle(bundle: str | os.PathLike, req: BuildRequest, guard: Guard | None = None) -> dict:
    """Build the engine set `req` describes for every graph; returns its manifest entry (with
    "up_to_date": True, and nothing written, when a TensorRT-RTX set already matches its inputs).
    `guard` checks an OpenVINO bf16/fp16 set along real trajectories and sends layers back to FP32."""
    manifest = open_bundle(bundle)
    root = manifest.root
    final = root / "engines" / req.set_name
    _check_flavour(manifest, req)
    hinted = req.backend == "openvino" and req.precision in OV_HINTED      # lowered from the FP32 graphs
    sources = {name: graph_source(manifest, name, "fp32" if hinted else req.precision) for name in sorted(manifest.graphs)}
    typed_only = req.backend in TYPED_ONLY or (req.backend == "openvino" and req.precision == "int8")
    if typed_only and not all(typed for _, typed in sources.values()):
        runs = ("ONNX Runtime runs" if req.backend == "ort" else "OpenVINO compiles the Q/DQ graph of" if
                req.backend == "openvino" else "TensorRT-RTX builds strongly typed from")
        raise BundleError(f"the bundle has no {req.precision} graphs ({runs} the graph as "
                          f"written): run `odelt-export quantize BUNDLE --precision {req.precision}` first")
    if req.backend == "tensorrt-rtx":
        builder, finish = _rtx_builder(req, manifest, sources, final)
        current = manifest.engine_sets.get(req.set_name)
        if finish is None:
            assert current is not None
            return {**current, "up_to_date": True}
    else:
        if final.exists() and not req.force:
            raise BuildError(f"{final} already exists; pass --force to rebuild it")
        builder = (_ort_builder(req) if req.backend == "ort" else _ov_builder(req, {}) if req.backend == "openvino"
                   else _trt_builder(req, manifest))
        finish = _last_facts
    tmp = partial_dir(root / "engines", req.set_name)
    graphs: dict[str, str] = {}
    per_graph: dict[str, dict] = {}
    try:
        guarded = guard is not None and req.backend == "openvino" and req.precision in OV_HINTED
        while True:
            _build_all(req, sources, builder, tmp, graphs, per_graph)
            keep = guard.check({n: tmp / Path(f).name for n, f in graphs.items()}) if guard and guarded else None
            if keep is None:
                break
            builder = _ov_builder(req, keep)
        if req.backend == "openvino":
            per_graph = {"": _ov_summary(per_graph, guard.report() if guard and guarded else None, req.precision)}
        target = (req.target if req.backend == "tensorrt" else
                  set_label(get_rtx_targets(req.rtx_targets)) if req.backend == "tensorrt-rtx" else
                  req.device if req.backend == "openvino" else None)
        entry = {"backend": req.backend, "target": target, "precision": req.precision,
                 "dir": f"engines/{req.set_name}", "graphs": graphs, "built": finish(per_graph)}
        with manifest.edit() as change:                   # swap and record under the bundle's lock
            swap_in_dir(tmp, final)
            change.set("engines", req.set_name, entry, files=_set_files(final, root))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp.parent.is_dir() and not any(tmp.parent.iterdir()):
            tmp.parent.rmdir()  # leave no empty engines/ behind a failed first build
    return entry


def _build_all(req: BuildRequest, sources: dict[str, tuple[Path, bool]], builder: BuildOne, tmp: Path,
               graphs: dict[str, str], per_graph: dict[str, dict]) -> None:
    """One engine per graph into `tmp`, a progress bar over the graphs."""
    bar = tqdm(sources.items(), desc=f"build {req.set_name}", unit="graph", disable=None, leave=False)
    for name, (src, typed) in bar:
        bar.set_postfix_str(name)
        facts = builder(name, src, typed, tmp)
        graphs[name] = f"engines/{req.set_name}/{facts.pop('file')}"
        per_graph[name] = facts


def _set_files(folder: Path, root: Path) -> list[str]:
    """Every file of an engine set (engines and their JSON records), relative to the bundle."""
    return sorted(p.relative_to(root).as_posix() for p in folder.rglob("*") if p.is_file())


def _last_facts(per_graph: dict[str, dict]) -> dict:
    return dict(list(per_graph.values())[-1]) if per_graph else {}


def _rtx_builder(req: BuildRequest, manifest: Bundle, sources: dict[str, tuple[Path, bool]],
                 final: Path) -> tuple[BuildOne, Callable[[dict[str, dict]], dict] | None]:
    """(builder, record maker), or a None record maker when the set is already up to date."""
    from odelt.engines import rtx_build
    from odelt.engines.trt_caps import import_library

    import_library("tensorrt-rtx")  # BackendUnavailable here, before any work
    configs = rtx_build.build_configs(manifest, req)
    keys = rtx_build.planned_keys(sources, configs)
    current = manifest.engine_sets.get(req.set_name)
    builder = rtx_build.rtx_builder(configs, keys, final, req.force)
    if not req.force and rtx_build.up_to_date(current, keys, manifest.root):
        return builder, None
    return builder, lambda per_graph: rtx_build.summary(per_graph, req, configs)


def _check_flavour(manifest: Bundle, req: BuildRequest) -> None:
    """TensorRT's and TensorRT-RTX's Q/DQ layers take signed INT8 with zero point 0 only: the CPU
    flavour cannot build."""
    if req.backend in ("tensorrt", "tensorrt-rtx") and req.precision == "int8" and manifest.int8_flavour == "cpu":
        lib = "TensorRT-RTX" if req.backend == "tensorrt-rtx" else "TensorRT"
        raise BuildError(f"{manifest.root}: the int8 variant is the ONNX Runtime CPU flavour (uint8 activations, "
                          f"non-zero zero points), which {lib} cannot build; expected the trt flavour: re-quantize "
                          "with `odelt-export quantize BUNDLE --precision int8 --int8-flavour trt`")


def _ort_builder(req: BuildRequest) -> BuildOne:
    from odelt.engines import ort as ort_engines

    options = ort_engines.OrtEngineOptions(format=req.ort_format)

    def build(name: str, src: Path, typed: bool, out_dir: Path) -> dict:
        out = out_dir / f"{name}.{req.ort_format}"
        eng = ort_engines.engine_from_onnx(src, out, options)
        return {"file": out.name, "onnxruntime_version": eng.record["onnxruntime_version"],
                "machine": eng.record["machine"], "providers": list(options.providers)}

    return build


def _ov_builder(req: BuildRequest, keep: dict[str, tuple[str, ...]]) -> BuildOne:
    from odelt.engines import openvino as ov_engines

    ov_core = ov_engines.core()
    ov_engines.check_device(ov_core, req.device)     # BackendUnavailable here, before any work

    def build(name: str, src: Path, typed: bool, out_dir: Path) -> dict:
        nodes = tuple(keep.get(name, ()))
        options = (ov_engines.OvEngineOptions(req.device, "fp32") if nodes == (ov_engines.WHOLE_GRAPH,)  # the guard's
                   else ov_engines.OvEngineOptions(req.device, req.precision, nodes))       # whole-decoder fallback
        out = out_dir / f"{name}{ov_engines.BLOB_SUFFIX}"
        rec = ov_engines.engine_from_onnx(src, out, options, name, ov_core)
        return {"file": out.name, **rec}

    return build


def _ov_summary(per_graph: dict[str, dict], guard: dict | None, precision: str) -> dict:
    """The set's facts: what every graph shares, what it runs in, FP32 islands (nodes, and whole
    graphs the guard rebuilt at FP32: a decoder), the guard's verdict."""
    first = next((r for r in per_graph.values() if r.get("precision") == precision), {})
    runs: dict[str, int] = {}
    for rec in per_graph.values():
        for p, n in rec.get("runtime_precisions", {}).items():
            runs[p] = runs.get(p, 0) + n
    shared = ("openvino_version", "device", "device_name", "capabilities", "cpu_isa", "hint", "inference_precision")
    return {**{k: first.get(k) for k in shared}, "runtime_precisions": dict(sorted(runs.items())),
            "keep_fp32": {n: r["keep_fp32"] for n, r in per_graph.items() if r.get("keep_fp32")},
            "fp32_graphs": sorted(n for n, r in per_graph.items() if r.get("precision") != precision),
            "compile_s_total": round(sum(r.get("compile_s", 0.0) for r in per_graph.values()), 3),
            **({"guard": guard} if guard is not None else {})}


def _trt_builder(req: BuildRequest, manifest: Bundle) -> BuildOne:
    from odelt.engines import tensorrt as trt_engines

    version = trt_engines.require_tensorrt()  # BackendUnavailable here, before any work
    cache = req.cache_dir or Path(os.environ.get("ODELT_ENGINE_CACHE",
                                                 Path.home() / ".cache" / "odelt" / "trt"))
    make_dir(cache)
    timing = cache / f"timing-trt{'.'.join(map(str, version))}.cache"
    batch = manifest.batch

    def build(name: str, src: Path, typed: bool, out_dir: Path) -> dict:
        bc = trt_engines.BuildConfig(
            shape_ranges=trt_engines.shape_ranges_from(manifest.graph(name).shape_ranges(batch)),
            precision="auto" if typed else req.precision, optimization_level=req.optimization_level,
            use_dla=req.use_dla, target=req.target, timing_cache=str(timing))
        out = out_dir / f"{name}{trt_engines.PLAN_SUFFIX}"
        res = trt_engines.engine_from_onnx(src, bc, out, cache_dir=cache, force=req.force)
        p = res.manifest.platform
        return {"file": out.name, "trt_version": p.trt_version, "gpu": p.gpu_name,
                "compute_capability": p.compute_capability, "jetpack": p.jetpack, "l4t": p.l4t}

    return build




def describe(req: BuildRequest, entry: dict) -> str:
    """One line for the CLI: what was built (or found up to date) and its headline facts."""
    n = len(entry["graphs"])
    if entry.get("up_to_date"):
        return f"{n} {req.set_name} engines in {entry['dir']} are up to date (same inputs; --force rebuilds)"
    built = entry["built"]
    if req.backend == "openvino":
        runs = ", ".join(f"{p} {k}" for p, k in built["runtime_precisions"].items())
        facts = (f"OpenVINO {built['openvino_version'].split('-')[0]} on {built['device_name']}, inference precision "
                 f"{built['inference_precision']}, kernels {runs}, {built['compile_s_total']:.1f} s")
        if req.precision in OV_HINTED and built["inference_precision"] != {"bf16": "bf16", "fp16": "f16"}[req.precision]:
            facts += (f"; this device has no {req.precision} path ({'/'.join(built['capabilities'])}): it runs f32, "
                      "so plans do not offer it (build --precision fp32 for OpenVINO FP32 plans)")
        if "guard" in built:
            facts += f"; guard: {built['guard']['summary']}"
    elif req.backend == "tensorrt-rtx":
        facts = (f"TensorRT-RTX {built['library_version']}, sm {'/'.join(built['compute_capabilities'])}, "
                 f"{built['plan_bytes_total']} plan bytes, {built['build_s_total']:.1f} s")
    else:
        facts = ", ".join(f"{k} {v}" for k, v in built.items() if v is not None)
    return f"built {n} {req.set_name} engines in {entry['dir']} ({facts})"


__all__ = ["BACKENDS", "BUILD_PRECISIONS", "BuildRequest", "build_bundle", "describe", "graph_source", "MANIFEST"]
