"""One builder for TensorRT 8.5-11.x and TensorRT-RTX 1.x: ONNX graph -> serialized plan.

The library is a parameter (`BuildConfig.library`: "tensorrt" or "tensorrt-rtx"); the module is
imported when a build starts, so this file imports without either. What differs between the
libraries and their versions (creation flags, builder precision flags, timing vs runtime cache,
compute-capability targets, DLA, version compatibility) is the table in odelt/engines/trt_caps.py;
nothing here branches on a version number.

Precision: TensorRT 11 and TensorRT-RTX have no FP16/INT8 builder flags and
every network is strongly typed, so from TensorRT 10 on (and always with TensorRT-RTX) the precision
is whatever the ONNX graph holds (FP16 weights/casts, explicit Q/DQ). Only TensorRT 8.x gets builder
precision flags. The TensorRT-RTX path runs for real in the test suite (tests/engines/test_rtx_real.py);
the TensorRT 8.x/10.x/11.x-only branches are type-checked against the TensorRT 10.13 stubs (typings/)
and run only against a fake module here: see the README.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from odelt.engines.graph import graph_digest, graph_opset, graph_precision, load_graph
from odelt.engines.platform import (EngineManifest, Platform, cache_key, check_compatible,
                                    current_platform, manifest_path, read_manifest)
from odelt.engines.targets import Target, Version, get_target
from odelt.engines.trt_caps import LIBRARIES, Caps, capabilities, import_library
from odelt.errors import BuildError, ConfigError, RuntimeFailure
from odelt.fileio import make_dir, write_bytes_atomic, write_json_atomic

if TYPE_CHECKING:
    import tensorrt as trt

Shape = tuple[int, ...]
PRECISIONS = ("auto", "fp32", "fp16", "int8")
PLAN_SUFFIX = ".plan"
_LOG = logging.getLogger("odelt.tensorrt")
_LOG.addHandler(logging.NullHandler())   # shown only where the application configures logging
_LEVELS = {"INTERNAL_ERROR": logging.ERROR, "ERROR": logging.ERROR, "WARNING": logging.WARNING,
           "INFO": logging.DEBUG, "VERBOSE": logging.DEBUG}


@dataclass(frozen=True)
class BuildConfig:
    # (input name, min, opt, max) per dynamic input; see shape_ranges_from() for what it accepts.
    shape_ranges: tuple[tuple[str, Shape, Shape, Shape], ...] = ()
    precision: str = "auto"            # "auto": what the graph holds; else must match on >= 10
    optimization_level: int = 3        # 0..5; demoDiffusion uses 3 (4 for INT8)
    workspace_bytes: int | None = None  # None: the target's cap (if any)
    use_dla: bool = False               # only convolutions go to the DLA, never attention
    dla_core: int = 0
    target: str = "desktop"            # TensorRT target preset (targets.py); TensorRT-RTX keeps "desktop"
    library: str = "tensorrt"          # "tensorrt" | "tensorrt-rtx" (trt_caps.LIBRARIES)
    compute_capabilities: tuple[str, ...] = ()   # TensorRT-RTX ComputeCapability names; (): its default
    version_compatible: bool = False
    timing_cache: str | None = field(default=None, compare=False)  # path; speed only, not hashed

    def __post_init__(self) -> None:
        if self.library not in LIBRARIES:
            raise ConfigError(f"library {self.library!r}: expected one of {', '.join(LIBRARIES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"builder optimisation level {self.optimization_level}: expected 0..5")
        get_target(self.target)  # fail early on a bad name

    def options(self) -> dict[str, Any]:
        """What goes into the engine cache key (the timing cache only changes build speed)."""
        d = asdict(self)
        d.pop("timing_cache")
        return dict(json.loads(json.dumps(d)))  # JSON-shaped (lists), as the manifest reads back


def shape_ranges_from(io: Any) -> tuple[tuple[str, Shape, Shape, Shape], ...]:
    """Optimisation profiles from a plain mapping name -> (min, opt, max) shapes, or from any
    object with a `shape_ranges()` method returning such a mapping (the exporter's IO description)."""
    mapping = io.shape_ranges() if hasattr(io, "shape_ranges") else io
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"optimisation profiles: expected a mapping name -> (min, opt, max), "
                          f"found {type(mapping).__name__}")
    out = []
    for name, shapes in mapping.items():
        lo, opt, hi = (tuple(int(d) for d in s) for s in shapes)
        if not (len(lo) == len(opt) == len(hi)) or not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise ConfigError(f"profile for {name!r}: need equal ranks and min <= opt <= max, "
                              f"found {lo}, {opt}, {hi}")
        out.append((str(name), lo, opt, hi))
    return tuple(sorted(out))


def require_tensorrt() -> Version:
    """The installed TensorRT version, or BackendUnavailable naming the package and extra."""
    return import_library("tensorrt")[1]


def make_logger(mod: Any) -> Any:
    """An ILogger of module `mod` (tensorrt or tensorrt_rtx) that keeps every message (the last
    error says what failed; the INFO log has the stored weight bytes) and forwards them to Python
    logging instead of printing them behind the CLI's one-line errors."""
    class Collect(mod.ILogger):  # the base class is the module's, known only at run time
        def __init__(self) -> None:
            mod.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            level = getattr(severity, "name", str(severity))
            self.messages.append((level, msg))
            _LOG.log(_LEVELS.get(level, logging.DEBUG), "%s", msg)

    return Collect()


def last_error(logger: Any) -> str:
    errors = [m for level, m in logger.messages if level in ("ERROR", "INTERNAL_ERROR")]
    return " ".join(errors[-1].split()) if errors else "see its log"


def _check_graph(onnx_path: Path, target: Target, version: Version) -> str:
    """The graph's precision, after refusing a graph this TensorRT cannot parse."""
    model = load_graph(onnx_path)
    limit = target.max_opset(version)
    if limit is not None and graph_opset(model) > limit:
        raise BuildError(f"{onnx_path.name} uses ONNX opset {graph_opset(model)}, TensorRT "
                          f"{_v(version)} (JetPack 5) needs opset <= {limit}: "
                          f"re-export with --opset {limit}")
    return graph_precision(model)


def _precision_flags(bc: BuildConfig, graph_prec: str, caps: Caps, label: str) -> list[str]:
    """Builder precision flags; none for a strongly typed library, which takes the graph's."""
    if caps.precision_flags is None:
        if bc.precision not in ("auto", graph_prec):
            raise ConfigError(f"{label} builds strongly typed networks, so the "
                              f"precision is the graph's ({graph_prec}), not {bc.precision}: run "
                              f"`odelt-export quantize --precision {bc.precision}` first")
        return []
    return list(caps.precision_flags[graph_prec if bc.precision == "auto" else bc.precision])


def _parse_error(parser: trt.OnnxParser, onnx_path: Path, label: str) -> BuildError:
    """One line: the graph, the first failing node and the parser's reason."""
    if parser.num_errors == 0:
        return BuildError(f"{label} could not parse {onnx_path.name}: no details")
    err = parser.get_error(0)
    try:
        node = f"node {err.node_name() or err.node()} ({err.node_operator()})"
        reason = err.desc()
    except AttributeError:  # a parser error without node accessors
        node, reason = "a node", str(err)
    more = f" (+{parser.num_errors - 1} more)" if parser.num_errors > 1 else ""
    return BuildError(f"{label} could not parse {onnx_path.name}: {node}: {' '.join(reason.split())}{more}")


def _network_from_onnx(mod: Any, builder: trt.Builder, onnx_path: Path, caps: Caps, logger: Any,
                       label: str) -> tuple[trt.INetworkDefinition, trt.OnnxParser]:
    flags = 0
    for name in caps.creation_flags:  # names, not ints: enums differ between libraries and versions
        flags |= 1 << int(getattr(mod.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser: trt.OnnxParser = mod.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise _parse_error(parser, onnx_path, label)
    return network, parser  # the parser must outlive the network's use


def _configure(mod: Any, builder: trt.Builder, network: trt.INetworkDefinition, bc: BuildConfig,
               flags: list[str], caps: Caps, version: Version) -> trt.IBuilderConfig:
    config = builder.create_builder_config()
    target = get_target(bc.target)
    workspace = bc.workspace_bytes or target.workspace_bytes
    if workspace:
        config.set_memory_pool_limit(mod.MemoryPoolType.WORKSPACE, workspace)
    if caps.optimization_level:
        config.builder_optimization_level = bc.optimization_level
    if bc.version_compatible:
        if not caps.version_compatible:
            raise ConfigError(f"{bc.library} {_v(version)} cannot build version-compatible plans")
        flags = [*flags, "VERSION_COMPATIBLE"]
    for name in flags:  # names, not enum ints: BuilderFlag was renumbered in 11.0
        config.set_flag(getattr(mod.BuilderFlag, name))
    _set_compute_capabilities(mod, config, bc, caps)
    if bc.shape_ranges:  # one profile covering every input (one batch range per engine)
        profile = builder.create_optimization_profile()
        for name, lo, opt, hi in bc.shape_ranges:
            profile.set_shape(name, mod.Dims(list(lo)), mod.Dims(list(opt)), mod.Dims(list(hi)))
        config.add_optimization_profile(profile)
    if bc.use_dla:
        _place_on_dla(mod, config, network, bc, target, version, caps)
    return config


def _set_compute_capabilities(mod: Any, config: Any, bc: BuildConfig, caps: Caps) -> None:
    """TensorRT-RTX: the compute capabilities the plan must run on (none: the library's default).
    `config` is Any: the TensorRT 10.13 stubs have no compute-capability API."""
    if not bc.compute_capabilities:
        return
    if not caps.compute_capabilities:
        raise ConfigError(f"{bc.library} plans run on the GPU that builds them; compute-capability "
                          "targets are a TensorRT-RTX option (--backend tensorrt-rtx)")
    config.num_compute_capabilities = len(bc.compute_capabilities)
    for i, name in enumerate(bc.compute_capabilities):
        config.set_compute_capability(getattr(mod.ComputeCapability, name), i)


def _place_on_dla(mod: Any, config: trt.IBuilderConfig, network: trt.INetworkDefinition, bc: BuildConfig,
                  target: Target, version: Version, caps: Caps) -> None:
    """Convolutions that the DLA accepts go there; everything else, attention included, stays
    on the GPU (DLA has no attention kernels and silently falling back costs transfers)."""
    if not caps.dla or not target.dla_available(version):
        raise ConfigError(f"target {target.name} has no DLA usable with {bc.library} {_v(version)}; drop --dla")
    if not 0 <= bc.dla_core < target.dla_cores:
        raise ConfigError(f"DLA core {bc.dla_core}: {target.name} has {target.dla_cores}")
    config.default_device_type = mod.DeviceType.GPU
    config.DLA_core = bc.dla_core
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == mod.LayerType.CONVOLUTION and config.can_run_on_DLA(layer):
            config.set_device_type(layer, mod.DeviceType.DLA)


def _attach_timing_cache(config: trt.IBuilderConfig, path: str | None, caps: Caps) -> None:
    if path is None or not caps.timing_cache:
        return
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    cache = config.create_timing_cache(data)
    # ignore_mismatch=False: a cache from another GPU is refused, and we start afresh.
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _save_timing_cache(config: trt.IBuilderConfig, path: str | None, caps: Caps) -> None:
    if path is not None and caps.timing_cache:
        write_bytes_atomic(Path(path), bytes(config.get_timing_cache().serialize()))


@dataclass(frozen=True)
class Plan:
    data: bytes
    log: tuple[tuple[str, str], ...]   # (severity, message) of the build

    def weights_bytes(self) -> int | None:
        """'Total Weights Memory' the builder logs (INFO): the weights as stored in the plan."""
        for _, msg in self.log:
            m = re.search(r"Total Weights Memory:\s*(\d+)\s*bytes", msg)
            if m:
                return int(m.group(1))
        return None


def build_plan(onnx_path: Path, bc: BuildConfig, version: Version, graph_prec: str) -> bytes:
    """Parse and build with the library `bc.library`; the serialized plan."""
    return build(onnx_path, bc, version, graph_prec).data


def build(onnx_path: Path, bc: BuildConfig, version: Version, graph_prec: str) -> Plan:
    """Parse and build with `bc.library` (tensorrt or tensorrt-rtx): the plan and the build log."""
    mod, _ = import_library(bc.library)
    caps = capabilities(bc.library, version)
    label = LIBRARIES[bc.library].label
    flags = _precision_flags(bc, graph_prec, caps, label)
    logger = make_logger(mod)
    builder: trt.Builder = mod.Builder(logger)
    network, _parser = _network_from_onnx(mod, builder, onnx_path, caps, logger, label)
    config = _configure(mod, builder, network, bc, flags, caps, version)
    _attach_timing_cache(config, bc.timing_cache, caps)
    plan = builder.build_serialized_network(network, config)
    if plan is None:  # the binding returns None on failure; the log says why
        raise BuildError(f"{label} failed to build an engine from {onnx_path.name}: {last_error(logger)}")
    _save_timing_cache(config, bc.timing_cache, caps)
    return Plan(bytes(memoryview(plan)), tuple(logger.messages))


@dataclass(frozen=True)
class EngineResult:
    path: Path
    manifest: EngineManifest
    from_cache: bool


def engine_from_onnx(onnx_path: Path, bc: BuildConfig, out_path: Path,
                     cache_dir: Path | None = None, force: bool = False) -> EngineResult:
    """Build (or take from the cache) the plan for `onnx_path` and write it with its manifest
    to `out_path` and `out_path`.json. The cache key hashes graph, TensorRT, GPU and options."""
    if bc.library != "tensorrt":
        raise ConfigError(f"engine_from_onnx builds TensorRT plans bound to this GPU; {bc.library} plans "
                          "come from odelt.engines.rtx.engine_from_onnx")
    trt_mod, version = import_library("tensorrt")
    target = get_target(bc.target)
    if not target.supports_trt(version):
        raise ConfigError(f"target {target.name} runs TensorRT {_v(target.trt_min)} to "
                          f"{_v(target.trt_max)}, this machine has {trt_mod.__version__}")
    graph_prec = _check_graph(onnx_path, target, version)
    here = current_platform(trt_mod.__version__)
    digest = graph_digest(onnx_path)
    key = cache_key(digest.encode(), here, bc.options())
    manifest = EngineManifest("tensorrt", here, digest, key, bc.options(), bc.target)
    cached = cache_dir / f"{key}{PLAN_SUFFIX}" if cache_dir else None
    if cached is not None and cached.is_file() and not force:
        _install(cached.read_bytes(), manifest, out_path)
        return EngineResult(out_path, manifest, True)
    plan = build_plan(onnx_path, bc, version, graph_prec)
    if cached is not None:
        make_dir(cached.parent)
        _install(plan, manifest, cached)
    _install(plan, manifest, out_path)
    return EngineResult(out_path, manifest, False)


def _install(plan: bytes, manifest: EngineManifest, path: Path) -> None:
    # Plan first, manifest last: a plan without its manifest is refused at load time.
    manifest_path(path).unlink(missing_ok=True)
    write_bytes_atomic(path, plan)
    write_json_atomic(manifest_path(path), manifest.to_dict(), indent=2, sort_keys=True)


def _v(v: Version) -> str:
    return ".".join(map(str, v))


@dataclass
class LoadedEngine:
    engine: trt.ICudaEngine
    runtime: trt.Runtime  # kept alive as long as the engine
    manifest: EngineManifest


def load_engine(engine_path: Path, platform: Platform | None = None) -> LoadedEngine:
    """Deserialize a plan after checking its manifest against this machine (or `platform`)."""
    trt_mod, _ = import_library("tensorrt")
    engine_path = Path(engine_path)
    manifest = read_manifest(engine_path)
    check_compatible(manifest, platform or current_platform(trt_mod.__version__), engine_path)
    runtime: trt.Runtime = trt_mod.Runtime(make_logger(trt_mod))
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise RuntimeFailure(f"TensorRT could not deserialize {engine_path.name}; rebuild it")
    return LoadedEngine(engine, runtime, manifest)
