"""OpenVINO engines: a bundle graph compiled ahead of time for one device and inference precision,
saved as OpenVINO's compiled-model blob (`CompiledModel.export_model`) with a JSON record.

Loading. Two ways skip compilation at load: importing the exported blob (`Core.import_model`, here
from a memory map of the file), or compiling from the ONNX file with a model cache (`CACHE_DIR`),
which hashes the graph and then loads its own cached blob. Measured side by side
(bench/openvino_load.py: every segments graph, fresh Core each, median of 7, summed; 2-core AMD EPYC,
AVX2, shared machine): DiT-S/2 import 493 ms, cache 555 ms, compile 1791 ms; digits 460 / 456 / 2105 ms.
Import from bytes read into Python first was slower than the cache (DiT-S/2 l=12 graph: 2739 vs
1778 ms; mapped: 1755 ms), so the blob is memory-mapped. Import is as fast or faster, and the blob
is a plain file inside the set, hashed and recorded by the bundle like every engine, with nothing
outside the bundle to go stale: engines are blobs.

Precision. fp32 / bf16 / fp16 set OpenVINO's INFERENCE_PRECISION_HINT (f32 / bf16 / f16) on the
bundle's FP32 graphs; int8 compiles the bundle's Q/DQ variant (trt flavour: symmetric signed, or the
cpu flavour: OpenVINO folds both into its own int8 kernels) with f32 elsewhere. A device without a
hardware path for the hint (an AVX2-only CPU has no BF16 or FP16: OPTIMIZATION_CAPABILITIES is
['FP32', 'INT8', ...]) silently runs f32: the record keeps what was asked (`precision`) and what
the compiled model runs (`inference_precision`, read back, and `runtime_precisions`, the count of
its kernels per precision), so nothing claims BF16 that is not.

FP32 islands. A node named in `keep_fp32` gets the rt_info flag `disable_fp16_compression_0`,
which OpenVINO's CPU plugin reads as "keep this node's original precision" when it lowers the rest
to bf16/f16 (the per-node precision the accuracy guard uses, odelt/calibration/ov_guard.py).

Compatibility. The blob is tied to the OpenVINO version and to the instruction sets the CPU
kernels were chosen for: the record holds both (and the device), and loading on another version
or a CPU without one of the recorded instruction sets is refused with one line.

GPU and NPU: the same calls with another device name. They are untested (no such device here);
asking for a device OpenVINO does not see here is refused with one line.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from odelt.errors import BackendUnavailable, BuildError, ConfigError, EngineMismatch, OdeltError
from odelt.fileio import atomic_path, write_json_atomic

DEVICES = ("CPU", "GPU", "NPU", "AUTO")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}   # int8: Q/DQ graph, f32 elsewhere
CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}    # OPTIMIZATION_CAPABILITIES entry that makes the hint real
BLOB_SUFFIX = ".blob"
RECORD_SUFFIX = ".json"
KEEP_FP32 = "disable_fp16_compression_0"         # rt_info key: the node keeps its own precision
WHOLE_GRAPH = "*"                                # a keep-list of just this: the whole graph compiled at FP32
# The x86 instruction sets OpenVINO's CPU kernels are chosen by (from /proc/cpuinfo flags).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")


def ov_module() -> Any:
    """openvino, imported on first use (the optional `openvino` extra)."""
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable("OpenVINO is not installed: pip install 'odelt-export[openvino]'") from None
    return openvino


def ov_version() -> str:
    return str(ov_module().get_version())


def cpu_isa(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    """The instruction sets of ISA_FLAGS this CPU has (empty where /proc/cpuinfo is absent)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return ()
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return tuple(f for f in ISA_FLAGS if f in flags)


# The instruction sets that give OpenVINO's CPU plugin a real kernel path for a hinted precision:
# without one it runs the hint as f32 (measured on an AVX2-only EPYC: inference precision f32).
NATIVE_ISA = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}


def native_precisions(isa: Iterable[str] | None = None) -> tuple[str, ...]:
    """The OpenVINO CPU precisions this CPU (cpu_isa(), or `isa`) runs as asked: fp32 and int8
    always, bf16 / fp16 only with their instructions (NATIVE_ISA)."""
    have = set(cpu_isa() if isa is None else isa)
    return ("fp32", "int8", *(p for p, flags in NATIVE_ISA.items() if have & set(flags)))


def core() -> Any:
    return ov_module().Core()


def check_device(ov_core: Any, device: str) -> None:
    """Refuse an unknown device name, or one OpenVINO does not see on this machine."""
    if device not in DEVICES:
        raise ConfigError(f"OpenVINO device {device!r}: expected one of {', '.join(DEVICES)}")
    if device in ("CPU", "AUTO"):      # always there; listing devices loads every plugin (~100 ms)
        return
    have = list(ov_core.available_devices)
    if not any(d.split(".")[0] == device for d in have):
        raise BackendUnavailable(f"OpenVINO device {device} is not present on this machine (available: "
                                 f"{', '.join(have) or 'none'}); the {device} path is untested here")


def capabilities(ov_core: Any, device: str) -> list[str]:
    try:
        return [str(c) for c in ov_core.get_property(device, "OPTIMIZATION_CAPABILITIES")]
    except Exception:  # noqa: BLE001 - AUTO and some plugins do not report it
        return []


@dataclass(frozen=True)
class OvEngineOptions:
    device: str = "CPU"
    precision: str = "fp32"
    keep_fp32: tuple[str, ...] = ()     # node names kept in FP32 when the hint is bf16/f16

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"OpenVINO precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.device not in DEVICES:
            raise ConfigError(f"OpenVINO device {self.device!r}: expected one of {', '.join(DEVICES)}")

    def config(self, threads: int = 1) -> dict[str, Any]:
        cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": HINTS[self.precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            cfg["INFERENCE_NUM_THREADS"] = threads
        return cfg


def compile_graph(onnx_path: Path, options: OvEngineOptions, name: str = "", threads: int = 1,
                  ov_core: Any = None) -> Any:
    """The graph compiled for options.device; an OpenVINO rejection is one line naming the graph,
    the node and the reason."""
    ov_core = ov_core or core()
    check_device(ov_core, options.device)
    try:
        model = ov_core.read_model(str(onnx_path))
        mark_fp32(model, options.keep_fp32)
        return ov_core.compile_model(model, options.device, options.config(threads))
    except OdeltError:
        raise
    except Exception as e:  # OpenVINO raises RuntimeError with a multi-line trace of its own
        raise rejection(e, name or Path(onnx_path).stem, Path(onnx_path)) from None


def mark_fp32(model: Any, names: Iterable[str]) -> int:
    """Flag the nodes named `names` to keep FP32; returns how many were found."""
    wanted, found = set(names), 0
    for op in model.get_ops() if wanted else ():
        if op.get_friendly_name() in wanted:
            op.get_rt_info()[KEEP_FP32] = ""
            found += 1
    return found


def rejection(e: Exception, name: str, onnx_path: Path) -> BuildError:
    """One line from OpenVINO's message: its last informative line, and the ONNX node(s) of an op
    type it names (its converter names op types, not nodes)."""
    lines = [s.strip(" -") for s in str(e).splitlines() if s.strip(" -")]
    useful = [s for s in lines if not s.startswith(("Exception from", "Check ", "FrontEnd API failed"))]
    reason = (useful or lines or [type(e).__name__])[-1]
    from odelt.engines.graph import load_graph      # onnx: not in the serving environment, which only loads

    nodes: list[str] = []
    try:
        for n in load_graph(onnx_path).graph.node:
            op = f"{n.domain}.{n.op_type}" if n.domain else n.op_type
            if op in reason.split() or f"{op}," in reason or (n.name and n.name in reason):
                nodes.append(n.name or n.op_type)
    except OdeltError:
        pass
    where = f" at node {', '.join(nodes[:3])}" if nodes else ""
    return BuildError(f"OpenVINO rejects graph {name}{where}: {reason[:300]}")


def runtime_precisions(compiled: Any) -> dict[str, int]:
    """{precision: kernels} of the compiled model as it runs (its runtime model's rt_info)."""
    counts: dict[str, int] = {}
    try:
        ops = compiled.get_runtime_model().get_ops()
    except Exception:  # noqa: BLE001 - plugins without a runtime model (NPU)
        return counts
    for op in ops:
        info = op.get_rt_info()
        if "runtimePrecision" in info:
            p = str(info["runtimePrecision"].astype(str) if hasattr(info["runtimePrecision"], "astype")
                    else info["runtimePrecision"])
            counts[p] = counts.get(p, 0) + 1
    return dict(sorted(counts.items()))


def engine_from_onnx(onnx_path: Path, out_path: Path, options: OvEngineOptions, name: str = "",
                     ov_core: Any = None) -> dict[str, Any]:
    """Compile `onnx_path`, export the compiled model to `out_path`, write its record beside it."""
    from odelt.engines.graph import graph_digest

    ov_core = ov_core or core()
    start = time.perf_counter()
    compiled = compile_graph(onnx_path, options, name, ov_core=ov_core)
    compile_s = time.perf_counter() - start
    with atomic_path(out_path, suffix=BLOB_SUFFIX) as tmp:
        blob = compiled.export_model()
        tmp.write_bytes(blob.getvalue() if hasattr(blob, "getvalue") else bytes(blob))
    record = {
        "backend": "openvino", "openvino_version": ov_version(), "device": options.device,
        "device_name": _device_name(ov_core, options.device), "capabilities": capabilities(ov_core, options.device),
        "cpu_isa": list(cpu_isa()), "precision": options.precision, "hint": HINTS[options.precision],
        "inference_precision": _type_name(compiled.get_property("INFERENCE_PRECISION_HINT")),
        "runtime_precisions": runtime_precisions(compiled), "keep_fp32": sorted(options.keep_fp32),
        "compile_s": round(compile_s, 4), "graph_sha256": graph_digest(Path(onnx_path)),
        "engine_sha256": hashlib.sha256(out_path.read_bytes()).hexdigest(),
    }
    write_json_atomic(record_path(out_path), record, indent=2, sort_keys=True)
    return record


def _type_name(t: Any) -> str:
    return str(t.get_type_name()) if hasattr(t, "get_type_name") else str(t)


def _device_name(ov_core: Any, device: str) -> str:
    try:
        return str(ov_core.get_property(device, "FULL_DEVICE_NAME"))
    except Exception:  # noqa: BLE001 - AUTO has none
        return device


def record_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + RECORD_SUFFIX)


def read_record(engine_path: Path) -> dict[str, Any]:
    p = record_path(Path(engine_path))
    try:
        return dict(json.loads(p.read_text()))
    except FileNotFoundError:
        raise EngineMismatch(f"OpenVINO engine {engine_path} has no record {p.name}; rebuild it") from None
    except ValueError as e:
        raise EngineMismatch(f"OpenVINO engine record {p} is unreadable ({e}); rebuild it") from None


def check_record(rec: dict[str, Any], engine_path: Path, isa: tuple[str, ...] | None = None) -> None:
    """Refuse an engine built by another OpenVINO version or for instructions this CPU lacks."""
    rebuild = "rebuild it here with `odelt-export build BUNDLE --backend openvino --force`"
    if rec.get("openvino_version") != ov_version():
        raise EngineMismatch(f"OpenVINO engine {engine_path.name} was built with OpenVINO {rec.get('openvino_version')}, "
                             f"this machine has {ov_version()}: {rebuild}")
    if rec.get("device", "CPU") in ("CPU", "AUTO"):
        have = set(cpu_isa() if isa is None else isa)
        missing = [f for f in rec.get("cpu_isa", []) if f not in have]
        if missing:
            raise EngineMismatch(f"OpenVINO engine {engine_path.name} was built on a CPU with {', '.join(missing)}, "
                                 f"which this CPU lacks: {rebuild}")


def load_engine(engine_path: Path, threads: int = 1, ov_core: Any = None) -> Any:
    """The compiled model of a built engine, checked against its record first."""
    engine_path = Path(engine_path)
    rec = read_record(engine_path)
    check_record(rec, engine_path)
    ov_core = ov_core or core()
    check_device(ov_core, rec.get("device", "CPU"))
    cfg = {"INFERENCE_NUM_THREADS": threads} if threads and rec.get("device", "CPU") == "CPU" else {}
    try:
        return ov_core.import_model(_mapped(engine_path), rec.get("device", "CPU"), cfg)
    except FileNotFoundError:
        raise EngineMismatch(f"OpenVINO engine {engine_path} is missing; rebuild it") from None
    except Exception as e:  # noqa: BLE001 - a corrupt blob
        first = next((s for s in str(e).splitlines() if s.strip()), type(e).__name__)
        raise EngineMismatch(f"OpenVINO cannot import engine {engine_path.name} ({first[:200]}); rebuild it") from None


_MAPS: dict[tuple[str, int, int], Any] = {}   # (path, size, mtime) -> the mapping imported models point into


def _mapped(engine_path: Path) -> Any:
    """The blob as an ov.Tensor over a memory map of the file (copy-on-write: OpenVINO wants a
    writable buffer; the file is never changed). Importing from it skips reading the whole blob
    into a Python bytes object first: DiT-S/2 l=12 (132 MB blob) 2739 -> 1755 ms, measured. The
    compiled model keeps pointing into the mapping (its weights are not copied), so the mapping
    lives as long as the process, one per engine file version (address space, not memory)."""
    import numpy as np

    st = engine_path.stat()
    key = (str(engine_path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _MAPS:
        _MAPS[key] = np.memmap(engine_path, dtype=np.uint8, mode="c")
    return ov_module().Tensor(np.asarray(_MAPS[key]), shared_memory=True)


def measure_load(onnx_path: Path, engine_path: Path, repeats: int = 5, threads: int = 1) -> dict[str, float]:
    """Median ms to get a ready compiled model three ways, taking turns: compile from ONNX, import the
    exported blob, compile from ONNX with a warm CACHE_DIR (each on a fresh Core)."""
    rec = read_record(engine_path)
    options = OvEngineOptions(rec.get("device", "CPU"), rec.get("precision", "fp32"))
    times: dict[str, list[float]] = {"compile_ms": [], "import_ms": [], "cache_ms": []}
    with tempfile.TemporaryDirectory(prefix="odelt-ov-cache-") as cache:
        warm = core()
        warm.set_property({"CACHE_DIR": cache})
        warm.compile_model(str(onnx_path), options.device, options.config(threads))
        for _ in range(repeats):
            for key, load in (("compile_ms", lambda: core().compile_model(str(onnx_path), options.device,
                                                                           options.config(threads))),
                              ("import_ms", lambda: load_engine(engine_path, threads)),
                              ("cache_ms", lambda: _cached(cache, onnx_path, options, threads))):
                t0 = time.perf_counter()
                load()
                times[key].append(1e3 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def _cached(cache: str, onnx_path: Path, options: OvEngineOptions, threads: int) -> Any:
    c = core()
    c.set_property({"CACHE_DIR": cache})
    return c.compile_model(str(onnx_path), options.device, options.config(threads))
