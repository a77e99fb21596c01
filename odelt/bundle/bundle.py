"""The export bundle: a folder of ONNX graphs plus `manifest.json`. `Bundle` is the only code that
reads or writes the manifest; every stage opens a bundle with `open_bundle` and records what it
made with `Bundle.update` / `Bundle.edit`. Running a chain of graphs lives in odelt.bundle.chain.

Bundle layout (format "odelt-bundle/1")::

    BUNDLE/
      manifest.json
      segments/cond.onnx            conditioning: (t, dt_base, y, l) -> mod0..mod{k-1}, final_mod
      segments/blocks_0-3.onnx      chunk: (x | h, V) + its blocks' mods -> h_out, V_out
      segments/head.onnx            exit head: (V, final_mod[, cfg_scale]) -> velocity
      segments/head0.onnx           exit of lengths with no live block: (final_mod[, cfg_scale]) -> velocity
      per-length/length_4.onnx      (x, t, dt_base, y[, cfg_scale]) -> velocity, l folded in
      decoder/decoder_sd.onnx       latent models: latent (NCHW) -> image in about [-1, 1]
      <graph>.onnx.data             external weights, next to their graph, when the model is large
      fp16/ int8/                   precision variants (odelt.calibration.quantize)
      engines/<set>/                engine sets (odelt.engines.build)
      tables/<name>.npz             precomputed modulation tables (odelt.exporter.tables)
      profile/ schedules/ quality.json   written by later stages, not hashed (they are rewritten)

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
    decoders      latent models only: {kind: {"kind": "sd" | "taesd", "graph": graph name (layout "decoder"),
                   "scaling_factor": float (the VAE's; already folded into the graph), "scale_folded": true,
                   "latent": [C, H, W], "image": [C, H, W], "params": int (decode path), "source": str
                   (the PATH given), "source_hash": str (weights + config), "weights": str (the file read),
                   "spelling": "current" | "legacy" | "none" (attention keys), "config": {...} (the
                   diffusers constructor keywords)}}; absent or {} for pixel-space models. Decoder
                   graphs are listed under `graphs` (layout "decoder") but not in `layouts`/`chains`.
    tables        {name: {"file", "length", "y", "cfg", "rows", "t", "dt_base", "outputs"}}
    precisions    {"fp16" | "int8": {"graphs": {name: {"file", "external_data", "weight_bytes",
                   "changed"}}, "report", "metrics", "fallback", "flavour" (int8: "trt" | "cpu"),
                   "decoder_precisions" (latent bundles): {decoder graph: "fp32" | "fp16"}}}
    engines       {set name: {"backend", "target", "precision", "dir", "graphs": {name: relpath},
                   "built": {...}}}
    files         {relpath: {"sha256": 16 hex, "size": int, "mtime_ns": int, "owner": "section/key"}}

Every file a manifest entry names is listed under `files` by the stage that wrote it, with the
entry that owns it; replacing an entry drops the files it owned. Opening a bundle compares each
listed file's size and modification time with the record and hashes only files whose time moved
(so opening a multi-GB bundle costs milliseconds); `open_bundle(..., verify=True)` hashes every
file and also refuses graph or engine files that no entry lists.

Writes are serialised: `edit()` takes an exclusive lock on BUNDLE/.manifest.lock, re-reads the
manifest under it, and replaces manifest.json atomically, so two stages running at once never
lose each other's entries.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from odelt.errors import BundleError
from odelt.bundle.iospec import BatchRange, GraphSpec
from odelt.bundle.schema import check_graph_io, check_manifest
from odelt.fileio import file_hash, read_json, remove_stale_partials, write_error, write_json_atomic
from odelt.models.config import DiTConfig

FORMAT = "odelt-bundle/1"
MANIFEST = "manifest.json"
LOCK = ".manifest.lock"
PRECISIONS = ("fp32", "fp16", "int8")
SECTIONS = ("precisions", "engines", "tables")           # what later stages add, one entry per key
ARTIFACT_SUFFIXES = (".onnx", ".onnx.data", ".ort", ".plan", ".engine", ".npz")


@dataclass(frozen=True)
class DecoderInfo:
    """One decoder stage of a latent bundle (its graph is `graph`, kind "decoder")."""

    kind: str                      # "sd" (AutoencoderKL) | "taesd" (AutoencoderTiny)
    graph: str
    scaling_factor: float          # the VAE's; folded into the graph, so no host divides by it
    scale_folded: bool
    latent: tuple[int, ...]        # (C, H, W) the graph takes
    image: tuple[int, ...]         # (C, H, W) it returns
    params: int
    source: str
    source_hash: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> DecoderInfo:
        return cls(str(d["kind"]), str(d["graph"]), float(d["scaling_factor"]), bool(d["scale_folded"]),
                   tuple(d["latent"]), tuple(d["image"]), int(d.get("params", 0)), str(d.get("source", "")),
                   str(d.get("source_hash", "")))


@dataclass(frozen=True)
class GraphFile:
    """Where one graph of one precision lives (paths relative to the bundle)."""

    file: str
    external_data: str | None
    weight_bytes: int


class Bundle:
    """A parsed manifest plus the folder it came from. Read-only: change it with `update`/`edit`."""

    def __init__(self, root: Path, data: dict):
        self.root = Path(root)
        self._data = data
        self._config: DiTConfig | None = None

    # -- the model and its export -------------------------------------------------------------
    @property
    def config(self) -> DiTConfig:
        # parsed once: a server asks for it per request, and parsing checks every field (~0.1 ms)
        if self._config is None:
            self._config = DiTConfig.from_dict(self._data["model"]["config"])
        return self._config

    @property
    def source(self) -> str:
        return str(self._data["model"].get("source") or "")

    @property
    def model_hash(self) -> str | None:
        """File hash of the model the bundle was exported from (None when not recorded)."""
        return self._data["model"].get("source_hash") or None

    @property
    def param_bytes(self) -> int:
        return int(self._data["model"]["param_bytes"])

    @property
    def layouts(self) -> tuple[str, ...]:
        return tuple(self._data["layouts"])

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(self._data["lengths"])

    @property
    def opset(self) -> int:
        return int(self._data["opset"])

    @property
    def guidance(self) -> bool:
        """Classifier-free guidance folded into the graphs (they take cfg_scale, rows are 2B)."""
        return bool(self._data["cfg"])

    @property
    def null_class(self) -> int:
        return int(self._data.get("null_class", self.config.num_classes))

    @property
    def batch(self) -> BatchRange:
        return BatchRange(**self._data["batch"])

    @property
    def weight_bytes(self) -> dict[str, int]:
        return dict(self._data["weight_bytes"])

    # -- graphs and chains --------------------------------------------------------------------
    @property
    def graphs(self) -> dict[str, GraphSpec]:
        return {name: GraphSpec.from_dict(g) for name, g in self._data["graphs"].items()}

    def graph(self, name: str) -> GraphSpec:
        if name not in self._data["graphs"]:
            raise BundleError(f"{self.root}: no graph {name!r}; expected one of {sorted(self._data['graphs'])}")
        return GraphSpec.from_dict(self._data["graphs"][name])

    def graph_file(self, name: str, precision: str = "fp32") -> GraphFile:
        self.graph(name)
        g = self._data["graphs"][name] if precision == "fp32" else self._variant_graphs(precision, name)
        return GraphFile(g["file"], g.get("external_data"), int(g.get("weight_bytes", 0)))

    def graph_path(self, name: str, precision: str = "fp32") -> Path:
        """Absolute path of graph `name` in `precision` (its external data, if any, sits next to it)."""
        return self.root / self.graph_file(name, precision).file

    def default_layout(self) -> str:
        return "segments" if "segments" in self.layouts else self.layouts[0]

    def chain(self, length: int, layout: str | None = None) -> list[GraphSpec]:
        """The graphs that compute the velocity at `length`, in run order."""
        layout = layout or self.default_layout()
        if layout not in self.layouts:
            raise BundleError(f"{self.root}: layout {layout!r} not in this bundle; expected one of {list(self.layouts)}")
        chains = self._data["chains"][layout]
        if str(length) not in chains:
            raise BundleError(f"{self.root}: length {length} not exported; expected one of {list(self.lengths)}")
        return [self.graph(name) for name in chains[str(length)]]

    def chains(self, layout: str) -> dict[int, list[str]]:
        return {int(n): list(c) for n, c in self._data["chains"][layout].items()}

    # -- the decoder stage (latent models) ----------------------------------------------------
    @property
    def decoders(self) -> dict[str, DecoderInfo]:
        """{kind: DecoderInfo}; empty for a pixel-space bundle."""
        return {k: DecoderInfo.from_dict(d) for k, d in self._data.get("decoders", {}).items()}

    def decoder(self, kind: str | None = None) -> DecoderInfo:
        """The decoder of `kind`; without a kind, the bundle's only one (or "sd" when it has both)."""
        have = self.decoders
        if not have:
            raise BundleError(f"{self.root}: no decoder stage; expected a latent bundle exported with "
                              "--vae KIND:PATH")
        if kind is None:
            kind = next(iter(have)) if len(have) == 1 else "sd" if "sd" in have else sorted(have)[0]
        if kind not in have:
            raise BundleError(f"{self.root}: no {kind!r} decoder; expected one of {sorted(have)}")
        return have[kind]

    # -- what later stages added --------------------------------------------------------------
    @property
    def tables(self) -> dict[str, dict]:
        return json.loads(json.dumps(self._data.get("tables", {})))

    @property
    def precisions(self) -> tuple[str, ...]:
        """Precisions this bundle offers; FP32 always."""
        return ("fp32", *self._data.get("precisions", {}))

    def variant(self, precision: str) -> dict | None:
        """The manifest entry of a precision variant (a copy), None when the bundle has none."""
        entry = self._data.get("precisions", {}).get(precision)
        return None if entry is None else json.loads(json.dumps(entry))

    def decoder_dtype(self, kind: str | None, precision: str) -> str:
        """What decoder `kind`'s graph computes in when a run at `precision` opens it: "fp32" or
        "fp16" (no INT8 decoder exists: odelt.calibration.decoder). Quantize records it in the
        variant's entry (`decoder_precisions`); a manifest from before that record is read here, the
        one place: a variant listing the FP32 file decodes in FP32, a converted decoder is FP16."""
        graph = self.decoder(kind).graph
        if precision == "fp32":
            return "fp32"
        recorded = (self._data.get("precisions", {}).get(precision) or {}).get("decoder_precisions", {})
        if graph in recorded:
            return str(recorded[graph])
        return "fp32" if self.graph_file(graph, precision).file == self.graph_file(graph).file else "fp16"

    @property
    def int8_flavour(self) -> str | None:
        """Flavour of the int8 variant ("trt" | "cpu"); variants from before flavours were "trt"."""
        entry = self.variant("int8")
        return None if entry is None else str(entry.get("flavour", "trt"))

    def _variant_graphs(self, precision: str, name: str) -> dict:
        entry = self._data.get("precisions", {}).get(precision)
        if entry is None:
            raise BundleError(f"{self.root}: no {precision} variant; expected one of {list(self.precisions)} "
                              f"(run `odelt-export quantize {self.root} --precision {precision}`)")
        if name not in entry["graphs"]:
            raise BundleError(f"{self.root}: {precision} variant has no graph {name!r}")
        return entry["graphs"][name]

    @property
    def engine_sets(self) -> dict[str, dict]:
        return json.loads(json.dumps(self._data.get("engines", {})))

    def engine_set(self, name: str) -> dict:
        sets = self._data.get("engines", {})
        if name not in sets:
            raise BundleError(f"{self.root}: no engine set {name!r}; expected one of {sorted(sets)} "
                              f"(run `odelt-export build {self.root} ...`)")
        return json.loads(json.dumps(sets[name]))

    @property
    def files(self) -> dict[str, dict]:
        return {rel: _record(r) for rel, r in self._data.get("files", {}).items()}

    # -- writing --------------------------------------------------------------------------------
    @contextmanager
    def edit(self) -> Iterator[Edit]:
        """Lock the bundle, re-read its manifest, let the caller change it, write it atomically.
        The caller may also move its own files into place inside the block (under the lock)."""
        lock_path = self.root / LOCK
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_error(lock_path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            clean_partials(self, "engines")                # work folders of killed stages
            current = _read(self.root)
            change = Edit(current)
            yield change
            if change.changed:
                write_json_atomic(self.root / MANIFEST, change.bundle._data)
        finally:
            os.close(fd)                                   # closing releases the lock
        self._data = _read(self.root)._data

    def update(self, section: str, key: str, entry: dict | None, files: Iterable[str] = ()) -> Bundle:
        """Record (or with entry None, remove) one entry of `section`, owning `files`."""
        with self.edit() as change:
            change.set(section, key, entry, files)
        return self

    def write_side(self, rel: str, data: Any) -> Path:
        """Write a side file (quality.json, profile/, schedules/: rewritten by later stages, so not
        hashed) as JSON, atomically and under the bundle's lock; rel must stay inside the bundle."""
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts or not parts or parts[0] in (MANIFEST, LOCK):
            raise BundleError(f"{self.root}: side file {rel!r}: expected a path inside the bundle")
        with self.edit():
            return write_json_atomic(self.root / rel, data)

    def check_files(self, verify: bool = False) -> None:
        """Listed files exist with their recorded size; hash those whose mtime moved (all with verify)."""
        for rel, rec in self.files.items():
            p = self.root / rel
            try:
                st = p.stat()
            except OSError:
                raise BundleError(f"{self.root}: bundle file {rel} is missing (expected by manifest.json)") from None
            if rec["size"] not in (None, st.st_size):
                raise BundleError(f"{self.root}: bundle file {rel} was modified: {st.st_size} bytes, "
                                  f"manifest says {rec['size']}")
            if verify or rec["mtime_ns"] != st.st_mtime_ns:
                digest = file_hash(p)
                if digest != rec["sha256"]:
                    raise BundleError(f"{self.root}: bundle file {rel} was modified: hash {digest}, "
                                      f"manifest says {rec['sha256']}")
        if verify:
            self._check_unlisted()
            for name, spec in self.graphs.items():
                check_graph_io(self.root, name, spec, self.graph_path(name))

    def changed_file(self) -> str | None:
        """The first listed file whose bytes no longer match its record (hashed now, whatever its
        time says), as one phrase; None when every file is as recorded. Asked before a failure is
        blamed on the model: weights that rotted with their size and time kept show up only here."""
        for rel, rec in self.files.items():
            p = self.root / rel
            try:
                digest = file_hash(p)
            except OSError:
                return f"bundle file {rel} is missing or unreadable"
            if digest != rec["sha256"]:
                return f"bundle file {rel} was modified (hash {digest}, manifest says {rec['sha256']})"
        return None

    def _check_unlisted(self) -> None:
        listed = set(self._data.get("files", {}))
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root).as_posix()
            hidden = any(part.startswith(".") for part in Path(rel).parts)
            if p.is_file() and not hidden and rel.endswith(ARTIFACT_SUFFIXES) and rel not in listed:
                raise BundleError(f"{self.root}: {rel} is not listed in manifest.json; expected every graph, "
                                  "engine and table file to belong to an entry (remove it or re-run its stage)")


class Edit:
    """The manifest being changed inside `Bundle.edit()`; `bundle` is the state read under the lock."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.changed = False

    def set(self, section: str, key: str, entry: dict | None, files: Iterable[str] = ()) -> None:
        if section not in SECTIONS:
            raise BundleError(f"unknown manifest section {section!r}; expected one of {list(SECTIONS)}")
        data = self.bundle._data
        owner = f"{section}/{key}"
        records = {rel: r for rel, r in data.get("files", {}).items() if _record(r)["owner"] != owner}
        if entry is None:
            data.get(section, {}).pop(key, None)
        else:
            data[section] = {**data.get(section, {}), key: entry}
            records.update(file_records(self.bundle.root, files, owner))
        data["files"] = dict(sorted(records.items()))
        self.changed = True


def file_records(root: Path, files: Iterable[str], owner: str) -> dict[str, dict]:
    """Hash, size and mtime of each file (relative to root), as manifest.json records them."""
    out = {}
    for rel in files:
        p = root / rel
        if not p.is_file():
            raise BundleError(f"{root}: cannot record {rel}: expected a file, found none")
        st = p.stat()
        out[rel] = {"sha256": file_hash(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "owner": owner}
    return out


def _record(r: Any) -> dict:
    """A file record; manifests from before records (a bare hash) are always hashed when opened."""
    if isinstance(r, str):
        return {"sha256": r, "size": None, "mtime_ns": None, "owner": "export"}
    return r


def write_new_bundle(root: Path, data: dict, files: Iterable[str]) -> Bundle:
    """Write the manifest of a freshly exported folder (private to the exporter, not yet in place)."""
    data = {**data, "files": file_records(root, sorted(files), "export")}
    write_json_atomic(root / MANIFEST, data)
    return Bundle(root, data)


def _read(root: Path) -> Bundle:
    path = root / MANIFEST
    data = read_json(path, BundleError, f"not a bundle: expected {path} (an exported folder with a manifest), "
                                        "found none")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise BundleError(f"{path}: expected bundle format {FORMAT!r}, found {found!r}")
    missing = [k for k in ("model", "layouts", "lengths", "graphs", "chains", "batch", "opset", "cfg") if k not in data]
    if missing:
        raise BundleError(f"{path}: manifest lacks {missing}; expected a complete {FORMAT} manifest")
    check_manifest(root, data)                  # hostile input: every key and path, once, here
    return Bundle(root, data)


def open_bundle(path: str | os.PathLike, verify: bool = False, check_files: bool = True) -> Bundle:
    """Open BUNDLE (cheap file checks; `verify` hashes every file and refuses unlisted graphs).
    `check_files=False` reads a manifest copied away from its files (a serving repository's
    sampler model, whose graphs live in models of their own) without looking for them."""
    bundle = _read(Path(path))
    if check_files:
        bundle.check_files(verify)
    return bundle


def clean_partials(bundle: Bundle, *folders: str) -> None:
    """Remove `.…partial-<pid>` folders that dead processes left in the bundle (and subfolders)."""
    for folder in ("", *folders):
        remove_stale_partials(bundle.root / folder)
