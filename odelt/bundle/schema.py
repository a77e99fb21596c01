"""What a manifest.json may hold, checked once when a bundle is opened.

A bundle is downloaded and shared: its manifest is hostile input. Before any stage reads a value,
`check_manifest` walks the whole document (types, ranges, references between entries) and
`contained` resolves every path it names, symlinks included, inside the bundle folder. The first
problem is one BundleError naming the key (`graphs.cond.inputs.0.shape`) and what was found, so no
later code meets a string where it expects a length or a path that leaves the folder.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from odelt.errors import BundleError, ConfigError
from odelt.bundle.iospec import BATCH, CFG_ROWS, DECODER_LAYOUT, LAYOUTS
from odelt.models.config import DiTConfig

MAX_BATCH = 1 << 16          # engines are built for at most this many rows: a typo guard
MAX_DIM = 1 << 20            # one tensor axis (pixels, tokens, widths)
MAX_BYTES = 1 << 50          # recorded sizes (a petabyte: anything above is not a real file)
DTYPES = ("float32", "float16", "int32", "int64")
KINDS = ("conditioning", "chunk", "head", "length", "decoder")
DECODER_KINDS = ("sd", "taesd")
VARIANTS = ("fp16", "int8")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")


class Where:
    """The manifest being checked: its folder (for paths) and the one-line error for a key."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.real = os.path.realpath(self.root)

    def fail(self, key: str, expected: str, found: Any) -> BundleError:
        shown = repr(found)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        return BundleError(f"{self.root}/manifest.json: {key}: expected {expected}, found {shown}")


def contained(root: Path, rel: Any, key: str) -> str:
    """`rel` as a relative path that resolves (symlinks included) inside `root`; else one line."""
    where = Where(root)
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise where.fail(key, "a relative path inside the bundle", rel)
    if os.path.isabs(rel) or rel.startswith("~") or ".." in Path(rel).parts:
        raise BundleError(f"{root}/manifest.json: {key}: path {rel!r} leaves the bundle; expected a relative "
                          "path inside the bundle folder (absolute paths and '..' are refused)")
    real = os.path.realpath(os.path.join(where.real, rel))
    if os.path.commonpath([real, where.real]) != where.real:
        raise BundleError(f"{root}/manifest.json: {key}: path {rel!r} resolves to {real}, outside the bundle "
                          "(a symlink out of the folder); expected files inside the bundle")
    return rel


# -- scalar checks ------------------------------------------------------------------------------

def _int(w: Where, key: str, v: Any, lo: int = 0, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        raise w.fail(key, f"an integer in {lo}..{hi}" if hi is not None else f"an integer >= {lo}", v)
    return v


def _num(w: Where, key: str, v: Any, positive: bool = False) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
    if not ok:
        raise w.fail(key, "a finite number" + (" > 0" if positive else ""), v)
    return float(v)


def _type(w: Where, key: str, v: Any, kind: type, what: str) -> Any:
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
        raise w.fail(key, what, v)
    return v


def _obj(w: Where, key: str, v: Any) -> dict:
    return _type(w, key, v, dict, "an object")


def _list(w: Where, key: str, v: Any) -> list:
    return _type(w, key, v, list, "a list")


def _str(w: Where, key: str, v: Any) -> str:
    return _type(w, key, v, str, "a string")


def _one_of(w: Where, key: str, v: Any, choices: tuple) -> Any:
    if not isinstance(v, str) or v not in choices:
        raise w.fail(key, f"one of {list(choices)}", v)
    return v


def _finite_tree(w: Where, key: str, v: Any, depth: int = 0) -> None:
    """Free-form facts (reports, build records): JSON without NaN/Inf and not absurdly deep."""
    if depth > 32:
        raise w.fail(key, "at most 32 levels of nesting", "deeper")
    if isinstance(v, float) and not math.isfinite(v):
        raise w.fail(key, "finite numbers", v)
    if isinstance(v, dict):
        for k, x in v.items():
            _finite_tree(w, f"{key}.{k}", x, depth + 1)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _finite_tree(w, f"{key}.{i}", x, depth + 1)


# -- sections -----------------------------------------------------------------------------------

def _model(w: Where, m: Any) -> DiTConfig:
    m = _obj(w, "model", m)
    if "config" not in m:
        raise w.fail("model.config", "the model's config", None)
    try:
        cfg = DiTConfig.from_dict(m["config"])
    except ConfigError as e:
        raise BundleError(f"{w.root}/manifest.json: model.config: {e}") from None
    for k in ("source", "source_hash"):
        if m.get(k) is not None:
            _str(w, f"model.{k}", m[k])
    _int(w, "model.param_bytes", m.get("param_bytes"), 0, MAX_BYTES)
    return cfg


def _tensor(w: Where, key: str, t: Any) -> None:
    t = _obj(w, key, t)
    _str(w, f"{key}.name", t.get("name"))
    _one_of(w, f"{key}.dtype", t.get("dtype"), DTYPES)
    for i, d in enumerate(_list(w, f"{key}.shape", t.get("shape"))):
        if not (d in (BATCH, CFG_ROWS) or isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_DIM):
            raise w.fail(f"{key}.shape.{i}", f"an integer in 1..{MAX_DIM}, {BATCH!r} or {CFG_ROWS!r}", d)


def _graph(w: Where, name: str, g: Any, cfg: DiTConfig) -> None:
    key = f"graphs.{name}"
    g = _obj(w, key, g)
    if g.get("name") != name:
        raise w.fail(f"{key}.name", repr(name), g.get("name"))
    _one_of(w, f"{key}.layout", g.get("layout"), (*LAYOUTS, DECODER_LAYOUT))
    _one_of(w, f"{key}.kind", g.get("kind"), KINDS)
    for i, b in enumerate(_list(w, f"{key}.blocks", g.get("blocks"))):
        _int(w, f"{key}.blocks.{i}", b, 0, cfg.depth - 1)
    if g.get("length") is not None:
        _int(w, f"{key}.length", g["length"], 1, cfg.depth)
    _graph_file(w, key, g)
    for side in ("inputs", "outputs"):
        tensors = _list(w, f"{key}.{side}", g.get(side))
        for i, t in enumerate(tensors):
            _tensor(w, f"{key}.{side}.{i}", t)
        names = [t["name"] for t in tensors]
        if len(set(names)) != len(names):
            raise w.fail(f"{key}.{side}", "unique tensor names", names)


def _graph_file(w: Where, key: str, g: dict) -> None:
    contained(w.root, g.get("file"), f"{key}.file")
    if not str(g["file"]).endswith(".onnx"):
        raise w.fail(f"{key}.file", "an .onnx file", g["file"])
    if g.get("external_data") is not None:
        contained(w.root, g["external_data"], f"{key}.external_data")
    if "weight_bytes" in g:
        _int(w, f"{key}.weight_bytes", g["weight_bytes"], 0, MAX_BYTES)


def _chains(w: Where, data: dict, layouts: list, lengths: list) -> None:
    chains = _obj(w, "chains", data.get("chains"))
    for layout in layouts:
        per = _obj(w, f"chains.{layout}", chains.get(layout))
        if sorted(per) != sorted(str(n) for n in lengths):
            raise w.fail(f"chains.{layout}", f"one chain per length {lengths}", sorted(per))
        for n, names in per.items():
            for i, gname in enumerate(_list(w, f"chains.{layout}.{n}", names)):
                g = data["graphs"].get(gname) if isinstance(gname, str) else None
                if g is None or g["layout"] != layout:
                    raise w.fail(f"chains.{layout}.{n}.{i}", f"a {layout} graph listed under graphs", gname)
            if not names:
                raise w.fail(f"chains.{layout}.{n}", "at least one graph", names)
            _dataflow(w, f"chains.{layout}.{n}", [data["graphs"][g] for g in names], bool(data.get("cfg")))


CALLER = ("x", "t", "dt_base", "y", "l")      # what a sampler step feeds a chain (odelt.bundle.chain)


def _dataflow(w: Where, key: str, graphs: list[dict], guided: bool) -> None:
    """Each graph's inputs come from the caller or an earlier graph; the last one gives the velocity."""
    have = {*CALLER, *(("cfg_scale",) if guided else ())}
    for g in graphs:
        missing = [t["name"] for t in g["inputs"] if t["name"] not in have]
        if missing:
            raise w.fail(key, f"graphs whose inputs an earlier graph or the caller provides ({g['name']} needs "
                         f"{missing})", [x["name"] for x in graphs])
        have |= {t["name"][:-4] if t["name"].endswith("_out") else t["name"] for t in g["outputs"]}
    if "velocity" not in {t["name"] for t in graphs[-1]["outputs"]}:
        raise w.fail(key, "a last graph that outputs the velocity", [x["name"] for x in graphs])


def _decoders(w: Where, data: dict) -> None:
    for kind, d in _obj(w, "decoders", data.get("decoders", {})).items():
        key = f"decoders.{kind}"
        _one_of(w, key, kind, DECODER_KINDS)
        d = _obj(w, key, d)
        g = data["graphs"].get(d.get("graph")) if isinstance(d.get("graph"), str) else None
        if g is None or g["layout"] != DECODER_LAYOUT:
            raise w.fail(f"{key}.graph", "a decoder graph listed under graphs", d.get("graph"))
        _num(w, f"{key}.scaling_factor", d.get("scaling_factor"), positive=True)
        for side in ("latent", "image"):
            shape = _list(w, f"{key}.{side}", d.get(side))
            if len(shape) != 3:
                raise w.fail(f"{key}.{side}", "[C, H, W]", shape)
            for i, x in enumerate(shape):
                _int(w, f"{key}.{side}.{i}", x, 1, MAX_DIM)
        if "params" in d:
            _int(w, f"{key}.params", d["params"], 0, MAX_BYTES)


def _precisions(w: Where, data: dict) -> None:
    for p, entry in _obj(w, "precisions", data.get("precisions", {})).items():
        key = f"precisions.{p}"
        _one_of(w, key, p, VARIANTS)
        entry = _obj(w, key, entry)
        for name, g in _obj(w, f"{key}.graphs", entry.get("graphs")).items():
            if name not in data["graphs"]:
                raise w.fail(f"{key}.graphs", "graphs listed under graphs", name)
            _graph_file(w, f"{key}.graphs.{name}", _obj(w, f"{key}.graphs.{name}", g))
        if entry.get("report") is not None:
            contained(w.root, entry["report"], f"{key}.report")
        # its report and metrics are measurements (an exact decoder has PSNR inf): shown, never computed on


def _engines(w: Where, data: dict) -> None:
    for s, entry in _obj(w, "engines", data.get("engines", {})).items():
        key = f"engines.{s}"
        entry = _obj(w, key, entry)
        _str(w, f"{key}.backend", entry.get("backend"))
        contained(w.root, entry.get("dir"), f"{key}.dir")
        for name, rel in _obj(w, f"{key}.graphs", entry.get("graphs")).items():
            if name not in data["graphs"]:
                raise w.fail(f"{key}.graphs", "graphs listed under graphs", name)
            contained(w.root, rel, f"{key}.graphs.{name}")
        _finite_tree(w, key, entry)


def _tables(w: Where, data: dict, lengths: list) -> None:
    for name, entry in _obj(w, "tables", data.get("tables", {})).items():
        key = f"tables.{name}"
        entry = _obj(w, key, entry)
        contained(w.root, entry.get("file"), f"{key}.file")
        if "length" in entry and entry["length"] not in lengths:
            raise w.fail(f"{key}.length", f"one of the bundle's lengths {lengths}", entry["length"])
        _finite_tree(w, key, entry)


def _files(w: Where, data: dict) -> None:
    files = data.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{w.root}/manifest.json: files: expected the records of the bundle's files (hash, size), "
                          f"found {'none' if not files else type(files).__name__}; re-export the bundle")
    for rel, r in files.items():
        key = f"files.{rel}"
        contained(w.root, rel, key)
        if isinstance(r, str):                          # manifests from before records: a bare hash
            r = {"sha256": r, "size": None, "mtime_ns": None, "owner": "export"}
        r = _obj(w, key, r)
        if not isinstance(r.get("sha256"), str) or not _HEX16.match(r["sha256"]):
            raise w.fail(f"{key}.sha256", "16 hex digits", r.get("sha256"))
        for k, hi in (("size", MAX_BYTES), ("mtime_ns", None)):
            if not isinstance(files[rel], str):          # a record (not a bare hash) has both
                _int(w, f"{key}.{k}", r.get(k), 0, hi)
        _str(w, f"{key}.owner", r.get("owner"))


def _named_files(data: dict) -> list[tuple[str, str]]:
    """(key, path) of every file an entry names that its records must list."""
    out = [(f"graphs.{n}.file", g["file"]) for n, g in data["graphs"].items()]
    out += [(f"graphs.{n}.external_data", g["external_data"]) for n, g in data["graphs"].items()
            if g.get("external_data")]
    for p, entry in data.get("precisions", {}).items():
        out += [(f"precisions.{p}.graphs.{n}.file", g["file"]) for n, g in entry["graphs"].items()]
    for s, entry in data.get("engines", {}).items():
        out += [(f"engines.{s}.graphs.{n}", rel) for n, rel in entry["graphs"].items()]
    out += [(f"tables.{t}.file", e["file"]) for t, e in data.get("tables", {}).items()]
    return out


def check_manifest(root: Path, data: Any) -> None:
    """The whole manifest, once: types, ranges, references, contained paths and file records."""
    w = Where(root)
    data = _obj(w, "(top level)", data)
    cfg = _model(w, data.get("model"))
    _int(w, "opset", data.get("opset"), 7, 30)
    _type(w, "cfg", data.get("cfg"), bool, "true or false")
    if "null_class" in data:
        _int(w, "null_class", data["null_class"], 0, cfg.num_classes)
    batch = _obj(w, "batch", data.get("batch"))
    b = [_int(w, f"batch.{k}", batch.get(k), 1, MAX_BATCH) for k in ("min", "opt", "max")]
    if not b[0] <= b[1] <= b[2]:
        raise w.fail("batch", "min <= opt <= max", batch)
    layouts = _list(w, "layouts", data.get("layouts"))
    for i, layout in enumerate(layouts):
        _one_of(w, f"layouts.{i}", layout, LAYOUTS)
    if not layouts or len(set(layouts)) != len(layouts):
        raise w.fail("layouts", f"distinct layouts from {list(LAYOUTS)}", layouts)
    lengths = _list(w, "lengths", data.get("lengths"))
    for i, n in enumerate(lengths):
        _int(w, f"lengths.{i}", n, 1, cfg.depth)
    if not lengths:
        raise w.fail("lengths", "at least one length", lengths)
    for name, g in _obj(w, "graphs", data.get("graphs")).items():
        _graph(w, name, g, cfg)
    _chains(w, data, layouts, lengths)
    _obj(w, "weight_bytes", data.get("weight_bytes", {}))
    for k, v in data.get("weight_bytes", {}).items():
        _int(w, f"weight_bytes.{k}", v, 0, MAX_BYTES)
    _decoders(w, data)
    _precisions(w, data)
    _engines(w, data)
    _tables(w, data, lengths)
    _files(w, data)
    records = data["files"]
    for key, rel in _named_files(data):
        if rel not in records:
            raise w.fail(key, "a file listed under files (with its hash)", rel)


_ONNX_DTYPES = {1: "float32", 10: "float16", 6: "int32", 7: "int64"}


def check_graph_io(root: Path, name: str, spec: Any, path: Path) -> None:
    """The graph file's actual inputs and outputs (names, dtypes, ranks, static sizes) agree with
    the manifest's spec. Reads the graph's structure only (external weights stay on disk)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:                       # protobuf raises its own DecodeError and others
        raise BundleError(f"{root}: graph {name} ({path.name}): expected an ONNX model, found unreadable "
                          f"content ({type(e).__name__})") from None
    for side, values in (("inputs", model.graph.input), ("outputs", model.graph.output)):
        have = {v.name: v.type.tensor_type for v in values}
        want = {t.name: t for t in getattr(spec, side)}
        if set(have) != set(want):
            raise BundleError(f"{root}/manifest.json: graphs.{name}.{side}: the manifest says {sorted(want)}, "
                              f"the graph file has {sorted(have)}")
        for tname, t in want.items():
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in have[tname].shape.dim]
            dtype = _ONNX_DTYPES.get(have[tname].elem_type, str(have[tname].elem_type))
            static_differs = any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(t.shape, dims))
            if dtype != t.dtype or len(dims) != len(t.shape) or static_differs:
                raise BundleError(f"{root}/manifest.json: graphs.{name}.{side}: {tname} is {t.dtype} "
                                  f"{list(t.shape)} in the manifest, {dtype} {dims} in the graph file")
