"""One protocol for every backend, and the buffer plan they share.

A backend is opened once per bundle and used as a context manager::

    with open_backend("ort", manifest, batch=8) as be:
        out = be.infer({"x": x, "t": t, "dt_base": d, "y": y, "l": l})   # -> {"velocity": (B,C,H,W)}

`infer` runs the whole chain for the length in feeds["l"] (uniform over the batch): the
conditioning graph (skipped when feeds carry precomputed modulations from a table), the chunks up
to the length's exit, the head; or the single per-length graph. The returned arrays are views of
reused buffers, valid until the next call: copy what you keep.

`BufferPlan` decides, once per batch size, every tensor a chain touches: the caller's inputs, the
modulations (one slot per name, shared by all lengths), and two ping-pong slots for the chunk
state (h, V): chunk j writes slot j % 2 and reads slot (j-1) % 2, so the chain needs two state
buffers however long it is. All float32 tensors live in one arena sized for the longest chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import numpy as np

from odelt import validate
from odelt.errors import ConfigError, RuntimeFailure
from odelt.exporter.bundle import Bundle
from odelt.exporter.iospec import GraphSpec, TensorSpec

STEP_INPUTS = ("x", "t", "dt_base", "y", "l", "cfg_scale")
ALIGN = 16   # float32 elements = 64 bytes: unaligned bound buffers made ONNX Runtime calls ~2x slower


class Backend(Protocol):
    """What the sampler needs from a backend."""

    name: str
    layout: str
    lengths: tuple[int, ...]

    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc: object) -> None: ...

    def infer(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]: ...


@dataclass(frozen=True)
class Slot:
    """Where one tensor of one graph call lives: a buffer key and its concrete shape."""

    key: str
    shape: tuple[int, ...]
    dtype: str


class BufferPlan:
    """Buffer keys and shapes for every (length, graph) of a layout at one batch size."""

    def __init__(self, manifest: Bundle, layout: str, lengths: tuple[int, ...], batch: int):
        self.batch = batch
        self.chains: dict[int, list[GraphSpec]] = {n: manifest.chain(n, layout) for n in lengths}
        self.slots: dict[str, Slot] = {}       # key -> slot (each key is one buffer)
        self.binds: dict[tuple[int, str], tuple[dict[str, str], dict[str, str]]] = {}
        for length, chain in self.chains.items():
            for pos, graph in enumerate(chain):
                self.binds[(length, graph.name)] = self._bind(graph, self._chunk_index(chain, pos))

    @staticmethod
    def _chunk_index(chain: list[GraphSpec], pos: int) -> int:
        return sum(1 for g in chain[:pos] if g.kind == "chunk")

    def _key(self, spec: TensorSpec, key: str) -> str:
        slot = Slot(key, spec.resolve(self.batch), spec.dtype)
        old = self.slots.setdefault(key, slot)
        if old != slot:
            raise ConfigError(f"bundle tensors {key!r} disagree: {old.shape} {old.dtype} vs {slot.shape} {slot.dtype}")
        return key

    def _bind(self, graph: GraphSpec, chunks_before: int) -> tuple[dict[str, str], dict[str, str]]:
        """{tensor name: buffer key} for the inputs and outputs of `graph` at its chain position."""
        ins, outs = {}, {}
        for t in graph.inputs:
            state = t.name in ("h", "V")
            key = f"{t.name}@{(chunks_before - 1) % 2}" if state else t.name
            ins[t.name] = self._key(t, key)
        for t in graph.outputs:
            base = t.name[:-4] if t.name.endswith("_out") else t.name
            key = f"{base}@{chunks_before % 2}" if base in ("h", "V") else base
            outs[t.name] = self._key(t, key)
        return ins, outs

    def arena_layout(self) -> tuple[dict[str, tuple[int, tuple[int, ...]]], int]:
        """Float32 keys -> (offset, shape) in one arena, and the arena size in elements."""
        offsets, size = {}, 0
        for key, slot in sorted(self.slots.items()):
            if slot.dtype == "float32":
                offsets[key] = (size, slot.shape)
                size += -(-int(np.prod(slot.shape)) // ALIGN) * ALIGN  # every buffer starts 64-byte aligned
        return offsets, size

    def graphs(self) -> dict[str, GraphSpec]:
        return {g.name: g for chain in self.chains.values() for g in chain}


def host_buffers(plan: BufferPlan) -> dict[str, np.ndarray]:
    """numpy buffers for every key: float32 views into one arena, small int32 arrays for the rest."""
    offsets, size = plan.arena_layout()
    raw = np.zeros(size + ALIGN, dtype=np.float32)
    skip = (-raw.ctypes.data % (4 * ALIGN)) // 4
    arena = raw[skip:skip + size]
    bufs = {key: arena[o:o + int(np.prod(shape))].reshape(shape) for key, (o, shape) in offsets.items()}
    for key, slot in plan.slots.items():
        if key not in bufs:
            bufs[key] = np.zeros(slot.shape, dtype=slot.dtype)
    return bufs


def chain_length(feeds: Mapping[str, np.ndarray], lengths: tuple[int, ...]) -> int:
    """The one length a call runs at (the runtime never mixes lengths inside a batch)."""
    ls = feeds["l"]
    length = int(ls[0])
    if len(ls) > 1 and ls.min() != ls.max():
        raise RuntimeFailure(f"one length per call expected, found lengths {sorted(set(ls.tolist()))}")
    if length not in lengths:
        raise RuntimeFailure(f"length {length} is not offered by this bundle; expected one of {list(lengths)}")
    return length


def skip_graph(graph: GraphSpec, feeds: Mapping[str, Any]) -> bool:
    """A conditioning graph whose outputs came with the feeds (a modulation table) is not run."""
    return graph.kind == "conditioning" and all(t.name in feeds for t in graph.outputs)


def check_batch(manifest: Bundle, batch: int, profile_bound: bool) -> None:
    """Engines with optimisation profiles serve only the manifest's batch range (rows double with
    host-side guidance). Graphs run by ONNX Runtime take any batch."""
    validate.count("--batch", batch)
    rng = manifest.batch
    if profile_bound and not rng.min <= batch <= rng.max:
        raise ConfigError(f"batch {batch} is outside the engines' profile {rng.min}..{rng.max} "
                          f"(export with --batch MIN:OPT:MAX to change it)")


def open_backend(name: str, manifest: Bundle, **options: Any) -> Backend:
    """Open backend `name` ("ort" or "tensorrt") on a bundle; heavy imports happen here."""
    if name == "ort":
        from odelt.runtime.ort_backend import OrtBackend
        return OrtBackend(manifest, **options)
    if name == "tensorrt":
        from odelt.runtime.trt_backend import TrtBackend
        return TrtBackend(manifest, **options)
    raise ConfigError(f"unknown backend {name!r}; expected 'ort' or 'tensorrt'")
