"""The buffer plan every backend shares: one slot per tensor a chain touches, at one batch size.

`BufferLayout` decides, once per batch size, every tensor a chain touches: the caller's inputs, the
modulations (one slot per name, shared by all lengths), and two ping-pong slots for the chunk
state (h, V): chunk j writes slot j % 2 and reads slot (j-1) % 2, so the chain needs two state
buffers however long it is. All float32 tensors live in one arena sized for the longest chain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from odelt.errors import ConfigError
from odelt.bundle.bundle import Bundle
from odelt.bundle.iospec import GraphSpec, TensorSpec

ALIGN = 16   # float32 elements = 64 bytes: unaligned bound buffers made ONNX Runtime calls ~2x slower


@dataclass(frozen=True)
class Slot:
    """Where one tensor of one graph call lives: a buffer key and its concrete shape."""

    key: str
    shape: tuple[int, ...]
    dtype: str


class BufferLayout:
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


def host_buffers(plan: BufferLayout) -> dict[str, np.ndarray]:
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
