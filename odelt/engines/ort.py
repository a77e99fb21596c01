"""ONNX Runtime "engines": the graph optimised offline plus the session options to load it with.

ONNX Runtime optimises a graph every time a session starts (constant folding, fusions, layout
changes). An engine does that once, at build time, saving the optimised graph (optimised ONNX or
the .ort flatbuffer format) through SessionOptions.optimized_model_filepath, and records how to
load it: with graph optimisations disabled, on the same ONNX Runtime version and providers (the
optimised graph contains provider-specific fused contrib ops, so it is not portable).

Before that, `fusions` runs ONNX Runtime's own transformer fusion tool
(onnxruntime.transformers.optimizer): the exported tanh-GELU becomes one FastGelu and each
residual add + LayerNorm one SkipLayerNormalization, patterns the session optimiser does not match
in our graphs. Attention fusion stays off (its BERT pattern is not ours). On DiT-S/2 at batch 8
this took the FP32 blocks from 1717 to 1611 ms and INT8 from 1125 to 1029 ms (one thread, measured
side by side): elementwise passes over (8, 256, 1536) tensors are memory-bound here.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from platform import machine
from typing import Any

import numpy as np

from odelt.engines.graph import graph_digest, load_graph
from odelt.engines.platform import read_record_json
from odelt.exporter.onnx_utils import restore_inputs
from odelt.errors import BuildError, ConfigError, EngineMismatch, OdeltError, first_line
from odelt.fileio import atomic_path, building, write_error, write_json_atomic
from odelt.onnxrt import open_session, ort_module

LEVELS = ("basic", "extended", "all")
FORMATS = ("onnx", "ort")
RECORD_SUFFIX = ".json"


def _ort() -> Any:
    return ort_module()


@dataclass(frozen=True)
class OrtEngineOptions:
    level: str = "all"                                       # optimisations applied offline
    providers: tuple[str, ...] = ("CPUExecutionProvider",)   # the graph is optimised for these
    format: str = "onnx"                                     # "onnx" or the "ort" flatbuffer
    intra_op_threads: int = 0                                # 0: ONNX Runtime's default
    fusions: bool = True                                     # FastGelu / SkipLayerNormalization first

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ConfigError(f"optimisation level {self.level!r}: expected one of {', '.join(LEVELS)}")
        if self.format not in FORMATS:
            raise ConfigError(f"ORT engine format {self.format!r}: expected one of {', '.join(FORMATS)}")


@dataclass(frozen=True)
class OrtEngine:
    path: Path           # the optimised graph
    record: dict[str, Any]  # what built it and how to load it (also in path + ".json")


def engine_from_onnx(onnx_path: Path, out_path: Path, options: OrtEngineOptions = OrtEngineOptions()
                     ) -> OrtEngine:
    """Optimise `onnx_path` once and write the result to `out_path` with its record next to it."""
    ort = _ort()
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    missing = set(options.providers) - set(ort.get_available_providers())
    if missing:
        raise ConfigError(f"ONNX Runtime providers {sorted(missing)} are not available here "
                          f"(available: {', '.join(ort.get_available_providers())})")
    config: dict[str, str] = {}
    if options.format == "ort":
        config["session.save_model_format"] = "ORT"
    elif _has_external_data(onnx_path):
        # Otherwise the saved graph keeps pointing at the source's .onnx.data by relative path,
        # which does not exist next to the engine: write the weights beside it instead.
        config["session.optimized_model_external_initializers_file_name"] = f"{out_path.name}.data"
        config["session.optimized_model_external_initializers_min_size_in_bytes"] = "1024"
    fused = building(out_path.parent, f"{out_path.name}.fused")       # removed if anything fails
    with fused as work, atomic_path(out_path, suffix=out_path.suffix) as tmp:
        try:
            source = _fused_graph(onnx_path, work) if options.fusions else onnx_path
            # log level 3: ORT warns that level "all" output is hardware specific (recorded)
            open_session(source, threads=options.intra_op_threads, level=options.level, config=config,
                         providers=options.providers, optimized_path=tmp, log_level=3)
        except (OSError, OdeltError):
            raise
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/InvalidProtobuf types
            raise _ort_failure(e, onnx_path, out_path, tmp) from None
        if tmp.stat().st_size == 0:
            raise BuildError(f"ONNX Runtime wrote no optimised graph for {onnx_path.name}")
    shutil.rmtree(work, ignore_errors=True)
    record = _record(ort, onnx_path, out_path, options)
    write_json_atomic(record_path(out_path), record, indent=2, sort_keys=True)
    return OrtEngine(out_path, record)


def _ort_failure(e: Exception, onnx_path: Path, out_path: Path, tmp: Path) -> OdeltError:
    """ONNX Runtime saves the optimised graph itself and reports a failed write (a full disk) only as
    "Protobuf serialization failed": that is a WriteError for the engine, not a build error."""
    first = first_line(e) or type(e).__name__
    if "serializ" in first.lower():
        full = shutil.disk_usage(tmp.parent).free < max(1 << 20, onnx_path.stat().st_size)
        reason = os.strerror(errno.ENOSPC) if full else f"ONNX Runtime could not save it ({first})"
        return write_error(out_path, OSError(errno.ENOSPC if full else errno.EIO, reason))
    return BuildError(f"ONNX Runtime could not optimise {onnx_path.name}: {first}")


def _fused_graph(onnx_path: Path, work: Path) -> Path:
    """The graph after ONNX Runtime's transformer fusions (no attention fusion), in folder `work`."""
    import logging

    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    fusion = FusionOptions("bert")
    fusion.enable_attention = False
    quiet = logging.getLogger("onnxruntime.transformers")
    level, quiet.level = quiet.level, logging.ERROR      # it warns that our producer is not "pytorch"
    try:
        model = optimize_model(str(onnx_path), model_type="bert", num_heads=0, hidden_size=0, opt_level=0,
                               optimization_options=fusion)
    finally:
        quiet.setLevel(level)
    # Its pruning drops inputs nothing reads (x of a graph with no live block); the engine keeps the
    # graph's IO, which the runtime binds by name.
    restore_inputs(model.model, list(load_graph(onnx_path).graph.input))
    work.mkdir(parents=True, exist_ok=True)
    out = work / onnx_path.name
    model.save_model_to_file(str(out), use_external_data_format=_has_external_data(onnx_path))
    return out


def _has_external_data(onnx_path: Path) -> bool:
    return any(i.data_location == 1 for i in load_graph(onnx_path).graph.initializer)  # EXTERNAL


def _record(ort: Any, onnx_path: Path, out_path: Path, options: OrtEngineOptions) -> dict[str, Any]:
    return {
        "backend": "onnxruntime", "onnxruntime_version": ort.__version__,
        # level "all" adds CPU-layout (NCHWc) rewrites: the file is tied to this architecture.
        "machine": machine(),
        "build_options": asdict(options), "graph_sha256": graph_digest(onnx_path),
        "engine_sha256": hashlib.sha256(out_path.read_bytes()).hexdigest(),
        # How the device must open it: the optimisations are already in the file.
        "session_options": {"graph_optimization_level": "disabled",
                            "intra_op_num_threads": options.intra_op_threads,
                            "providers": list(options.providers)},
    }


def record_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + RECORD_SUFFIX)


def read_record(engine_path: Path) -> dict[str, Any]:
    p = record_path(Path(engine_path))
    return read_record_json(p, f"ORT engine {engine_path} has no record {p.name}; rebuild it")


def session_from_engine(engine_path: Path, threads: int = 0, spinning: bool = False,
                        config: dict[str, str] | None = None) -> Any:
    """An InferenceSession on a built engine, opened with optimisations disabled as recorded.
    threads > 0 overrides the recorded intra-op thread count; `spinning` and `config` (session config
    entries such as the shared arena) are runtime choices, not graph ones."""
    ort = _ort()
    engine_path = Path(engine_path)
    rec = read_record(engine_path)
    if rec.get("onnxruntime_version") != ort.__version__:
        raise EngineMismatch(f"ORT engine {engine_path.name} was built with ONNX Runtime "
                             f"{rec.get('onnxruntime_version')}, this machine has {ort.__version__}: "
                             "rebuild it with `odelt-export build BUNDLE --backend ort --force`")
    if rec.get("machine", machine()) != machine():
        raise EngineMismatch(f"ORT engine {engine_path.name} was optimised on {rec['machine']}, this "
                             f"machine is {machine()}: rebuild it here with --force")
    opts = rec["session_options"]
    return open_session(engine_path, threads=threads or int(opts["intra_op_num_threads"]), spinning=spinning,
                        level=opts["graph_optimization_level"], config=config, providers=opts["providers"])


def dummy_feed(session: Any, batch: int = 1) -> dict[str, np.ndarray]:
    """Zeros for every input (dynamic dims -> `batch`): enough to time a first run."""
    types = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
             "tensor(int32)": np.int32, "tensor(int64)": np.int64}
    feed: dict[str, np.ndarray] = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in i.shape]
        feed[i.name] = np.zeros(shape, dtype=types.get(i.type, np.float32))
    return feed


def _startup_s(open_session: Any) -> tuple[float, float]:
    """(session creation, first run) in seconds: the engine only changes the first; the second
    is reported so that time-to-first-result is known too."""
    t0 = time.perf_counter()
    sess = open_session()
    t1 = time.perf_counter()
    sess.run(None, dummy_feed(sess))
    return t1 - t0, time.perf_counter() - t1


def measure_startup(onnx_path: Path, engine_path: Path, repeats: int = 7) -> dict[str, float]:
    """Median session start-up of the raw graph, opened the default way (all optimisations at
    load), vs the built engine; also the first run after each. Alternates the two to share any
    drift. `speedup` is raw / engine session start-up."""
    rec = read_record(engine_path)
    providers = list(rec["session_options"]["providers"])
    threads = int(rec["session_options"]["intra_op_num_threads"])

    def raw() -> Any:
        return open_session(onnx_path, threads=threads, providers=providers)

    raw_t, eng_t = [], []
    for _ in range(repeats):
        raw_t.append(_startup_s(raw))
        eng_t.append(_startup_s(lambda: session_from_engine(engine_path)))
    med = {k: 1e3 * statistics.median(x[i] for x in ts) for k, ts, i in (
        ("raw_startup_ms", raw_t, 0), ("engine_startup_ms", eng_t, 0),
        ("raw_first_run_ms", raw_t, 1), ("engine_first_run_ms", eng_t, 1))}
    return {**med, "speedup": med["raw_startup_ms"] / med["engine_startup_ms"], "repeats": float(repeats)}
