"""TensorRT backend (engines built by `odelt-export build --backend tensorrt` or `--backend
tensorrt-rtx`), kept thin. TensorRT-RTX plans are opened with the same calls (its runtime API keeps
them); which library loads a set is the set's `backend`. TensorRT-RTX engines are checked first
(odelt.engines.rtx.load_engine: header, version, targets vs this GPU) and a machine without a GPU
TensorRT-RTX supports stops there with one line. Loading and running are untested here (no GPU).

Importable without TensorRT or CUDA: `tensorrt` and `cuda-python` are imported when the backend is
opened. It cannot run on this CPU-only machine; it is type-checked against the TensorRT stubs
(tests/test_typecheck.py picks up odelt/runtime/trt*.py) and its buffer plan is the one the
ONNX Runtime backend runs and tests (buffers.BufferLayout).

What it does (the pattern of NVIDIA's diffusion demo):
  * one USER_MANAGED device scratch sized max(device_memory_size_v2) over the engines, shared by
    every execution context (contexts never run concurrently: one stream);
  * one device arena for every tensor of the longest chain at a batch size, ping-pong state slots;
    tensor addresses are set once per (context, batch, length) with set_tensor_address;
  * execute_async_v3 on one stream; optionally one CUDA graph per (length, batch), captured after
    a warm-up call (static shapes and fixed addresses make that legal).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from odelt.errors import BackendUnavailable, BundleError, RuntimeFailure
from odelt.bundle.bundle import Bundle
from odelt.runtime.backends.buffers import BufferLayout
from odelt.runtime.backends.protocol import BackendOptions, chain_length, check_batch, skip_graph

if TYPE_CHECKING:
    import tensorrt as trt

ALIGN = 256
LIBRARIES = ("tensorrt", "tensorrt-rtx")   # engine-set backends this runtime opens


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart      # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart                      # older cuda-python
        except ImportError:
            raise BackendUnavailable("the TensorRT backend needs cuda-python: pip install cuda-python") from None
    return cudart


def _check(result: Any) -> Any:
    """cuda-python returns (err, *values); raise on an error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeFailure(f"CUDA call failed with error {int(err)} ({err})")
    return values[0] if len(values) == 1 else values


class TrtBackend:
    name = "tensorrt"
    batch_bound = True           # engines serve only their optimisation profile's batch range
    graph_timings = False        # `profile` may time each graph alone in an ONNX Runtime session

    def __init__(self, manifest: Bundle, options: BackendOptions = BackendOptions()):
        self.manifest = manifest
        self.precision = options.precision                # picks the engine set when none is named
        self.layout = options.layout or manifest.default_layout()
        self.lengths = tuple(options.lengths or manifest.lengths)
        self.engine_set = options.engine_set
        self.cuda_graphs = options.cuda_graphs
        self.engines: dict[str, Any] = {}                 # graph name -> LoadedEngine
        self.contexts: dict[str, trt.IExecutionContext] = {}
        self._bound: dict[str, tuple[int, int]] = {}     # graph -> (batch, length) its addresses are for
        self._arenas: dict[int, tuple[BufferLayout, int, dict[str, int], np.ndarray]] = {}
        self._graphs: dict[tuple[int, int], Any] = {}    # (length, batch) -> CUDA graph exec
        self._scratch, self._stream, self._cudart = 0, 0, None

    @staticmethod
    def describe() -> dict[str, Any]:
        import importlib

        from odelt.engines.trt_caps import LIBRARIES

        out: dict[str, Any] = {}
        for name, lib in LIBRARIES.items():   # {"tensorrt": version | None, "tensorrt-rtx": ...}
            try:
                out[name] = getattr(importlib.import_module(lib.module), "__version__", None)
            except ImportError:
                out[name] = None
        return out

    # -- lifetime ------------------------------------------------------------------------------
    def __enter__(self) -> TrtBackend:
        from odelt.engines import rtx, tensorrt
        from odelt.engines.trt_caps import import_library

        entry = self.engine_entry()
        library = str(entry.get("backend", "tensorrt"))
        trt_mod, _ = import_library(library)
        load = rtx.load_engine if library == "tensorrt-rtx" else tensorrt.load_engine
        names = sorted({g.name for n in self.lengths for g in self.manifest.chain(n, self.layout)})
        for name in names:
            if name not in entry["graphs"]:
                raise BundleError(f"engine set {self.engine_set} has no engine for graph {name}; rebuild it")
            self.engines[name] = load(self.manifest.root / entry["graphs"][name])
        self._cudart = cudart = _cudart()
        size = max(int(e.engine.device_memory_size_v2) for e in self.engines.values())
        self._scratch = _check(cudart.cudaMalloc(max(size, ALIGN)))
        self._stream = _check(cudart.cudaStreamCreate())
        for name, loaded in self.engines.items():
            engine: trt.ICudaEngine = loaded.engine
            ctx = engine.create_execution_context(trt_mod.ExecutionContextAllocationStrategy.USER_MANAGED)
            ctx.set_device_memory(self._scratch, size)
            self.contexts[name] = ctx
        return self

    def engine_entry(self) -> dict:
        """The engine set this backend opens: the one named, else the bundle's for its precision."""
        sets = {k: v for k, v in self.manifest.engine_sets.items() if v.get("backend") in LIBRARIES
                and (self.engine_set or self.precision is None or v.get("precision") == self.precision)}
        if not sets:
            wanted = f" {self.precision}" if self.precision and not self.engine_set else ""
            raise BackendUnavailable(f"{self.manifest.root} has no{wanted} TensorRT engines; run `odelt-export build "
                                     f"BUNDLE --backend tensorrt{' --precision ' + wanted.strip() if wanted else ''}` "
                                     "on this device first (or `--backend tensorrt-rtx` on any machine, for RTX GPUs)")
        self.engine_set = self.engine_set or sorted(sets)[0]
        if self.engine_set not in sets:
            raise BundleError(f"no TensorRT engine set {self.engine_set!r}; this bundle has {sorted(sets)}")
        return dict(sets[self.engine_set])

    def __exit__(self, *exc: object) -> None:
        cudart = self._cudart
        if cudart is None:
            return
        for graph_exec in self._graphs.values():
            cudart.cudaGraphExecDestroy(graph_exec)
        for _, base, _, _ in self._arenas.values():
            cudart.cudaFree(base)
        if self._scratch:
            cudart.cudaFree(self._scratch)
        if self._stream:
            cudart.cudaStreamDestroy(self._stream)
        self.contexts.clear()
        self.engines.clear()
        self._arenas.clear()
        self._graphs.clear()
        self._cudart = None

    # -- calls ---------------------------------------------------------------------------------
    def infer(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        cudart = self._cudart
        if cudart is None:
            raise RuntimeFailure("backend used outside its `with` block")
        length = chain_length(feeds, self.lengths)
        batch = int(np.shape(feeds["x"])[0])
        plan, _, addr, velocity = self._arena(batch)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        kept = []                                          # host sources stay alive until the sync
        for name, value in feeds.items():
            if name in addr:
                src = np.ascontiguousarray(value, dtype=plan.slots[name].dtype)
                kept.append(src)
                _check(cudart.cudaMemcpyAsync(addr[name], src.ctypes.data, src.nbytes, h2d, self._stream))
        chain = [g for g in plan.chains[length] if not skip_graph(g, feeds)]
        for graph in chain:
            self._bind(graph.name, plan, addr, batch, length)
        key = (length, batch)
        if key in self._graphs:
            _check(cudart.cudaGraphLaunch(self._graphs[key], self._stream))
        else:
            self._execute([g.name for g in chain])
            if self.cuda_graphs and len(chain) == len(plan.chains[length]):   # table calls stay eager
                self._capture(key, [g.name for g in chain])
        _check(cudart.cudaMemcpyAsync(velocity.ctypes.data, addr["velocity"], velocity.nbytes, d2h, self._stream))
        _check(cudart.cudaStreamSynchronize(self._stream))
        return {"velocity": velocity}

    def _execute(self, names: list[str]) -> None:
        for name in names:
            if not self.contexts[name].execute_async_v3(self._stream):
                raise RuntimeFailure(f"TensorRT failed to enqueue graph {name}")

    def _capture(self, key: tuple[int, int], names: list[str]) -> None:
        cudart = self._cudart
        assert cudart is not None
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        _check(cudart.cudaStreamBeginCapture(self._stream, mode))
        self._execute(names)
        graph = _check(cudart.cudaStreamEndCapture(self._stream))
        self._graphs[key] = _check(cudart.cudaGraphInstantiate(graph, 0))

    def _bind(self, name: str, plan: BufferLayout, addr: dict[str, int], batch: int, length: int) -> None:
        """Shapes and addresses once per (batch, length) a context serves; kept across steps."""
        if self._bound.get(name) == (batch, length):
            return
        ctx = self.contexts[name]
        ins, outs = plan.binds[(length, name)]
        for tensor, key in ins.items():
            if not ctx.set_input_shape(tensor, plan.slots[key].shape):
                raise RuntimeFailure(f"engine {name}: input {tensor} shape {plan.slots[key].shape} is outside "
                                     "its optimisation profile")
            ctx.set_tensor_address(tensor, addr[key])
        for tensor, key in outs.items():
            ctx.set_tensor_address(tensor, addr[key])
        self._bound[name] = (batch, length)

    def _arena(self, batch: int) -> tuple[BufferLayout, int, dict[str, int], np.ndarray]:
        """One device allocation holding every tensor of the layout at this batch size."""
        if batch not in self._arenas:
            check_batch(self.manifest, batch, profile_bound=True)
            cudart = self._cudart
            assert cudart is not None
            plan = BufferLayout(self.manifest, self.layout, self.lengths, batch)
            offsets, total = {}, 0
            for key, slot in sorted(plan.slots.items()):
                offsets[key] = total
                nbytes = int(np.prod(slot.shape)) * np.dtype(slot.dtype).itemsize
                total += -(-nbytes // ALIGN) * ALIGN
            base = _check(cudart.cudaMalloc(total))
            addr = {key: base + off for key, off in offsets.items()}
            velocity = np.empty(plan.slots["velocity"].shape, np.float32)
            self._arenas[batch] = (plan, base, addr, velocity)
            self._bound.clear()
        return self._arenas[batch]
