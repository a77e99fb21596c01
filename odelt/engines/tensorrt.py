"""TensorRT engines from ONNX graphs, TensorRT 8.5 to 11.x. Importable without TensorRT: the
`tensorrt` package is imported inside the functions that need it.

Precision (deploy.md §0, §2.1-2.2): TensorRT 11 removed the FP16/INT8 builder flags and every
network is strongly typed, so on >= 10 we build strongly typed networks and the precision is
whatever the ONNX graph holds (FP16 weights/casts, explicit Q/DQ). Only on 8.x do we set builder
precision flags. This code is type-checked against the TensorRT 10.13 stubs (typings/) but has
never run against a real TensorRT here: see the README.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from odelt.engines.graph import graph_digest, graph_opset, graph_precision, load_graph
from odelt.engines.platform import (EngineManifest, Platform, cache_key, check_compatible,
                                    current_platform, manifest_path, read_manifest)
from odelt.engines.targets import Target, Version, get_target, parse_version
from odelt.errors import BackendUnavailable, BuildError, ConfigError, RuntimeFailure
from odelt.fileio import make_dir, write_bytes_atomic, write_json_atomic

if TYPE_CHECKING:
    import tensorrt as trt

Shape = tuple[int, ...]
PRECISIONS = ("auto", "fp32", "fp16", "int8")
PLAN_SUFFIX = ".plan"


@dataclass(frozen=True)
class BuildConfig:
    # (input name, min, opt, max) per dynamic input; see profiles_from() for what it accepts.
    profiles: tuple[tuple[str, Shape, Shape, Shape], ...] = ()
    precision: str = "auto"            # "auto": what the graph holds; else must match on >= 10
    optimization_level: int = 3        # 0..5; demoDiffusion uses 3 (4 for INT8)
    workspace_bytes: int | None = None  # None: the target's cap (if any)
    use_dla: bool = False               # only convolutions go to the DLA, never attention
    dla_core: int = 0
    target: str = "desktop"
    timing_cache: str | None = field(default=None, compare=False)  # path; speed only, not hashed

    def __post_init__(self) -> None:
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


def profiles_from(io: Any) -> tuple[tuple[str, Shape, Shape, Shape], ...]:
    """Optimisation profiles from a plain mapping name -> (min, opt, max) shapes, or from any
    object with a `profiles()` method returning such a mapping (the exporter's IO description)."""
    mapping = io.profiles() if hasattr(io, "profiles") else io
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
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable("TensorRT is not installed: need the `tensorrt` Python package "
                                 "(pip install 'odelt-export[trt]', or JetPack's python3-libnvinfer)"
                                 ) from None
    # `pip install tensorrt-stubs` leaves an empty `tensorrt` namespace package behind.
    if not hasattr(tensorrt, "Builder"):
        raise BackendUnavailable("`import tensorrt` found no TensorRT (only type stubs?): need the "
                                 "`tensorrt` package (pip install 'odelt-export[trt]')")
    return parse_version(tensorrt.__version__)


def _logger() -> trt.ILogger:
    import tensorrt as trt
    return trt.Logger(trt.Logger.WARNING)


def _check_graph(onnx_path: Path, target: Target, version: Version) -> str:
    """The graph's precision, after refusing a graph this TensorRT cannot parse."""
    model = load_graph(onnx_path)
    limit = target.max_opset(version)
    if limit is not None and graph_opset(model) > limit:
        raise BuildError(f"{onnx_path.name} uses ONNX opset {graph_opset(model)}, TensorRT "
                          f"{'.'.join(map(str, version))} (JetPack 5) needs opset <= {limit}: "
                          f"re-export with --opset {limit}")
    return graph_precision(model)


def _precision_flags(bc: BuildConfig, graph_prec: str, version: Version) -> tuple[bool, list[str]]:
    """(strongly typed?, builder precision flags) for this TensorRT version."""
    if version[0] >= 10:
        if bc.precision not in ("auto", graph_prec):
            raise ConfigError(f"TensorRT {version[0]}.x builds strongly typed networks, so the "
                              f"precision is the graph's ({graph_prec}), not {bc.precision}: run "
                              f"`odelt-export quantize --precision {bc.precision}` first")
        return True, []
    wanted = graph_prec if bc.precision == "auto" else bc.precision
    # 8.x: explicit Q/DQ graphs still need the INT8 flag; FP16 lets the rest run in half.
    return False, {"fp32": [], "fp16": ["FP16"], "int8": ["FP16", "INT8"]}[wanted]


def _network_from_onnx(builder: trt.Builder, onnx_path: Path, strongly_typed: bool,
                       version: Version) -> tuple[trt.INetworkDefinition, trt.OnnxParser]:
    import tensorrt as trt
    flags = 0
    if version[0] < 10:  # explicit batch is the default (and the flag deprecated) from 10.0
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    elif strongly_typed and version[0] == 10:  # always on (flag ignored) in 11
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, _logger())
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT could not parse {onnx_path.name}: {errors or 'no details'}")
    return network, parser  # the parser must outlive the network's use


def _configure(builder: trt.Builder, network: trt.INetworkDefinition, bc: BuildConfig,
               flags: list[str], version: Version) -> trt.IBuilderConfig:
    import tensorrt as trt
    config = builder.create_builder_config()
    target = get_target(bc.target)
    workspace = bc.workspace_bytes or target.workspace_bytes
    if workspace:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if version[:2] >= (8, 6):
        config.builder_optimization_level = bc.optimization_level
    for name in flags:  # names, not enum ints: BuilderFlag was renumbered in 11.0
        config.set_flag(getattr(trt.BuilderFlag, name))
    if bc.profiles:  # one profile covering every input (one batch range per engine)
        profile = builder.create_optimization_profile()
        for name, lo, opt, hi in bc.profiles:
            profile.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
        config.add_optimization_profile(profile)
    if bc.use_dla:
        _place_on_dla(config, network, bc, target, version)
    return config


def _place_on_dla(config: trt.IBuilderConfig, network: trt.INetworkDefinition, bc: BuildConfig,
                  target: Target, version: Version) -> None:
    """Convolutions that the DLA accepts go there; everything else, attention included, stays
    on the GPU (DLA has no attention kernels and silently falling back costs transfers)."""
    import tensorrt as trt
    if not target.dla_available(version):
        raise ConfigError(f"target {target.name} has no DLA usable with TensorRT "
                          f"{'.'.join(map(str, version))}; drop --dla")
    if not 0 <= bc.dla_core < target.dla_cores:
        raise ConfigError(f"DLA core {bc.dla_core}: {target.name} has {target.dla_cores}")
    config.default_device_type = trt.DeviceType.GPU
    config.DLA_core = bc.dla_core
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.CONVOLUTION and config.can_run_on_DLA(layer):
            config.set_device_type(layer, trt.DeviceType.DLA)


def _attach_timing_cache(config: trt.IBuilderConfig, path: str | None) -> None:
    if path is None:
        return
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    cache = config.create_timing_cache(data)
    # ignore_mismatch=False: a cache from another GPU is refused, and we start afresh.
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _save_timing_cache(config: trt.IBuilderConfig, path: str | None) -> None:
    if path is not None:
        write_bytes_atomic(Path(path), bytes(config.get_timing_cache().serialize()))


def build_plan(onnx_path: Path, bc: BuildConfig, version: Version, graph_prec: str) -> bytes:
    """Parse and build; the serialized plan."""
    import tensorrt as trt
    strongly_typed, flags = _precision_flags(bc, graph_prec, version)
    builder = trt.Builder(_logger())
    network, _parser = _network_from_onnx(builder, onnx_path, strongly_typed, version)
    config = _configure(builder, network, bc, flags, version)
    _attach_timing_cache(config, bc.timing_cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:  # the binding returns None on failure; the log says why
        raise BuildError(f"TensorRT failed to build an engine from {onnx_path.name} (see its log)")
    _save_timing_cache(config, bc.timing_cache)
    return bytes(memoryview(plan))


@dataclass(frozen=True)
class EngineResult:
    path: Path
    manifest: EngineManifest
    from_cache: bool


def engine_from_onnx(onnx_path: Path, bc: BuildConfig, out_path: Path,
                     cache_dir: Path | None = None, force: bool = False) -> EngineResult:
    """Build (or take from the cache) the plan for `onnx_path` and write it with its manifest
    to `out_path` and `out_path`.json. The cache key hashes graph, TensorRT, GPU and options."""
    version = require_tensorrt()
    import tensorrt as trt
    target = get_target(bc.target)
    if not target.supports_trt(version):
        raise ConfigError(f"target {target.name} runs TensorRT {_v(target.trt_min)} to "
                          f"{_v(target.trt_max)}, this machine has {trt.__version__}")
    graph_prec = _check_graph(onnx_path, target, version)
    here = current_platform(trt.__version__)
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
    require_tensorrt()
    import tensorrt as trt
    engine_path = Path(engine_path)
    manifest = read_manifest(engine_path)
    check_compatible(manifest, platform or current_platform(trt.__version__), engine_path)
    runtime = trt.Runtime(_logger())
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise RuntimeFailure(f"TensorRT could not deserialize {engine_path.name}; rebuild it")
    return LoadedEngine(engine, runtime, manifest)


def copy_engine(src: Path, dst: Path) -> None:
    """Copy a plan and its manifest (e.g. into a bundle)."""
    shutil.copyfile(src, dst)
    shutil.copyfile(manifest_path(src), manifest_path(dst))
