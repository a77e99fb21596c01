"""Build engines for every graph of an export bundle and record them in its manifest.

Layout inside the bundle (one folder per engine set; a set is backend x target x precision)::

    BUNDLE/engines/ort-fp32/<graph>.onnx (+ .json record)            --backend ort
    BUNDLE/engines/tensorrt-orin-nano-fp16/<graph>.plan (+ .json)    --backend tensorrt

manifest.json gains `engines`: {set name: {"backend", "target", "precision", "dir",
"graphs": {graph name: engine file relative to the bundle}, "built": backend facts}}.
A set is built in a hidden temporary folder and renamed into place only when every graph built,
so a failed or interrupted build leaves the bundle as it was.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from odelt.engines.targets import get_target
from odelt.errors import BuildError, BundleError, ConfigError
from odelt.exporter.bundle import MANIFEST, Bundle, open_bundle
from odelt.fileio import make_dir, partial_dir, rename

BACKENDS = ("ort", "tensorrt")
BUILD_PRECISIONS = ("fp32", "fp16", "int8")


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

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.precision not in BUILD_PRECISIONS:
            raise ConfigError(f"precision {self.precision!r}: expected one of {', '.join(BUILD_PRECISIONS)}")
        get_target(self.target)

    @property
    def set_name(self) -> str:
        middle = f"-{self.target}" if self.backend == "tensorrt" else ""
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


def build_bundle(bundle: str | os.PathLike, req: BuildRequest) -> dict:
    """Build the engine set `req` describes for every graph; returns its manifest entry."""
    manifest = open_bundle(bundle)
    root = manifest.root
    final = root / "engines" / req.set_name
    if final.exists() and not req.force:
        raise BuildError(f"{final} already exists; pass --force to rebuild it")
    _check_flavour(manifest, req)
    builder = _ort_builder(req) if req.backend == "ort" else _trt_builder(req, manifest)
    sources = {name: graph_source(manifest, name, req.precision) for name in sorted(manifest.graphs)}
    if req.backend == "ort" and not all(typed for _, typed in sources.values()):
        raise BundleError(f"the bundle has no {req.precision} graphs (ONNX Runtime runs the graph as "
                          f"written): run `odelt-export quantize BUNDLE --precision {req.precision}` first")
    tmp = partial_dir(root / "engines", req.set_name)
    graphs: dict[str, str] = {}
    facts: dict = {}
    try:
        for name, (src, typed) in tqdm(sources.items(), desc=f"build {req.set_name}", unit="graph", disable=None,
                                       leave=False):
            facts = builder(name, src, typed, tmp)
            graphs[name] = f"engines/{req.set_name}/{facts.pop('file')}"
        entry = {"backend": req.backend, "target": req.target if req.backend == "tensorrt" else None,
                 "precision": req.precision, "dir": f"engines/{req.set_name}", "graphs": graphs,
                 "built": facts}
        with manifest.edit() as change:                   # swap and record under the bundle's lock
            _swap_in(tmp, final)
            change.set("engines", req.set_name, entry, files=_set_files(final, root))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp.parent.is_dir() and not any(tmp.parent.iterdir()):
            tmp.parent.rmdir()  # leave no empty engines/ behind a failed first build
    return entry


def _set_files(folder: Path, root: Path) -> list[str]:
    """Every file of an engine set (engines and their JSON records), relative to the bundle."""
    return sorted(p.relative_to(root).as_posix() for p in folder.rglob("*") if p.is_file())


def _check_flavour(manifest: Bundle, req: BuildRequest) -> None:
    """TensorRT's Q/DQ layers take signed INT8 with zero point 0 only: the CPU flavour cannot build."""
    if req.backend == "tensorrt" and req.precision == "int8" and manifest.int8_flavour == "cpu":
        raise BuildError(f"{manifest.root}: the int8 variant is the ONNX Runtime CPU flavour (uint8 activations), "
                          "which TensorRT cannot build; expected the trt flavour: re-quantize with "
                          "`odelt-export quantize BUNDLE --precision int8 --int8-flavour trt`")


def _swap_in(tmp: Path, final: Path) -> None:
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    if final.exists():
        rename(final, old)
    try:
        rename(tmp, final)
    except BaseException:
        if old.exists():
            rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _ort_builder(req: BuildRequest) -> BuildOne:
    from odelt.engines import ort as ort_engines

    options = ort_engines.OrtEngineOptions(format=req.ort_format)

    def build(name: str, src: Path, typed: bool, out_dir: Path) -> dict:
        out = out_dir / f"{name}.{req.ort_format}"
        eng = ort_engines.engine_from_onnx(src, out, options)
        return {"file": out.name, "onnxruntime_version": eng.record["onnxruntime_version"],
                "machine": eng.record["machine"], "providers": list(options.providers)}

    return build


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
            profiles=trt_engines.profiles_from(manifest.graph(name).profile(batch)),
            precision="auto" if typed else req.precision, optimization_level=req.optimization_level,
            use_dla=req.use_dla, target=req.target, timing_cache=str(timing))
        out = out_dir / f"{name}{trt_engines.PLAN_SUFFIX}"
        res = trt_engines.engine_from_onnx(src, bc, out, cache_dir=cache, force=req.force)
        p = res.manifest.platform
        return {"file": out.name, "trt_version": p.trt_version, "gpu": p.gpu_name,
                "compute_capability": p.compute_capability, "jetpack": p.jetpack, "l4t": p.l4t}

    return build


__all__ = ["BACKENDS", "BUILD_PRECISIONS", "BuildRequest", "build_bundle", "graph_source", "MANIFEST"]
