"""The one way this package opens an ONNX Runtime session, with the project's defaults.

Defaults: the CPU provider, all graph optimisations, one intra-op thread, idle threads sleep
instead of spinning. One thread because on a small shared CPU a second thread made call times
bimodal while one stayed linear in the length; no spinning because chains run many small graphs
back to back (often beside PyTorch), and a pool that spins after its graph ran starves the next
graph's pool (on the 2-core machine that cost 1.6-2.7x). A caller that knows better passes
`threads` (0: ONNX Runtime's own default, one per core) or `spinning=True`: the ONNX Runtime
backend lets a pool spin when its session is the only one open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from odelt.errors import BackendUnavailable

CPU = ("CPUExecutionProvider",)
LEVELS = ("disabled", "basic", "extended", "all")


def ort_module() -> Any:
    """onnxruntime, imported on first use (heavy, and optional on some deployments)."""
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable("ONNX Runtime is not installed: pip install onnxruntime") from None
    return onnxruntime


def session_options(threads: int = 1, spinning: bool = False, level: str = "all",
                    config: Mapping[str, str] | None = None, optimized_path: str | Path | None = None,
                    log_level: int | None = None) -> Any:
    """SessionOptions with the project's defaults; `config` adds session config entries."""
    ort = ort_module()
    so = ort.SessionOptions()
    g = ort.GraphOptimizationLevel
    so.graph_optimization_level = {"disabled": g.ORT_DISABLE_ALL, "basic": g.ORT_ENABLE_BASIC,
                                   "extended": g.ORT_ENABLE_EXTENDED, "all": g.ORT_ENABLE_ALL}[level]
    if threads:
        so.intra_op_num_threads = threads
    entries = {**({} if spinning else {"session.intra_op.allow_spinning": "0"}), **(config or {})}
    for key, value in entries.items():
        so.add_session_config_entry(key, value)
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    if log_level is not None:
        so.log_severity_level = log_level
    return so


def open_session(source: Any, *, threads: int = 1, spinning: bool = False, level: str = "all",
                 config: Mapping[str, str] | None = None, providers: Sequence[str] = CPU,
                 optimized_path: str | Path | None = None, log_level: int | None = None) -> Any:
    """An InferenceSession on a graph file, serialized bytes or an in-memory ModelProto."""
    so = session_options(threads, spinning, level, config, optimized_path, log_level)
    if hasattr(source, "SerializeToString"):
        source = source.SerializeToString()
    elif not isinstance(source, bytes):
        source = str(source)
    return ort_module().InferenceSession(source, so, providers=list(providers))
