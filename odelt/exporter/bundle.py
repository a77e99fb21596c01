"""The export bundle: a folder of ONNX graphs plus `manifest.json`, and the small reader API that
the verifier, the engine builder and the runtime use. Keep this API stable.

Bundle layout (format "odelt-bundle/1")::

    BUNDLE/
      manifest.json
      segments/cond.onnx            conditioning: (t, dt_base, y, l) -> mod0..mod{k-1}, final_mod
      segments/blocks_0-3.onnx      chunk: (x | h, V) + its blocks' mods -> h_out, V_out
      segments/blocks_4-7.onnx      ...one chunk per span between exits
      segments/head.onnx            exit head: (V, final_mod[, cfg_scale]) -> velocity
      per-length/length_4.onnx      (x, t, dt_base, y[, cfg_scale]) -> velocity, l folded in
      <graph>.onnx.data             external weights, next to their graph, when the model is large
      tables/<name>.npz             optional precomputed modulation tables (see below)

manifest.json keys::

    format        "odelt-bundle/1"
    model         {"config": DiTConfig.to_dict(), "source": str, "source_hash": str,
                   "param_bytes": int (the whole PyTorch model)}
    opset         int;  cfg: bool (classifier-free guidance folded in);  null_class: int
    batch         {"min", "opt", "max"}: the batch range engines should be built for
    layouts       ["segments", "per-length"] (those exported);  lengths: [int, ...]
    graphs        {name: GraphSpec.to_dict() + {"external_data": relpath | null, "weight_bytes": int}}
                  GraphSpec: name, layout, kind, blocks, length, file, inputs, outputs; each tensor
                  {"name", "dtype", "shape"} with dynamic axes "batch" / "2*batch" (see iospec.py)
    chains        {layout: {str(length): [graph name, ...]}}: run in order to get the velocity
    weight_bytes  {"segments", "segments_without_conditioning", "per-length"} (those exported)
    tables        {name: table entry} (see below; {} when none)
    files         {relpath: sha256-16 of the file}: every file in the bundle except the manifest

Dataflow along a chain (what `run_chain` implements): keep a dict of named tensors, starting with
the caller's x, t, dt_base, y (and cfg_scale) plus l = full((B,), length, int32). Each graph reads
its inputs from the dict by name; each output named `<n>_out` is stored back as `<n>` (chunks pass
h and V this way), other outputs under their own name. The last graph outputs `velocity`.
With cfg, graph rows inside the chain are 2B (B conditional rows, then B null-class rows); the
caller's tensors stay B.

Modulation tables (`tables/<name>.npz`, built by odelt.exporter.tables): for a fixed time schedule,
class and length, the conditioning graph's outputs precomputed, so a device needs no conditioning
weights. Manifest entry: {"file", "length", "y" (int, or null = the null class), "cfg", "rows",
"t": [S floats], "dt_base": [S ints], "outputs": [names]}. The npz holds, per output name, a float32
array (S, rows, width): rows = 1 (class y) or 2 (cfg: class y, then the null class). To feed step s
at batch B, repeat each row B times in order: np.repeat(table[name][s], B, axis=0) -> (rows*B, width).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from odelt.errors import ExportError
from odelt.exporter.iospec import BatchRange, GraphSpec
from odelt.fileio import read_json
from odelt.models.config import DiTConfig


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (first 16 hex digits), the same digest as
    odelt.models.checkpoint.file_hash; defined here so that reading a bundle never imports torch
    (the runtime runs on devices without it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


FORMAT = "odelt-bundle/1"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest.json plus the folder it came from."""

    root: Path
    data: dict = field(repr=False)

    @property
    def config(self) -> DiTConfig:
        return DiTConfig.from_dict(self.data["model"]["config"])

    @property
    def layouts(self) -> tuple[str, ...]:
        return tuple(self.data["layouts"])

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(self.data["lengths"])

    @property
    def opset(self) -> int:
        return int(self.data["opset"])

    @property
    def cfg(self) -> bool:
        return bool(self.data["cfg"])

    @property
    def batch(self) -> BatchRange:
        return BatchRange(**self.data["batch"])

    @property
    def graphs(self) -> dict[str, GraphSpec]:
        return {name: GraphSpec.from_dict(g) for name, g in self.data["graphs"].items()}

    @property
    def tables(self) -> dict[str, dict]:
        return dict(self.data.get("tables", {}))

    def graph(self, name: str) -> GraphSpec:
        if name not in self.data["graphs"]:
            raise ExportError(f"{self.root}: no graph {name!r}; expected one of {sorted(self.data['graphs'])}")
        return GraphSpec.from_dict(self.data["graphs"][name])

    def graph_path(self, name: str) -> Path:
        """Absolute path of a graph's .onnx file (its external data, if any, sits next to it)."""
        return self.root / self.graph(name).file

    def default_layout(self) -> str:
        return "segments" if "segments" in self.layouts else self.layouts[0]

    def chain(self, length: int, layout: str | None = None) -> list[GraphSpec]:
        """The graphs that compute the velocity at `length`, in run order."""
        layout = layout or self.default_layout()
        if layout not in self.layouts:
            raise ExportError(f"{self.root}: layout {layout!r} not in this bundle; expected one of {list(self.layouts)}")
        chains = self.data["chains"][layout]
        if str(length) not in chains:
            raise ExportError(f"{self.root}: length {length} not exported; expected one of {list(self.lengths)}")
        return [self.graph(name) for name in chains[str(length)]]


def load_manifest(bundle: str | os.PathLike, check_files: bool = True) -> Manifest:
    """Read BUNDLE/manifest.json; with check_files, also check every listed file's hash."""
    root = Path(bundle)
    path = root / MANIFEST
    data = read_json(path, ExportError, f"not a bundle: expected {path} (an exported folder with a manifest), found none")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ExportError(f"{path}: expected bundle format {FORMAT!r}, found {found!r}")
    manifest = Manifest(root, data)
    if check_files:
        check_bundle_files(manifest)
    return manifest


def check_bundle_files(manifest: Manifest) -> None:
    """Every file the manifest lists exists and has the recorded hash."""
    for rel, digest in manifest.data["files"].items():
        p = manifest.root / rel
        if not p.is_file():
            raise ExportError(f"{manifest.root}: bundle file {rel} is missing (expected by manifest.json)")
        if file_hash(p) != digest:
            raise ExportError(f"{manifest.root}: bundle file {rel} was modified: hash {file_hash(p)}, "
                              f"manifest says {digest}")


def write_manifest(root: Path, data: dict) -> None:
    """Write manifest.json atomically (temp file, then rename), recording hashes of all files."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))
    data = {**data, "files": {p.relative_to(root).as_posix(): file_hash(p) for p in files}}
    tmp = root / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, root / MANIFEST)


RunGraph = Callable[[GraphSpec, dict[str, np.ndarray]], Mapping[str, np.ndarray]]


def chain_feeds(graph: GraphSpec, env: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = [t.name for t in graph.inputs if t.name not in env]
    if missing:
        raise ExportError(f"graph {graph.name} needs inputs {missing}, which no earlier graph or caller provided")
    return {t.name: env[t.name] for t in graph.inputs}


def run_chain(manifest: Manifest, length: int, feeds: Mapping[str, np.ndarray], run_graph: RunGraph,
              layout: str | None = None) -> np.ndarray:
    """Compute the velocity at `length` by running the chain with `run_graph(spec, inputs) -> outputs`.

    `feeds` holds the caller's x, t, dt_base, y (and cfg_scale when the bundle has cfg); `l` is
    added here. Any backend (ONNX Runtime, TensorRT) plugs in through `run_graph`. Passing the
    conditioning outputs (mod*, final_mod) in `feeds` and a chain without "cond" is how a
    modulation table replaces the conditioning graph.
    """
    batch = int(np.asarray(feeds["x"]).shape[0])
    env: dict[str, np.ndarray] = {"l": np.full((batch,), length, dtype=np.int32), **feeds}
    for graph in manifest.chain(length, layout):
        if graph.kind == "conditioning" and all(t.name in feeds for t in graph.outputs):
            continue                                         # a modulation table already gave them
        outputs = run_graph(graph, chain_feeds(graph, env))
        for name, value in outputs.items():
            env[name[:-4] if name.endswith("_out") else name] = value
    return env["velocity"]


def load_table(manifest: Manifest, name: str) -> dict[str, np.ndarray]:
    """A stored modulation table: {output name: (S, rows, width) float32}."""
    if name not in manifest.tables:
        raise ExportError(f"{manifest.root}: no modulation table {name!r}; expected one of {sorted(manifest.tables)}")
    with np.load(manifest.root / manifest.tables[name]["file"]) as z:
        return {k: z[k] for k in z.files}


def table_feeds(table: Mapping[str, np.ndarray], step: int, batch: int) -> dict[str, np.ndarray]:
    """Conditioning outputs for step `step` at caller batch `batch`: each row repeated batch times,
    rows in order (class rows, then null rows with cfg) -> (rows * batch, width)."""
    return {name: np.repeat(arr[step], batch, axis=0) for name, arr in table.items()}
