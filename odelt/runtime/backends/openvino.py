"""OpenVINO backend: runs an engine set built by `odelt-export build --backend openvino`.

The set is picked by precision (fp32 | bf16 | fp16 | int8; `engine_set` names one directly), each
graph's compiled blob is imported once (odelt.engines.openvino.load_engine refuses another OpenVINO
version or a CPU without the recorded instruction sets) and gets one InferRequest. Buffers are the
ones every backend shares (buffers.BufferLayout: one float32 arena per batch size, ping-pong chunk
state); each is wrapped once in an ov.Tensor that shares its memory, and a request's input and
output tensors are set only when the (batch, length) it serves changes. A call is then "copy the
new state into x, run the bound requests": OpenVINO reads and writes the arena in place, nothing is
allocated per step. Graphs take any batch (dynamic shapes), so the backend is not batch-bound.

The decoder stage runs through OvDecoder when the set holds the decoder graph (same interface as
runtime.backends.decoder.OrtDecoder).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from odelt.bundle.bundle import Bundle
from odelt.errors import BackendUnavailable, BundleError, RuntimeFailure
from odelt.runtime.backends.buffers import BufferLayout, host_buffers
from odelt.runtime.backends.protocol import BackendOptions, chain_length, check_batch, decode_batches, skip_graph

NAME = "openvino"


def engine_entry(manifest: Bundle, precision: str, engine_set: str | None = None,
                 graph: str | None = None) -> tuple[str, dict] | None:
    """(name, entry) of the OpenVINO set to run: `engine_set`, else the set at `precision` (CPU sets
    first) holding `graph` when one is named; None when the bundle has none."""
    sets = {k: v for k, v in manifest.engine_sets.items() if v.get("backend") == NAME}
    if engine_set is not None:
        if engine_set not in sets:
            raise BundleError(f"{manifest.root}: no OpenVINO engine set {engine_set!r}; this bundle has {sorted(sets)}")
        return engine_set, sets[engine_set]
    found = sorted((v.get("target") != "CPU", k) for k, v in sets.items()
                   if v.get("precision") == precision and (graph is None or graph in v["graphs"]))
    return (found[0][1], sets[found[0][1]]) if found else None


def openvino_precisions(manifest: Bundle) -> tuple[str, ...]:
    """Precisions of the bundle's OpenVINO sets (what `profile --backend openvino` times by default)."""
    return tuple(sorted({str(v["precision"]) for v in manifest.engine_sets.values() if v.get("backend") == NAME}))


RUNS = {"bf16": "bf16", "f16": "fp16", "f32": "fp32"}     # compiled inference precision -> our precision name


def runs_as(entry: Mapping[str, Any]) -> str:
    """The precision an OpenVINO set runs in, from its record: a bf16/fp16 hint the device has no
    path for runs f32 (its `built.inference_precision`, read back from the compiled model)."""
    asked = str(entry.get("precision"))
    if asked not in ("bf16", "fp16"):
        return asked
    return RUNS.get(str(entry.get("built", {}).get("inference_precision")), asked)


def runs_label(manifest: Bundle, precision: str) -> str:
    """The OpenVINO set's precision as asked, and what runs where that differs, for reports."""
    found = engine_entry(manifest, precision)
    runs = runs_as(found[1]) if found else precision
    return precision if runs == precision else f"{precision} (runs {runs}; plans skip it)"


def _missing(manifest: Bundle, precision: str) -> BackendUnavailable:
    return BackendUnavailable(f"{manifest.root} has no {precision} OpenVINO engines; run `odelt-export build "
                              f"BUNDLE --backend openvino --precision {precision}` first")


class OvBackend:
    name = NAME
    batch_bound = False          # the compiled graphs keep the ONNX graphs' dynamic batch
    graph_timings = False        # `profile` times whole chains here, not graphs in ONNX Runtime

    def __init__(self, manifest: Bundle, options: BackendOptions = BackendOptions()):
        self.manifest, self.options = manifest, options
        self.precision = options.precision
        self.layout = options.layout or manifest.default_layout()
        self.lengths = tuple(options.lengths or manifest.lengths)
        self.threads = options.threads or 1
        self.engine_set: str | None = options.engine_set
        self.models: dict[str, Any] = {}                  # graph name -> CompiledModel
        self.requests: dict[str, Any] = {}                # graph name -> InferRequest
        self._bound: dict[str, tuple[int, int]] = {}      # graph -> (batch, length) its tensors are set for
        self._plans: dict[int, tuple[BufferLayout, dict[str, np.ndarray], dict[str, Any]]] = {}

    @staticmethod
    def describe() -> dict[str, Any]:
        from odelt.engines.openvino import core, cpu_isa, ov_version

        return {"openvino": ov_version(), "devices": list(core().available_devices), "cpu_isa": list(cpu_isa())}

    # -- lifetime ------------------------------------------------------------------------------
    def __enter__(self) -> OvBackend:
        from odelt.engines.openvino import core, load_engine

        found = engine_entry(self.manifest, self.precision, self.engine_set)
        if found is None:
            raise _missing(self.manifest, self.precision)
        self.engine_set, entry = found
        ov_core = core()
        names = sorted({g.name for n in self.lengths for g in self.manifest.chain(n, self.layout)})
        for name in names:
            if name not in entry["graphs"]:
                raise BundleError(f"OpenVINO engine set {self.engine_set} has no engine for graph {name}; rebuild it")
            self.models[name] = load_engine(self.manifest.root / entry["graphs"][name], self.threads, ov_core)
            self.requests[name] = self.models[name].create_infer_request()
        return self

    def __exit__(self, *exc: object) -> None:
        self.requests.clear()
        self.models.clear()
        self._plans.clear()
        self._bound.clear()

    # -- calls ---------------------------------------------------------------------------------
    def infer(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        if not self.requests:
            raise RuntimeFailure("backend used outside its `with` block")
        length = chain_length(feeds, self.lengths)
        batch = int(np.shape(feeds["x"])[0])
        plan, bufs, tensors = self._buffers(batch)
        for name, value in feeds.items():
            buf = bufs.get(name)
            if buf is None:
                continue
            if value.shape != buf.shape:
                raise RuntimeFailure(f"input {name}: expected shape {buf.shape}, found {value.shape}")
            np.copyto(buf, value, casting="same_kind")
        for graph in plan.chains[length]:
            if skip_graph(graph, feeds):
                continue
            self._bind(graph.name, plan, tensors, batch, length)
            try:
                self.requests[graph.name].infer()
            except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError with its own trace
                first = next((s for s in str(e).splitlines() if s.strip()), type(e).__name__)
                raise RuntimeFailure(f"OpenVINO failed to run graph {graph.name}: {first[:200]}") from None
        return {"velocity": bufs["velocity"]}

    def _bind(self, name: str, plan: BufferLayout, tensors: dict[str, Any], batch: int, length: int) -> None:
        """Point a request's inputs and outputs at the shared buffers, once per (batch, length)."""
        if self._bound.get(name) == (batch, length):
            return
        req = self.requests[name]
        ins, outs = plan.binds[(length, name)]
        for tensor, key in ins.items():
            req.set_tensor(tensor, tensors[key])
        for tensor, key in outs.items():
            req.set_tensor(tensor, tensors[key])
        self._bound[name] = (batch, length)

    def _buffers(self, batch: int) -> tuple[BufferLayout, dict[str, np.ndarray], dict[str, Any]]:
        if batch not in self._plans:
            from odelt.engines.openvino import ov_module

            ov = ov_module()
            check_batch(self.manifest, batch, profile_bound=False)
            plan = BufferLayout(self.manifest, self.layout, self.lengths, batch)
            bufs = host_buffers(plan)
            tensors = {key: ov.Tensor(buf, shared_memory=True) for key, buf in bufs.items()}
            self._plans[batch] = (plan, bufs, tensors)
            self._bound.clear()
        return self._plans[batch]

    def buffer_bytes(self) -> int:
        """Bytes of the reused buffers over all batch sizes bound so far."""
        return sum(int(b.nbytes) for _, bufs, _ in self._plans.values() for b in bufs.values())


class OvDecoder:
    """A bundle's decoder graph from an OpenVINO engine set; `decode` as OrtDecoder's."""

    backend = NAME

    def __init__(self, manifest: Bundle, kind: str | None = None, precision: str = "fp32", threads: int = 0):
        self.manifest, self.info = manifest, manifest.decoder(kind)
        self.kind, self.precision, self.threads = self.info.kind, precision, threads or 1
        found = engine_entry(manifest, precision, graph=self.info.graph)
        if found is None:
            raise _missing(manifest, precision)
        self.engine_set, self._entry = found
        self.engine = True
        self.path = manifest.root / self._entry["graphs"][self.info.graph]
        self.model: Any = None
        self.seconds = 0.0

    def __enter__(self) -> OvDecoder:
        from odelt.engines.openvino import load_engine

        self.model = load_engine(self.path, self.threads)
        self._request = self.model.create_infer_request()
        return self

    def __exit__(self, *exc: object) -> None:
        self.model = None

    def decode(self, latents: np.ndarray, batch: int | None = None) -> np.ndarray:
        """(N, C, h, w) latents -> (N, C_img, H, W) float32 images (not clamped)."""
        if self.model is None:
            raise RuntimeFailure("decoder used outside its `with` block")
        return decode_batches(self, latents, batch, lambda chunk: self._request.infer({"latent": chunk})["image"])
