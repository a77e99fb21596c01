"""Running a bundle's graphs: the dataflow along a chain and the modulation tables that can stand in
for its conditioning graph. Backends (ONNX Runtime, TensorRT) plug in through `run_graph`.

Dataflow along a chain: keep a dict of named tensors, starting with the caller's x, t, dt_base, y
(and cfg_scale) plus l = full((B,), length, int32). Each graph reads its inputs from the dict by
name; each output named `<n>_out` is stored back as `<n>` (chunks pass h and V this way), other
outputs under their own name. The last graph outputs `velocity`. With guidance folded in, graph rows
inside the chain are 2B (B conditional rows, then B null-class rows); the caller's tensors stay B.

Modulation tables (`tables/<name>.npz`, built by odelt.exporter.tables): for a fixed time schedule,
class and length, the conditioning graph's outputs precomputed, so a device needs no conditioning
weights. The npz holds, per output name, a float32 array (S, rows, width): rows = 1 (class y) or 2
(guidance: class y, then the null class). To feed step s at batch B, repeat each row B times in
order: np.repeat(table[name][s], B, axis=0) -> (rows*B, width).
"""

from __future__ import annotations

import zipfile
from typing import Callable, Mapping, Sequence

import numpy as np

from odelt.errors import BundleError
from odelt.bundle.bundle import Bundle
from odelt.bundle.iospec import GraphSpec

RunGraph = Callable[[GraphSpec, dict[str, np.ndarray]], Mapping[str, np.ndarray]]
# Called after each chunk of a segments chain with the length that chunk completes (an exit):
# True ends the call there, the exit head reading the velocity sum so far.
AfterSegment = Callable[[int], bool]


def chain_feeds(graph: GraphSpec, env: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = [t.name for t in graph.inputs if t.name not in env]
    if missing:
        raise BundleError(f"graph {graph.name} needs inputs {missing}, which no earlier graph or caller provided")
    return {t.name: env[t.name] for t in graph.inputs}


def chain_exits(bundle: Bundle, length: int, layout: str | None = None,
                lengths: Sequence[int] | None = None) -> dict[int, int]:
    """{position of a chunk in the chain of `length`: the exit length it completes}: the chunks after
    which a call can stop. An exit is a served length whose own chain is this chain's graphs up to
    that chunk plus the same head, so that stopping there runs exactly its graphs (only the blocks'
    modulations differ: they stay those of `length`, whose length embedding they include). The last chunk is not an exit (the
    call ends there anyway); the per-length layout has none."""
    chain = bundle.chain(length, layout)
    out: dict[int, int] = {}
    for n in lengths if lengths is not None else bundle.lengths:
        if n >= length:
            continue
        other = bundle.chain(n, layout)
        pos = len(other) - 2
        if pos >= 0 and other[-1].kind == "head" and other[pos].kind == "chunk" and chain[:pos + 1] == other[:-1] \
                and chain[-1] == other[-1]:
            out[pos] = n
    return out


def run_chain(bundle: Bundle, length: int, feeds: Mapping[str, np.ndarray], run_graph: RunGraph,
              layout: str | None = None, after_segment: AfterSegment | None = None) -> np.ndarray:
    """Compute the velocity at `length` by running the chain with `run_graph(spec, inputs) -> outputs`.

    `feeds` holds the caller's x, t, dt_base, y (and cfg_scale when the bundle has guidance); `l` is
    added here. Passing the conditioning outputs (mod*, final_mod) in `feeds` is how a modulation
    table replaces the conditioning graph. `after_segment(exit length)` is asked after every chunk
    that completes an exit (chain_exits); True jumps to the head.
    """
    batch = int(np.asarray(feeds["x"]).shape[0])
    env: dict[str, np.ndarray] = {"l": np.full((batch,), length, dtype=np.int32), **feeds}
    chain = bundle.chain(length, layout)
    exits = chain_exits(bundle, length, layout) if after_segment is not None else {}
    pos = 0
    while pos < len(chain):
        graph = chain[pos]
        if not (graph.kind == "conditioning" and all(t.name in feeds for t in graph.outputs)):
            outputs = run_graph(graph, chain_feeds(graph, env))      # (else a modulation table gave them)
            for name, value in outputs.items():
                env[name[:-4] if name.endswith("_out") else name] = value
        stop = pos in exits and after_segment is not None and after_segment(exits[pos])
        pos = len(chain) - 1 if stop else pos + 1
    return env["velocity"]


def load_table(bundle: Bundle, name: str) -> dict[str, np.ndarray]:
    """A stored modulation table: {output name: (S, rows, width) float32}. Never unpickles; every
    member's header is checked against the manifest's entry before any array is read."""
    tables = bundle.tables
    if name not in tables:
        raise BundleError(f"{bundle.root}: no modulation table {name!r}; expected one of {sorted(tables)}")
    path = bundle.root / tables[name]["file"]
    expected = _table_shapes(bundle, tables[name])
    try:
        _check_members(path, expected)
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise BundleError(f"{path}: expected a modulation table (npz of float32 arrays), found unreadable "
                          f"content ({e})") from None
    bad = [k for k, v in out.items() if not np.isfinite(v).all()]
    if bad:
        raise BundleError(f"{path}: expected finite numbers, found NaN or Inf in {bad[0]!r}")
    return out


def _table_shapes(bundle: Bundle, entry: dict) -> dict[str, tuple[int, ...]]:
    """{output: (steps, rows, width)} a table entry implies: its steps, rows and the conditioning
    graph's output widths."""
    cond = next((g for g in bundle.graphs.values() if g.kind == "conditioning"), None)
    if cond is None:
        raise BundleError(f"{bundle.root}: modulation tables need the segments layout's conditioning graph; "
                          "this bundle has none")
    widths = {t.name: t.shape[-1] for t in cond.outputs}
    steps, rows = len(entry.get("t", ())), 2 if bundle.guidance else 1
    outputs = entry.get("outputs", list(widths))
    unknown = [o for o in outputs if o not in widths]
    if unknown or not isinstance(entry.get("t"), list):
        raise BundleError(f"{bundle.root}/manifest.json: tables: expected times t and outputs of the conditioning "
                          f"graph {sorted(widths)}, found {unknown or entry.get('t')!r}")
    return {o: (steps, rows, int(widths[o])) for o in outputs}


def _check_members(path, expected: dict[str, tuple[int, ...]]) -> None:
    """Each npz member's npy header (dtype, shape) matches `expected` and its size fits the member,
    read from the headers alone (a member claiming petabytes is refused before numpy allocates)."""
    from numpy.lib import format as npy

    with zipfile.ZipFile(path) as z:
        members = {i.filename[:-4] if i.filename.endswith(".npy") else i.filename: i for i in z.infolist()}
        if sorted(members) != sorted(expected):
            raise BundleError(f"{path}: expected arrays {sorted(expected)} (the manifest's entry), "
                              f"found {sorted(members)[:8]}")
        for name, info in members.items():
            with z.open(info) as f:
                version = npy.read_magic(f)
                read = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
                if read is None:
                    raise BundleError(f"{path}: {name}: expected an npy header of version 1.0 or 2.0, found {version}")
                shape, _, dtype = read(f)
            if dtype != np.float32 or tuple(shape) != expected[name]:
                raise BundleError(f"{path}: {name}: expected float32 {expected[name]} (the manifest's entry), "
                                  f"found {dtype} {tuple(shape)}")
            if int(np.prod(shape, dtype=np.float64)) * 4 > info.file_size:
                raise BundleError(f"{path}: {name}: header claims {shape} floats, the member holds "
                                  f"{info.file_size} bytes")


def table_feeds(table: Mapping[str, np.ndarray], step: int, batch: int) -> dict[str, np.ndarray]:
    """Conditioning outputs for step `step` at caller batch `batch`: each row repeated batch times,
    rows in order (class rows, then null rows with guidance) -> (rows * batch, width)."""
    return {name: np.repeat(arr[step], batch, axis=0) for name, arr in table.items()}
