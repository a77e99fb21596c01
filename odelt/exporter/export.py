"""Export stage: `export_bundle` (every graph of the chosen layouts -> a bundle folder, written to a temp folder and renamed into
place only when complete)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from odelt.errors import ConfigError, ExportError
from odelt.exporter import onnx_utils
from odelt.bundle.bundle import FORMAT, MANIFEST, Bundle, open_bundle, write_new_bundle
from odelt.bundle.iospec import LAYOUTS, BatchRange, GraphSpec, TensorSpec, check_lengths, layout_spec
from odelt.exporter.trace import EXTERNAL_DATA_BYTES, TRACE_BATCH, onnx_from_model
from odelt.exporter.wrappers import ChunkGraph, ConditioningGraph, HeadGraph, LengthGraph
from odelt.fileio import building, check_out, mark_output, remove_stale_partials, swap_in_dir
from odelt.models.dit import DiT

BUNDLE_KIND = "bundle"                    # the output marker of a bundle folder (odelt.fileio.check_out)
SUPPORTED_OPSETS = tuple(range(14, 21))   # TorchScript exporter range we test; 16 = TensorRT 8.5


@dataclass(frozen=True)
class ExportOptions:
    layouts: tuple[str, ...] = ("segments",)
    lengths: tuple[int, ...] | None = None     # None: DiTConfig.export_lengths (trained lengths + group ends)
    batch: BatchRange = BatchRange()
    opset: int = 17
    guidance: bool = False                      # fold classifier-free guidance into the graphs
    external_data: bool | None = None           # None: when the model's parameters exceed 100 MiB
    force: bool = False                         # overwrite an existing bundle
    vaes: tuple[tuple[str, str], ...] = ()      # (kind, path) of each decoder stage (odelt.latent)

    def __post_init__(self) -> None:
        if self.opset not in SUPPORTED_OPSETS:
            raise ConfigError(f"unsupported opset {self.opset}; expected one of {list(SUPPORTED_OPSETS)} "
                              "(16 for TensorRT 8.5 / JetPack 5)")
        bad = [x for x in self.layouts if x not in LAYOUTS]
        if bad or not self.layouts:
            raise ConfigError(f"unknown layout {bad or self.layouts}; expected some of {list(LAYOUTS)}")


def example_feed(tensors: tuple[TensorSpec, ...], dit: DiT, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random but valid values for `tensors` (labels, levels and lengths in range)."""
    rng, cfg = np.random.default_rng(seed), dit.config
    ints = {"dt_base": 8, "y": cfg.num_classes + 1, "l": cfg.depth + 1}
    feed = {}
    for t in tensors:
        shape = t.resolve(batch)
        if t.dtype == "int32":
            feed[t.name] = rng.integers(1 if t.name == "l" else 0, ints.get(t.name, 2), size=shape).astype(np.int32)
        elif t.name == "t":
            feed[t.name] = rng.uniform(0.0, 1.0, size=shape).astype(np.float32)
        elif t.name == "cfg_scale":
            feed[t.name] = rng.uniform(1.0, 4.0, size=shape).astype(np.float32)
        else:
            feed[t.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def wrapper_for(dit: DiT, spec: GraphSpec, guided: bool) -> nn.Module:
    if spec.kind == "conditioning":
        return ConditioningGraph(dit, sum(1 for o in spec.outputs if o.name.startswith("mod")), guided)
    if spec.kind == "chunk":
        return ChunkGraph(dit, spec.blocks, guided)
    if spec.kind == "head":
        return HeadGraph(dit, guided, zero_v=not any(t.name == "V" for t in spec.inputs))
    assert spec.length is not None
    return LengthGraph(dit, spec.length, guided)


def _param_bytes(dit: DiT, spec: GraphSpec) -> int:
    """An upper bound on a graph's weights: all of the model except blocks the graph does not run."""
    if spec.kind not in ("chunk", "length"):
        return dit.param_bytes()
    skip = {id(p) for i, b in enumerate(dit.blocks) if i not in spec.blocks for p in b.parameters()}
    return sum(p.numel() * p.element_size() for p in dit.parameters() if id(p) not in skip)


def export_bundle(dit: DiT, out: str | os.PathLike, options: ExportOptions, source: str = "",
                  source_hash: str = "") -> Bundle:
    """Export `dit` into the bundle folder `out`; returns its manifest. Nothing is left at `out`
    unless the whole bundle was written."""
    cfg = dit.config
    lengths = check_lengths(cfg, tuple(options.lengths or cfg.export_lengths))
    plans = [layout_spec(cfg, layout, lengths, options.guidance) for layout in dict.fromkeys(options.layouts)]
    out = Path(out)
    _check_target(out, options.force)
    vaes = _load_vaes(dit, options)             # bad VAE input fails before anything is written
    external = options.external_data
    if external is None:
        external = dit.param_bytes() > EXTERNAL_DATA_BYTES
    with building(out.parent, out.name) as tmp:   # removed, whatever happens, unless moved into place
        graphs = _export_graphs(dit, plans, options, tmp, external)
        shutil.rmtree(tmp / ".scratch", ignore_errors=True)
        decoders: dict = {}
        if vaes:
            from odelt.exporter.decoder import export_decoders

            decoder_graphs, decoders = export_decoders(vaes, dit.config, tmp, options.opset, options.external_data)
            graphs.update(decoder_graphs)
        files = [f for g in graphs.values() for f in (g["file"], g["external_data"]) if f]
        data = _manifest_data(dit, options, lengths, plans, graphs, (source, source_hash))
        if decoders:
            data["decoders"] = decoders
        write_new_bundle(tmp, data, files)
        mark_output(tmp, BUNDLE_KIND)
        _move_into_place(tmp, out)
    return open_bundle(out)


def _load_vaes(dit: DiT, options: ExportOptions) -> list:
    if not options.vaes:
        return []
    from odelt.exporter.decoder import load_decoders

    return load_decoders(options.vaes, dit.config)


def _export_graphs(dit: DiT, plans: list, options: ExportOptions, root: Path, external: bool) -> dict:
    from tqdm import tqdm

    specs = [g for plan in plans for g in plan.graphs]
    entries = {}
    for spec in tqdm(specs, desc="export", unit="graph", disable=None, leave=False):
        feed = example_feed(spec.inputs, dit, TRACE_BATCH)
        scratch = root / ".scratch" if _param_bytes(dit, spec) > onnx_utils.PROTOBUF_LIMIT else None
        model = onnx_from_model(wrapper_for(dit, spec, options.guidance), spec, feed, options.opset, scratch)
        weight_bytes = onnx_utils.weight_bytes(model)
        data = onnx_utils.save_graph(model, root / spec.file, external)
        entries[spec.name] = {**spec.to_dict(), "external_data": data, "weight_bytes": weight_bytes}
        del model
        shutil.rmtree(root / ".scratch", ignore_errors=True)
    return entries


def _manifest_data(dit: DiT, options: ExportOptions, lengths: tuple[int, ...], plans: list, graphs: dict,
                   source: tuple[str, str]) -> dict:
    totals = {}
    for plan in plans:
        totals[plan.layout] = sum(graphs[g.name]["weight_bytes"] for g in plan.graphs)
        if plan.layout == "segments":
            totals["segments_without_conditioning"] = totals["segments"] - graphs["cond"]["weight_bytes"]
    return {
        "format": FORMAT,
        "model": {"config": dit.config.to_dict(), "source": source[0], "source_hash": source[1],
                  "param_bytes": dit.param_bytes()},
        "opset": options.opset, "cfg": options.guidance, "null_class": dit.config.num_classes,
        "batch": options.batch.to_dict(),
        "layouts": [p.layout for p in plans], "lengths": list(lengths),
        "graphs": graphs,
        "chains": {p.layout: {str(n): list(chain) for n, chain in p.chains.items()} for p in plans},
        "weight_bytes": totals,
        "tables": {},
    }


def _check_target(out: Path, force: bool, inputs: tuple = ()) -> None:
    """`out` may be absent or empty; a bundle this tool made only with force; anything else is refused."""
    remove_stale_partials(out.parent)
    check_out(out, BUNDLE_KIND, inputs, force, legacy=lambda p: (p / MANIFEST).is_file(), error=ExportError)


def _move_into_place(tmp: Path, out: Path) -> None:
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    swap_in_dir(tmp, out)                      # the old bundle stays when the new one cannot go in


def export_source(source: str, out: str | os.PathLike, options: ExportOptions, config: dict | None = None) -> Bundle:
    """Load `source` (builtin:NAME, our checkpoint, or an upstream pickle with `config`) and export it.
    The manifest records where it came from and the file's hash, so `verify` can reload it."""
    from odelt.fileio import file_hash
    from odelt.models.checkpoint import BUILTIN_PREFIX, load_checkpoint, resolve_source

    path = resolve_source(source)
    _check_target(Path(out), options.force, (path, *(p for _, p in options.vaes or ())))
    dit = load_checkpoint(source, config)
    recorded = source if str(source).startswith(BUILTIN_PREFIX) else str(path.resolve())
    return export_bundle(dit, out, options, recorded, file_hash(path))
