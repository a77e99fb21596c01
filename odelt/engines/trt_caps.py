"""The TensorRT libraries our one builder drives, and what differs between them, as data.

Two NVIDIA libraries share one Python API shape (network, ONNX parser, builder config, optimisation
profiles, memory pools, serialised plans):

* TensorRT 8.5-11.x, `import tensorrt`: Jetson (JetPack) and data-centre/desktop GPUs. A plan runs
  only on the TensorRT version and GPU model it was built on, so it is built on the device.
* TensorRT for RTX 1.x, `import tensorrt_rtx` (pip `tensorrt-rtx-cu12`): RTX desktop and laptop
  GPUs. Its builder compiles ahead of time without any GPU or CUDA library; a plan targets a list of
  compute capabilities (sm75-sm121, no Jetson, no Hopper) and is JIT-finished on the device.

Its version numbers (1.x) say nothing about the TensorRT release it resembles, so nothing may branch
on "version < 10": every difference the builder cares about is a row of CAPS below, chosen by
(library, version range). A row is a frozen Caps; the builder reads fields, never version numbers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Mapping

from odelt.engines.targets import Version, parse_version
from odelt.errors import BackendUnavailable


@dataclass(frozen=True)
class Library:
    name: str        # backend name: "tensorrt" | "tensorrt-rtx"
    module: str      # Python import name
    label: str       # for messages
    install: str     # how to get it


LIBRARIES: dict[str, Library] = {lib.name: lib for lib in (
    Library("tensorrt", "tensorrt", "TensorRT",
            "need the `tensorrt` Python package (pip install 'odelt-export[trt]', or JetPack's python3-libnvinfer)"),
    Library("tensorrt-rtx", "tensorrt_rtx", "TensorRT-RTX",
            "need the `tensorrt_rtx` Python package (pip install 'odelt-export[rtx]', i.e. tensorrt-rtx-cu12)"),
)}


@dataclass(frozen=True)
class Caps:
    """What one library version offers the builder (see CAPS for the values and why)."""
    creation_flags: tuple[str, ...]                        # NetworkDefinitionCreationFlag names to set
    precision_flags: Mapping[str, tuple[str, ...]] | None  # BuilderFlag names per precision; None: strongly typed
    optimization_level: bool        # IBuilderConfig.builder_optimization_level exists
    timing_cache: bool              # a timing cache speeds rebuilds (TensorRT-RTX: accepted, a no-op that warns)
    runtime_cache: bool             # JIT kernels are cached at run time (IRuntimeConfig), not at build time
    compute_capabilities: bool      # plans name their target compute capabilities (set_compute_capability)
    dla: bool                       # DLA placement exists (the target and version must still have one)
    version_compatible: bool        # BuilderFlag.VERSION_COMPATIBLE builds (needs the lean runtime)
    bound_to_build_gpu: bool        # a plan runs only on the GPU model that built it

    @property
    def strongly_typed(self) -> bool:
        return self.precision_flags is None


# 8.x: weakly typed; explicit Q/DQ graphs still need the INT8 flag, FP16 lets the rest run in half.
_FLAGS_8X: Mapping[str, tuple[str, ...]] = {"fp32": (), "fp16": ("FP16",), "int8": ("FP16", "INT8")}


def _trt(creation: tuple[str, ...], precision: Mapping[str, tuple[str, ...]] | None, opt_level: bool,
         dla: bool, version_compatible: bool) -> Caps:
    return Caps(creation, precision, opt_level, timing_cache=True, runtime_cache=False,
                compute_capabilities=False, dla=dla, version_compatible=version_compatible,
                bound_to_build_gpu=True)


# (library, lowest version, highest version, both inclusive by major.minor) -> capabilities.
CAPS: tuple[tuple[str, Version, Version, Caps], ...] = (
    # 8.5 (JetPack 5): explicit batch is a creation flag; no optimisation level yet.
    ("tensorrt", (8, 5), (8, 5), _trt(("EXPLICIT_BATCH",), _FLAGS_8X, False, dla=True, version_compatible=False)),
    # 8.6: optimisation levels and version-compatible plans arrive.
    ("tensorrt", (8, 6), (9, 99), _trt(("EXPLICIT_BATCH",), _FLAGS_8X, True, dla=True, version_compatible=True)),
    # 10.x: explicit batch is the default; we ask for strongly typed networks (precision from the graph).
    ("tensorrt", (10, 0), (10, 99), _trt(("STRONGLY_TYPED",), None, True, dla=True, version_compatible=True)),
    # 11.x: always strongly typed (the flag is ignored), FP16/INT8 builder flags removed.
    ("tensorrt", (11, 0), (11, 99), _trt((), None, True, dla=True, version_compatible=True)),
    # TensorRT-RTX 1.x: always strongly typed, no precision flags, no DLA; the timing cache is a no-op
    # (kernels are JIT-compiled and cached at run time); VERSION_COMPATIBLE fails to build (no lean
    # runtime ships); plans target compute capabilities instead of the build machine's GPU.
    ("tensorrt-rtx", (1, 0), (1, 99), Caps((), None, optimization_level=True, timing_cache=False,
                                          runtime_cache=True, compute_capabilities=True, dla=False,
                                          version_compatible=False, bound_to_build_gpu=False)),
)


def capabilities(library: str, version: Version) -> Caps:
    for name, lo, hi, caps in CAPS:
        if name == library and lo <= version[:2] <= hi:
            return caps
    lib = LIBRARIES[library]
    known = ", ".join(f"{_v(lo)}-{_v(hi)}" for name, lo, hi, _ in CAPS if name == library)
    raise BackendUnavailable(f"{lib.label} {_v(version)} is not supported: expected {known}")


def import_library(library: str) -> tuple[Any, Version]:
    """(module, version) of an installed library, or BackendUnavailable naming the package."""
    lib = LIBRARIES[library]
    try:
        module: ModuleType = importlib.import_module(lib.module)
    except ImportError:
        raise BackendUnavailable(f"{lib.label} is not installed: {lib.install}") from None
    # `pip install tensorrt-stubs` leaves an empty `tensorrt` namespace package behind.
    if not hasattr(module, "Builder"):
        raise BackendUnavailable(f"`import {lib.module}` found no {lib.label} (only type stubs?): {lib.install}")
    return module, parse_version(str(module.__version__))


def _v(v: Version) -> str:
    return ".".join(map(str, v))
