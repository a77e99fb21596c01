"""ONNX Runtime backend: CPU everywhere, the CUDA provider where installed.

Sessions are created once per bundle (every graph the requested lengths need). Each (length,
graph) gets an IOBinding created once per batch size that points at fixed buffers (see
buffers.BufferLayout): on CPU they are numpy views into one float32 arena, so a call is "copy the
new state into x, run the bound graphs"; nothing is allocated per step. With the CUDA provider the
buffers are device OrtValues (inputs are updated in place, the velocity copied back); that path
cannot run on this CPU-only machine and is untested here.

Intermediate tensors: every session would keep its own memory arena, grown to that graph's peak,
so a chain of k graphs holds k peaks although only one graph runs at a time. On CPU the sessions
draw instead from one arena registered once per process on ONNX Runtime's environment
(`session.use_env_allocators`), and the chain holds one peak (DiT-S/2 segments at batch 8: sampling
peak RSS 525 -> 311 MB, measured).

`naive=True` is the baseline the benchmark compares against: `session.run` with fresh feeds and
freshly allocated outputs on every call, each session with its own arena.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from odelt.errors import BackendUnavailable, BundleError, RuntimeFailure, first_line
from odelt.bundle.bundle import Bundle
from odelt.bundle.chain import AfterSegment, chain_exits
from odelt.bundle.iospec import GraphSpec
from odelt.runtime.backends.buffers import BufferLayout, host_buffers
from odelt.runtime.backends.graphs import ChainBackend
from odelt.onnxrt import open_session, ort_module
from odelt.runtime.backends.protocol import BackendOptions, chain_length, check_batch, skip_graph


_ARENA: list[bool] = []      # [registered?]: ONNX Runtime takes one shared CPU allocator per process


def _shared_cpu_arena(ort: Any) -> bool:
    """Register one CPU arena on ONNX Runtime's environment (once per process); False if refused."""
    if not _ARENA:
        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            # kSameAsRequested: grow by what a graph asks for, not by doubling past it.
            ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
            _ARENA.append(True)
        except Exception:  # noqa: BLE001 - an older ONNX Runtime: sessions keep their own arenas
            _ARENA.append(False)
    return _ARENA[0]


class OrtBackend:
    name = "ort"
    batch_bound = False          # ONNX Runtime graphs take any batch
    graph_timings = True         # `profile` may time each graph alone in an ONNX Runtime session

    def __init__(self, manifest: Bundle, options: BackendOptions = BackendOptions()):
        self.manifest, self.options = manifest, options
        self.precision, self.use_engines = options.precision, options.use_engines
        self.layout = options.layout or manifest.default_layout()
        self.lengths = tuple(options.lengths or manifest.lengths)
        self.threads, self.naive = options.threads, options.naive
        self._config: dict[str, str] = {}
        self._spinning = False
        self.sessions: dict[str, Any] = {}
        self._plans: dict[int, tuple[BufferLayout, dict[str, Any], dict[tuple[int, str], Any]]] = {}
        self._exits: dict[int, dict[int, int]] = {}      # length -> {chain position: exit length}
        self.device = "cpu"

    @staticmethod
    def describe() -> dict[str, Any]:
        ort = ort_module()
        return {"onnxruntime": ort.__version__, "providers": ort.get_available_providers()}

    # -- lifetime ------------------------------------------------------------------------------
    def __enter__(self) -> OrtBackend:
        ort = ort_module()
        providers = self._providers(ort)
        graphs = {g.name for n in self.lengths for g in self.manifest.chain(n, self.layout)}
        # Every session has its own intra-op pool. In a chain, the pool of the graph that just ran
        # keeps spin-waiting while the next graph's pool works: on the 2-core machine that cost
        # 1.6-2.7x (DiT-S/2 b1 forward: 317-540 ms spinning vs 196-200 ms not, measured). So pools
        # spin by default only when a single session is open.
        self._spinning = self.options.spinning if self.options.spinning is not None else len(graphs) == 1
        self._config = {}
        if self.device == "cpu" and self.options.shared_arena and not self.naive and _shared_cpu_arena(ort):
            self._config["session.use_env_allocators"] = "1"
        for name in sorted(graphs):
            self.sessions[name] = self._session(providers, name)
        self._chain = ChainBackend(self.manifest, self._run_naive, self.layout)
        self._exits = {n: chain_exits(self.manifest, n, self.layout, self.lengths) for n in self.lengths}
        return self

    def _providers(self, ort: Any) -> list[str]:
        """The requested providers (default: CUDA when installed), always ending with the CPU one."""
        available = ort.get_available_providers()
        providers = list(self.options.providers or [p for p in ("CUDAExecutionProvider",) if p in available])
        if "CPUExecutionProvider" not in providers:
            providers.append("CPUExecutionProvider")
        missing = [p for p in providers if p not in available]
        if missing:
            raise BackendUnavailable(f"ONNX Runtime providers {missing} are not available; this install has {available}")
        self.device = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"
        return providers

    def _session(self, providers: list[str], name: str) -> Any:
        path, engine = graph_file(self.manifest, name, self.precision, self.use_engines and self.device == "cpu")
        session = graph_session(self.manifest, path, engine, threads=self.threads, spinning=self._spinning,
                                config=self._config, providers=providers)
        check_session_io(self.manifest, name, session, path)
        return session

    def __exit__(self, *exc: object) -> None:
        self.sessions.clear()
        self._plans.clear()

    # -- calls ---------------------------------------------------------------------------------
    def infer(self, feeds: Mapping[str, np.ndarray],
              after_segment: AfterSegment | None = None) -> Mapping[str, np.ndarray]:
        """after_segment(exit length) is asked after each chunk that completes an exit; True runs
        the head there (that exit length's own head binding reads the velocity sum so far)."""
        if not self.sessions:
            raise RuntimeFailure("backend used outside its `with` block")
        length = chain_length(feeds, self.lengths)
        if self.naive:
            return self._chain.infer(feeds, after_segment)
        batch = int(np.shape(feeds["x"])[0])
        plan, bufs, bindings = self._bound(batch)
        self._write(bufs, feeds)
        chain = plan.chains[length]
        if after_segment is None:
            for graph in chain:
                if not skip_graph(graph, feeds):
                    self.sessions[graph.name].run_with_iobinding(bindings[(length, graph.name)])
            return {"velocity": self._read(bufs["velocity"])}
        exits, head = self._exits[length], chain[-1]
        for pos, graph in enumerate(chain[:-1]):
            if not skip_graph(graph, feeds):
                self.sessions[graph.name].run_with_iobinding(bindings[(length, graph.name)])
            if pos in exits and after_segment(exits[pos]):
                self.sessions[head.name].run_with_iobinding(bindings[(exits[pos], head.name)])
                return {"velocity": self._read(bufs["velocity"])}
        self.sessions[head.name].run_with_iobinding(bindings[(length, head.name)])
        return {"velocity": self._read(bufs["velocity"])}

    def exits(self, length: int) -> tuple[int, ...]:
        """The exit lengths a call at `length` passes (ascending), where infer may stop it."""
        return tuple(sorted(self._exits.get(length, {}).values()))

    def _run_naive(self, graph: GraphSpec, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.sessions[graph.name].run(None, feeds)
        return {t.name: o for t, o in zip(graph.outputs, outs)}

    def _write(self, bufs: dict[str, Any], feeds: Mapping[str, np.ndarray]) -> None:
        cuda = self.device == "cuda"
        for name, value in feeds.items():
            buf = bufs.get(name)
            if buf is None:
                continue
            shape = tuple(buf.shape()) if cuda else buf.shape
            if value.shape != shape:
                raise RuntimeFailure(f"input {name}: expected shape {shape}, found {value.shape}")
            if cuda:
                dtype = np.int32 if name in ("dt_base", "y", "l") else np.float32
                buf.update_inplace(np.ascontiguousarray(value, dtype=dtype))
            else:
                np.copyto(buf, value, casting="same_kind")

    def _read(self, buf: Any) -> np.ndarray:
        return buf.numpy() if self.device == "cuda" else buf

    # -- buffers and bindings, once per batch size ----------------------------------------------
    def _bound(self, batch: int) -> tuple[BufferLayout, dict[str, Any], dict[tuple[int, str], Any]]:
        if batch not in self._plans:
            check_batch(self.manifest, batch, profile_bound=False)
            plan = BufferLayout(self.manifest, self.layout, self.lengths, batch)
            bufs = host_buffers(plan) if self.device == "cpu" else self._device_buffers(plan)
            bindings = {key: self._binding(self.sessions[key[1]], ins, outs, bufs)
                        for key, (ins, outs) in plan.binds.items()}
            self._plans[batch] = (plan, bufs, bindings)
        return self._plans[batch]

    def _device_buffers(self, plan: BufferLayout) -> dict[str, Any]:
        ort = ort_module()
        return {key: ort.OrtValue.ortvalue_from_shape_and_type(list(s.shape), np.dtype(s.dtype), "cuda", 0)
                for key, s in plan.slots.items()}

    def _binding(self, session: Any, ins: dict[str, str], outs: dict[str, str], bufs: dict[str, Any]) -> Any:
        io = session.io_binding()
        for names, bind in ((ins, io.bind_input), (outs, io.bind_output)):
            for name, key in names.items():
                buf = bufs[key]
                if self.device == "cuda":
                    (io.bind_ortvalue_input if bind == io.bind_input else io.bind_ortvalue_output)(name, buf)
                else:
                    bind(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
        return io

    @property
    def shares_arena(self) -> bool:
        """Whether the sessions draw from the one CPU arena registered on ONNX Runtime's environment."""
        return self._config.get("session.use_env_allocators") == "1"

    def buffer_bytes(self) -> int:
        """Bytes of the reused buffers over all batch sizes bound so far (host side)."""
        return sum(int(b.nbytes) for _, bufs, _ in self._plans.values() for b in bufs.values()
                   if isinstance(b, np.ndarray))


def engine_path(manifest: Bundle, name: str, precision: str) -> Path | None:
    """The built ORT engine of graph `name` at `precision`, when the bundle has one."""
    for entry in manifest.engine_sets.values():
        if entry.get("backend") == "ort" and entry.get("precision") == precision and name in entry["graphs"]:
            return manifest.root / entry["graphs"][name]
    return None


def graph_file(manifest: Bundle, name: str, precision: str, use_engines: bool) -> tuple[Path, bool]:
    """(file to open, whether it is a built ORT engine) for graph `name` (a DiT graph or a decoder)
    at `precision`: its engine when there is one and `use_engines`, else the bundle's ONNX file."""
    engine = engine_path(manifest, name, precision) if use_engines else None
    return (engine, True) if engine is not None else (manifest.graph_path(name, precision), False)


def check_session_io(manifest: Bundle, name: str, session: Any, path: Path) -> None:
    """At first use: the graph's inputs and outputs (names, ranks, static sizes) are those its
    manifest spec promises, so a spec that contradicts the file is one line, not an ORT failure."""
    spec = manifest.graph(name)
    for side, values, want in (("inputs", session.get_inputs(), spec.inputs),
                               ("outputs", session.get_outputs(), spec.outputs)):
        have = {v.name: list(v.shape) for v in values}
        for t in want:
            dims = have.get(t.name)
            fits = dims is not None and len(dims) == len(t.shape) and all(
                not (isinstance(a, int) and isinstance(b, int)) or a == b for a, b in zip(t.shape, dims))
            if not fits or set(have) != {x.name for x in want}:
                raise BundleError(f"{manifest.root}/manifest.json: graphs.{name}.{side}: the manifest says "
                                  f"{t.name} {list(t.shape)} (of {[x.name for x in want]}), the graph file "
                                  f"{path.name} has {have}")


def graph_session(manifest: Bundle, path: Path, engine: bool, *, threads: int, spinning: bool,
                  config: Mapping[str, str] | None, providers: Sequence[str]) -> Any:
    """An ONNX Runtime session on a file graph_file chose; one-line errors."""
    if not path.is_file():
        raise BundleError(f"{manifest.root}: graph file {path.name} is missing")
    try:
        if engine:  # optimised offline: opened with optimisations disabled, as recorded
            from odelt.engines.ort import session_from_engine
            return session_from_engine(path, threads, spinning, dict(config or {}))
        return open_session(path, threads=threads, spinning=spinning, config=config, providers=list(providers))
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types
        first = first_line(e) or type(e).__name__
        raise BundleError(f"{path}: ONNX Runtime cannot load this graph ({first[:200]})") from None
