"""TensorRT-RTX plans: built ahead of time on any machine (no GPU needed), checked before loading.

A TensorRT-RTX plan is tied to the TensorRT-RTX version that built it (plans are not forward
compatible) and to the compute capabilities it was compiled for, not to the build machine. So the
record next to each plan (`<graph>.plan.json`) holds the library version, the targets, the graph
hash, the precision and the shape profile, and the cache key is a hash of exactly those inputs:
never of the plan bytes (two identical builds can differ in a few bytes).

Loading checks, in order, each refused with one line (EngineMismatch):
  1. the 64-byte header: magic `vtrt`, the plan size it declares (a truncated file), the library
     version it was built with, the target bitmask vs this GPU's compute capability. The layout
     (size at 0x10, version bytes at 0x18, target mask at 0x20) was read off TensorRT-RTX 1.7.1 plans
     and is undocumented; a real build in the test suite checks it still holds;
  2. the library's own `Runtime.get_engine_validity`: without a GPU it can only tell a malformed
     buffer (diagnostic MALFORMED_ENGINE); with one it also reports version, compute-capability,
     driver and memory problems.
Deserialising, the runtime cache and inference need a supported GPU and are not exercised here.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx

from odelt.engines.graph import graph_digest, graph_precision, load_graph
from odelt.engines.platform import manifest_path, query_gpu, read_record_json
from odelt.engines.rtx_targets import COMPUTE, expected_mask
from odelt.engines.tensorrt import BuildConfig, build, make_logger
from odelt.engines.trt_caps import import_library
from odelt.errors import BackendUnavailable, BuildError, EngineMismatch, RuntimeFailure
from odelt.fileio import write_bytes_atomic, write_json_atomic

LIBRARY = "tensorrt-rtx"
MAGIC = b"vtrt"
HEADER_BYTES = 64
RECORD_FORMAT = 1
NEEDS_GPU = ("an NVIDIA GPU TensorRT-RTX supports (compute capability "
             + ", ".join(c.cc for c in COMPUTE.values()) + ") with its driver")


@dataclass(frozen=True)
class Header:
    size: int                      # plan bytes the header declares
    version: tuple[int, ...]       # TensorRT-RTX major, minor, patch, build
    mask: int                      # target bitmask (rtx_targets.COMPUTE)

    @property
    def version_str(self) -> str:
        return ".".join(map(str, self.version))

    def targets(self) -> tuple[str, ...]:
        return tuple(c.cc for c in COMPUTE.values() if self.mask & c.mask)


def read_header(data: bytes, name: str) -> Header:
    if len(data) < HEADER_BYTES or data[:4] != MAGIC:
        raise EngineMismatch(f"engine {name} is not a TensorRT-RTX plan (no `vtrt` header): rebuild it "
                             "with `odelt-export build BUNDLE --backend tensorrt-rtx --force`")
    size = struct.unpack_from("<Q", data, 0x10)[0]
    return Header(size, tuple(data[0x18:0x1C]), data[0x20])


@dataclass(frozen=True)
class RtxRecord:
    library_version: str
    compute_capabilities: tuple[str, ...]   # () = the library's default targets
    graph_sha256: str
    precision: str
    shape_ranges: dict                          # input name -> [min, opt, max] shapes
    options: dict
    cache_key: str
    plan_bytes: int
    weights_bytes: int | None               # "Total Weights Memory" from the build log
    build_s: float
    backend: str = LIBRARY
    format: int = RECORD_FORMAT

    @classmethod
    def read(cls, plan_path: Path) -> RtxRecord:
        p = manifest_path(plan_path)
        d = read_record_json(p, f"engine {plan_path.name} has no record {p.name}: rebuild it")
        try:
            d["compute_capabilities"] = tuple(d["compute_capabilities"])
            return cls(**d)
        except (ValueError, KeyError, TypeError) as e:
            raise EngineMismatch(f"engine record {p} is unreadable ({e}); rebuild the engine") from None


def cache_key(version: str, bc: BuildConfig, digest: str, precision: str) -> str:
    """Hash of the build's inputs: library version, targets, graph hash, precision, shape profile
    and the builder options that change the plan."""
    ident = [LIBRARY, version, list(bc.compute_capabilities), digest, precision,
             json.dumps(bc.options(), sort_keys=True)]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:32]


def planned_key(onnx_path: Path, bc: BuildConfig) -> tuple[str, str, str]:
    """(cache key, graph digest, graph precision) without building: what a build would produce."""
    _, version = import_library(LIBRARY)
    model = load_graph(onnx_path)
    digest = graph_digest(onnx_path, model)
    prec = graph_precision(model)
    return cache_key(_v(version), bc, digest, prec), digest, prec


def engine_from_onnx(onnx_path: Path, bc: BuildConfig, out_path: Path) -> RtxRecord:
    """Build the plan for `onnx_path` and write it, then its record, atomically."""
    if bc.library != LIBRARY:
        raise BuildError(f"odelt.engines.rtx builds TensorRT-RTX plans, not {bc.library}")
    _, version = import_library(LIBRARY)
    key, digest, prec = planned_key(onnx_path, bc)
    t0 = time.perf_counter()
    plan = build(onnx_path, bc, version, prec)
    seconds = time.perf_counter() - t0
    shape_ranges = {name: [list(lo), list(opt), list(hi)] for name, lo, opt, hi in bc.shape_ranges}
    record = RtxRecord(_v(version), bc.compute_capabilities, digest, prec, shape_ranges, bc.options(), key,
                       len(plan.data), plan.weights_bytes(), round(seconds, 3))
    manifest_path(out_path).unlink(missing_ok=True)   # plan first, record last
    write_bytes_atomic(out_path, plan.data)
    write_json_atomic(manifest_path(out_path), asdict(record), indent=2, sort_keys=True)
    return record


def check_plan(data: bytes, name: str, record: RtxRecord, here_version: str, gpu_cc: str | None) -> Header:
    """Header checks that need no GPU (gpu_cc None: skip the target check)."""
    header = read_header(data, name)
    if header.size != len(data):
        raise EngineMismatch(f"engine {name} is truncated or padded: its header declares {header.size} bytes, "
                             f"the file has {len(data)}; rebuild it")
    if header.version_str != here_version or record.library_version != here_version:
        raise EngineMismatch(f"engine {name} was built with TensorRT-RTX {header.version_str}, this machine "
                             f"has {here_version} (plans are not portable across versions): rebuild it with "
                             "`odelt-export build BUNDLE --backend tensorrt-rtx --force`")
    if header.mask != expected_mask(record.compute_capabilities):
        raise EngineMismatch(f"engine {name}: header targets {header.mask:#04x} do not match its record "
                             f"{list(record.compute_capabilities) or 'default'}; rebuild it")
    if gpu_cc is not None and gpu_cc not in header.targets():
        built = ", ".join(f"sm{cc.replace('.', '')}" for cc in header.targets())
        hint = ("TensorRT-RTX has no target for it: use `--backend tensorrt`"
                if gpu_cc not in {c.cc for c in COMPUTE.values()} else
                f"rebuild with `--backend tensorrt-rtx --target sm{gpu_cc.replace('.', '')}`")
        raise EngineMismatch(f"engine {name} was built for {built}; this GPU is sm{gpu_cc.replace('.', '')}: {hint}")
    return header


def library_validity(mod: Any, data: bytes, name: str) -> None:
    """TensorRT-RTX's own header check. Without a GPU it returns INVALID with no diagnostic for any
    well-formed plan (it cannot read the GPU's properties): that is reported as the missing GPU."""
    runtime = mod.Runtime(make_logger(mod))
    validity, diagnostics = runtime.get_engine_validity(data)
    if validity.name in ("VALID", "SUBOPTIMAL"):
        return
    bits = [d for d in mod.EngineInvalidityDiagnostics.__members__.values() if int(diagnostics) & int(d)]
    if not bits:
        raise BackendUnavailable(f"TensorRT-RTX cannot check engine {name} on this machine: it needs {NEEDS_GPU}")
    raise EngineMismatch(f"TensorRT-RTX refuses engine {name}: {', '.join(b.name for b in bits)}; rebuild it")


@dataclass
class LoadedRtxEngine:
    engine: Any
    runtime: Any         # kept alive as long as the engine
    record: RtxRecord


def this_gpu() -> str:
    try:
        return query_gpu()[1]
    except BackendUnavailable:
        raise BackendUnavailable(f"TensorRT-RTX engines run only on {NEEDS_GPU}; none found here") from None


def load_engine(plan_path: Path, gpu_cc: str | None = None) -> LoadedRtxEngine:
    """Check and deserialise a plan. `gpu_cc` overrides this machine's GPU (tests)."""
    mod, version = import_library(LIBRARY)
    plan_path = Path(plan_path)
    data = plan_path.read_bytes()
    record = RtxRecord.read(plan_path)
    check_plan(data, plan_path.name, record, _v(version), None)        # before looking for a GPU
    check_plan(data, plan_path.name, record, _v(version), gpu_cc or this_gpu())
    library_validity(mod, data, plan_path.name)
    runtime = mod.Runtime(make_logger(mod))
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise RuntimeFailure(f"TensorRT-RTX could not deserialize {plan_path.name}; rebuild it")
    return LoadedRtxEngine(engine, runtime, record)


def initializer_bytes(onnx_path: Path) -> dict[str, int]:
    """ONNX initializer bytes by element type name ("INT8", "FLOAT", ...), from shapes only."""
    out: dict[str, int] = {}
    for init in load_graph(onnx_path).graph.initializer:
        n = 1
        for d in init.dims:
            n *= int(d)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        name = onnx.TensorProto.DataType.Name(init.data_type)
        out[name] = out.get(name, 0) + n * dtype.itemsize
    return out


def _v(v: tuple[int, ...]) -> str:
    return ".".join(map(str, v))
