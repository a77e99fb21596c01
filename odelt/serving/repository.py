"""Write a Triton model repository from a bundle: one model per graph, plus `odelt_sampler`.

    REPO/
      odelt_repository.json              what was written from which bundle (engines, precision, models)
      odelt_<graph>/config.pbtxt         generated from the bundle's IO description (manifest graphs)
      odelt_<graph>/1/model.plan         --engines tensorrt: the TensorRT plan of the chosen engine set
      odelt_<graph>/1/<graph>.onnx       --engines onnxruntime (Triton's ORT backend) and cpu
      odelt_<graph>/1/model.py           --engines cpu: Python backend running the graph with ORT
                                         (latent bundles: each decoder graph is a model too, e.g.
                                         odelt_decoder_sd; the sampler decodes through it)
      odelt_sampler/config.pbtxt         Python backend; inputs n, seed, labels, guidance
      odelt_sampler/1/model.py           odelt/serving/sampler_model.py
      odelt_sampler/1/bundle/            manifest, schedules, quality table, profiles, tables (no graphs;
                                         the engine mode: plus the layout's graphs at the precision
                                         and a latent bundle's decoder graphs, or with --backend
                                         openvino the OpenVINO set's compiled graphs)

Two sampler modes (--sampler). `engine` (the default for a bundle served on CPU): the sampler
model is decoupled and runs every request in flight through one in-process batching engine
(odelt.serving.engine_model) over a backend it opens itself, a latent bundle's decode in a thread
of the same process; no graph models are written. `bls`: one graph model per graph (--engines picks
their flavour) and every step of every request is a BLS request to them; the choice where Triton
itself must host the graphs (TensorRT plans on a GPU fleet, several GPUs, graph models shared by
other pipelines) and for bundles with guidance folded into their graphs.

The repository is written into a hidden folder beside REPO and renamed into place when complete
(with --force the old one is swapped out only then), so an interrupted write leaves REPO as it was.
Triton's TensorRT backend loads TensorRT plans only (not TensorRT-RTX engines), and only plans built
by the TensorRT version inside that Triton release.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from odelt.errors import ConfigError, ExportError
from odelt.bundle.bundle import Bundle, open_bundle
from odelt.bundle.iospec import GraphSpec, TensorSpec
from odelt.fileio import check_out, mark_output, swap_in_dir, write_json_atomic
from odelt.serving import graph_model, sampler_model
from odelt.serving.pbtxt import parameters, render
from odelt.serving.wire import SAMPLER, TRITON_DTYPES, batched, dims, model_name

ENGINES = ("tensorrt", "onnxruntime", "cpu")
# the runtime backend whose profile a BLS sampler plans from: what runs the graph models
PROFILE_BACKEND = {"tensorrt": "tensorrt", "onnxruntime": "ort", "cpu": "ort"}
SAMPLERS = ("engine", "bls")
ENGINE_BACKENDS = ("ort", "openvino")    # runtime backends the engine mode opens in the sampler's process
FORMAT = "odelt-triton-repository/1"
REPO_KIND = "triton-repository"     # the output marker (odelt.fileio.check_out)
SAMPLER_FILES = ("manifest.json", "quality.json", "schedules", "profile", "tables")


@dataclass(frozen=True)
class RepoOptions:
    engines: str = "cpu"               # tensorrt | onnxruntime | cpu
    precision: str = "fp32"
    max_batch: int | None = None       # rows per graph execution; None: the bundle's batch max
    instances: int = 1                 # instances of each graph model (per GPU with tensorrt)
    sampler_instances: int = 4         # concurrent sampling requests; their step calls batch together
    layout: str | None = None          # None: the bundle's default layout
    engine_set: str | None = None      # tensorrt: which engine set, when the bundle has several
    queue_delay_us: int = 500          # dynamic batcher's wait for more step calls
    force: bool = False
    sampler: str | None = None         # engine | bls; None: engine with cpu engines (not in-graph guidance)
    backend: str = "ort"               # engine mode: the runtime backend the sampler opens in process (ENGINE_BACKENDS)
    threads: int = 1                   # engine mode: intra-op threads of its sessions
    window_ms: float = 0.0             # engine mode: gathering window before a pass below max rows
    refill_ms: float = 1.0             # engine mode: after k requests left, wait this long for k new ones

    def check(self) -> None:
        if self.engines not in ENGINES:
            raise ConfigError(f"--engines must be one of {list(ENGINES)}, found {self.engines!r}")
        if self.sampler not in (None, *SAMPLERS):
            raise ConfigError(f"--sampler must be one of {list(SAMPLERS)}, found {self.sampler!r}")
        if self.backend not in ENGINE_BACKENDS:
            raise ConfigError(f"--backend must be one of {list(ENGINE_BACKENDS)}, found {self.backend!r}")
        for name, ms in (("--window-ms", self.window_ms), ("--refill-ms", self.refill_ms)):
            if not ms >= 0:
                raise ConfigError(f"{name} must be >= 0, found {ms}")
        for name, value in (("--instances", self.instances), ("--sampler-instances", self.sampler_instances),
                            ("--max-batch", 1 if self.max_batch is None else self.max_batch), ("--threads", self.threads)):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, found {value}")


def write_repository(bundle: str | os.PathLike, out: str | os.PathLike, opts: RepoOptions) -> Path:
    """Write the repository for `bundle` at `out`; returns its path."""
    opts.check()
    manifest = open_bundle(bundle)
    layout = opts.layout or manifest.default_layout()
    if layout not in manifest.layouts:
        raise ConfigError(f"layout {layout!r} is not in this bundle; expected one of {list(manifest.layouts)}")
    if opts.engines == "tensorrt" and opts.max_batch and opts.max_batch > manifest.batch.max:
        raise ConfigError(f"--max-batch {opts.max_batch} exceeds the TensorRT profile's batch max "
                          f"{manifest.batch.max} (export with --batch MIN:OPT:MAX to change it)")
    mode = sampler_mode(manifest, opts)
    if mode == "bls" and opts.backend != "ort":
        raise ConfigError(f"--backend {opts.backend} is the engine mode's backend (the BLS mode's graph models run "
                          f"what --engines says); expected --sampler engine, found the {mode} mode")
    graphs = _layout_graphs(manifest, layout) + [manifest.graph(d.graph) for d in manifest.decoders.values()]
    files = _graph_files(manifest, graphs, opts) if mode == "bls" else {}
    if mode == "engine" and opts.backend == "openvino" and manifest.decoders:
        raise ConfigError("--backend openvino serves pixel-space bundles in the engine mode (its decoder stage is "
                          "not copied with the OpenVINO set); serve this latent bundle with --backend ort")
    ov_set = _openvino_set(manifest, opts.precision, opts.engine_set) if mode == "engine" and opts.backend == "openvino" else None
    final = Path(out)
    check_out(final, REPO_KIND, (manifest.root,), opts.force, legacy=lambda p: (p / "odelt_repository.json").is_file(),
              error=ExportError)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if mode == "bls":
            for graph in graphs:
                _write_graph_model(tmp, manifest, graph, files[graph.name], opts)
        elif ov_set is not None:
            _copy_engines(manifest, _layout_graphs(manifest, layout), ov_set[1], tmp / SAMPLER / "1" / "bundle")
        else:
            inside = tmp / SAMPLER / "1" / "bundle"
            _copy_graphs(manifest, _layout_graphs(manifest, layout), opts.precision, inside)
            for graph, precision in _decoder_graphs(manifest, opts.precision):
                _copy_graphs(manifest, [graph], precision, inside)
        _write_sampler(tmp, manifest, layout, graphs, opts, mode, ov_set[0] if ov_set else None)
        write_json_atomic(tmp / "odelt_repository.json", {
            "format": FORMAT, "bundle": str(manifest.root.resolve()), "model_hash": manifest.model_hash,
            "engines": opts.engines if mode == "bls" else None, "precision": opts.precision, "layout": layout,
            "mode": mode, "models": {g.name: model_name(g.name) for g in graphs} if mode == "bls" else {},
            "backend": opts.backend if mode == "engine" else None, "engine_set": ov_set[0] if ov_set else None,
            "sampler": SAMPLER,
            "decoder": manifest.decoder().kind if manifest.decoders else None})
        mark_output(tmp, REPO_KIND)
        swap_in_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def sampler_mode(manifest: Bundle, opts: RepoOptions) -> str:
    """engine or bls (module doc): the engine runs the bundle in process (a latent bundle's decoder
    too, after sampling); graphs Triton must host itself (tensorrt, onnxruntime) go through BLS. A
    bundle with guidance folded into its graphs stays with BLS: the engine gathers one row per image
    per call, those graphs take two rows per image inside."""
    if opts.sampler == "engine":
        if manifest.guidance:
            raise ConfigError("--sampler engine: this bundle has guidance folded into its graphs (2 rows per image "
                              "inside); use --sampler bls")
        return "engine"
    if opts.sampler == "bls":
        return "bls"
    return "engine" if opts.engines == "cpu" and not manifest.guidance else "bls"


def _decoder_graphs(manifest: Bundle, precision: str) -> list[tuple[GraphSpec, str]]:
    """The engine mode's decoder graphs with the precision each is opened at (the one its plans count)."""
    from odelt.runtime.budget.profile import decoder_precision_for

    return [(manifest.graph(d.graph), decoder_precision_for(manifest, kind, precision))
            for kind, d in manifest.decoders.items()]


def _copy_graphs(manifest: Bundle, graphs: list[GraphSpec], precision: str, bundle: Path) -> None:
    """The engine mode's graphs, at their paths in the bundle (external weights beside them)."""
    for g in graphs:
        src = manifest.graph_path(g.name, precision)
        if not src.is_file():
            raise ExportError(f"{manifest.root}: graph file {src} is missing")
        for path in (src, src.with_name(src.name + ".data")):
            if path.is_file():
                dst = bundle / path.relative_to(manifest.root)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dst)


def _openvino_set(manifest: Bundle, precision: str, name: str | None) -> tuple[str, dict[str, Any]]:
    """(name, entry) of the OpenVINO set the engine mode serves: `name`, else the one at `precision`
    (a CPU set first)."""
    from odelt.runtime.backends.openvino import engine_entry, runs_as

    found = engine_entry(manifest, precision, name)
    if found is None:
        raise ExportError(f"{manifest.root}: --backend openvino serves an OpenVINO engine set, found no {precision} one; "
                          f"build it with `odelt-export build BUNDLE --backend openvino --precision {precision}`")
    runs = runs_as(found[1])
    if runs != found[1].get("precision"):   # a bf16/fp16 hint the building CPU ran as f32: no plan offers it
        raise ExportError(f"{manifest.root}: OpenVINO set {found[0]} runs {runs}, not {found[1].get('precision')} (the CPU "
                          f"that built it has no {found[1].get('precision')} path); serve --precision {runs} (built with "
                          f"`odelt-export build BUNDLE --backend openvino --precision {runs}`)")
    return found


def _copy_engines(manifest: Bundle, graphs: list[GraphSpec], entry: dict[str, Any], bundle: Path) -> None:
    """The engine mode over OpenVINO: the set's compiled graphs of the layout and their records, at
    their paths in the bundle (the sampler imports them; no ONNX file is needed)."""
    from odelt.engines.openvino import record_path

    for g in graphs:
        if g.name not in entry["graphs"]:
            raise ExportError(f"{manifest.root}: OpenVINO set {entry.get('dir')} has no engine for graph {g.name}; "
                              f"rebuild it with `odelt-export build BUNDLE --backend openvino --precision "
                              f"{entry.get('precision')} --force`")
        src = manifest.root / entry["graphs"][g.name]
        for path in (src, record_path(src)):
            if not path.is_file():
                raise ExportError(f"{manifest.root}: engine file {path} is missing; rebuild the set")
            dst = bundle / path.relative_to(manifest.root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dst)


def _layout_graphs(manifest: Bundle, layout: str) -> list[GraphSpec]:
    names = dict.fromkeys(g.name for n in manifest.lengths for g in manifest.chain(n, layout))
    return [manifest.graph(name) for name in names]


# -- which file each graph model serves --------------------------------------------------------

def _graph_files(manifest: Bundle, graphs: list[GraphSpec], opts: RepoOptions) -> dict[str, Path]:
    if opts.engines == "tensorrt":
        entry = _tensorrt_set(manifest, opts)
        return {g.name: manifest.root / entry["graphs"][g.name] for g in graphs}
    files = {g.name: manifest.graph_path(g.name, opts.precision) for g in graphs}
    for path in files.values():
        if not path.is_file():
            raise ExportError(f"{manifest.root}: graph file {path} is missing")
    return files


def _tensorrt_set(manifest: Bundle, opts: RepoOptions) -> dict[str, Any]:
    sets = manifest.engine_sets
    rtx = [n for n, e in sets.items() if "rtx" in str(e.get("backend"))]
    matching = {n: e for n, e in sets.items() if e.get("backend") == "tensorrt" and e.get("precision") == opts.precision}
    if opts.engine_set is not None:
        matching = {n: e for n, e in matching.items() if n == opts.engine_set}
    if len(matching) != 1:
        found = sorted(matching) or sorted(sets)
        hint = (" (TensorRT-RTX engines cannot be served: Triton's TensorRT backend loads TensorRT plans only)"
                if rtx and not matching else "")
        raise ExportError(f"{manifest.root}: expected one TensorRT {opts.precision} engine set"
                          f"{' named ' + opts.engine_set if opts.engine_set else ''}, found {found}{hint}; "
                          f"build one with `odelt-export build BUNDLE --backend tensorrt --precision {opts.precision}`"
                          + (" or pick one with --engine-set" if len(matching) > 1 else ""))
    return next(iter(matching.values()))


# -- graph models ------------------------------------------------------------------------------

def _tensor(spec: TensorSpec, is_batched: bool) -> dict[str, Any]:
    d, reshape = dims(spec, is_batched)
    entry: dict[str, Any] = {"name": spec.name, "data_type": TRITON_DTYPES[spec.dtype], "dims": d}
    if reshape is not None:
        entry["reshape"] = {"shape": reshape}
    return entry


def graph_config(manifest: Bundle, graph: GraphSpec, opts: RepoOptions, file_name: str) -> str:
    """config.pbtxt of one graph model."""
    is_batched = batched(graph)
    rows = opts.max_batch or manifest.batch.max
    rows *= 2 if is_batched and graph.inputs[0].shape[0] == "2*batch" else 1
    config: dict[str, Any] = {"name": model_name(graph.name)}
    gpu = opts.engines == "tensorrt"
    if gpu:
        config.update(platform="tensorrt_plan", default_model_filename=file_name)
    elif opts.engines == "onnxruntime":
        config.update(platform="onnxruntime_onnx", default_model_filename=file_name)
    else:
        config["backend"] = "python"
    config["max_batch_size"] = rows if is_batched else 0
    config["input"] = [_tensor(t, is_batched) for t in graph.inputs]
    config["output"] = [_tensor(t, is_batched) for t in graph.outputs]
    if is_batched:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": opts.queue_delay_us}
    group: dict[str, Any] = {"count": opts.instances, "kind": "KIND_GPU" if gpu else "KIND_CPU"}
    if gpu:
        group["profile"] = ["0"]           # the one optimisation profile odelt builds
    config["instance_group"] = [group]
    params: dict[str, Any] = {}
    if opts.engines == "onnxruntime":
        params = {"intra_op_thread_count": "1", "inter_op_thread_count": "1"}
    elif opts.engines == "cpu":
        # per input, the graph's shape after the row axis: what (rows, *dims) is reshaped to
        params = {"graph_file": file_name, "batched": is_batched,
                  "row_shapes": {t.name: [int(d) for d in t.shape[1:]] for t in graph.inputs} if is_batched else {}}
    if params:
        config["parameters"] = parameters(params)
    b = manifest.batch
    comments: tuple[str, ...] = (f"odelt graph {graph.name} ({graph.kind}, layout {graph.layout}) of bundle model "
                f"{manifest.model_hash}, precision {opts.precision}",)
    if gpu:
        comments += (f"TensorRT optimisation profile 0: batch min/opt/max {b.min}/{b.opt}/{b.max} "
                     f"({'x2 rows with guidance' if rows > (opts.max_batch or b.max) else 'rows = batch'})",)
    return render(config, comments)


def _write_graph_model(repo: Path, manifest: Bundle, graph: GraphSpec, src: Path, opts: RepoOptions) -> None:
    folder = repo / model_name(graph.name)
    version = folder / "1"
    version.mkdir(parents=True)
    file_name = "model.plan" if opts.engines == "tensorrt" else src.name
    shutil.copy2(src, version / file_name)
    data = src.with_name(src.name + ".data")
    if opts.engines != "tensorrt" and data.is_file():
        shutil.copy2(data, version / data.name)        # external weights resolve next to the graph
    if opts.engines == "cpu":
        shutil.copy2(graph_model.__file__, version / "model.py")
    (folder / "config.pbtxt").write_text(graph_config(manifest, graph, opts, file_name))


# -- the sampler model -------------------------------------------------------------------------

def sampler_config(manifest: Bundle, layout: str, graphs: list[GraphSpec], opts: RepoOptions,
                   mode: str = "bls", engine_set: str | None = None) -> str:
    cfg = manifest.config
    decoder = manifest.decoder() if manifest.decoders else None   # latent bundles return decoded images
    image = [-1, *decoder.image] if decoder else [-1, cfg.out_channels, cfg.input_size, cfg.input_size]
    config = {
        "name": SAMPLER, "backend": "python", "max_batch_size": 0,
        "input": [{"name": "n", "data_type": "TYPE_INT32", "dims": [1]},
                  {"name": "seed", "data_type": "TYPE_INT64", "dims": [1]},
                  {"name": "labels", "data_type": "TYPE_INT32", "dims": [-1], "optional": True},
                  {"name": "guidance", "data_type": "TYPE_FP32", "dims": [1], "optional": True}],
        "output": [{"name": "images", "data_type": "TYPE_FP32", "dims": image},
                   {"name": "plan", "data_type": "TYPE_STRING", "dims": [1]},
                   {"name": "predicted_ms", "data_type": "TYPE_FP32", "dims": [1]},
                   {"name": "measured_ms", "data_type": "TYPE_FP32", "dims": [1]},
                   {"name": "stats", "data_type": "TYPE_STRING", "dims": [1]}],
        "instance_group": [{"count": opts.sampler_instances if mode == "bls" else 1, "kind": "KIND_CPU"}],
    }
    rows = opts.max_batch or manifest.batch.max
    params: dict[str, Any] = {"mode": mode, "layout": layout, "precision": opts.precision, "max_images": rows}
    if mode == "bls":
        params.update(graph_models={g.name: model_name(g.name) for g in graphs}, decoder=decoder.kind if decoder else "",
                      profile_backend=PROFILE_BACKEND[opts.engines])
    else:   # one instance, decoupled: execute hands requests to the engine and returns at once
        config["model_transaction_policy"] = {"decoupled": True}
        params.update(backend=opts.backend, threads=opts.threads, max_rows=rows, window_ms=opts.window_ms,
                      refill_ms=opts.refill_ms, profile_backend=opts.backend, decoder=decoder.kind if decoder else "",
                      **({"engine_set": engine_set} if engine_set else {}))
    config["parameters"] = parameters(params)
    return render(config, ("odelt sampler: request parameters budget_ms (float) or schedule (NAME); "
                           "plan, predicted and measured milliseconds come back with the images",
                           *(("latent bundle: images are decoded by the decoder stage"
                              + (f"'s model {model_name(decoder.graph)}" if mode == "bls" else " in this process")
                              + f" (request parameter decoder: {' or '.join(sorted(manifest.decoders))})",)
                             if decoder else ())))


def _write_sampler(repo: Path, manifest: Bundle, layout: str, graphs: list[GraphSpec], opts: RepoOptions,
                   mode: str, engine_set: str | None = None) -> None:
    folder = repo / SAMPLER
    bundle = folder / "1" / "bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    shutil.copy2(sampler_model.__file__, folder / "1" / "model.py")
    for rel in SAMPLER_FILES:
        src = manifest.root / rel
        if src.is_dir():
            shutil.copytree(src, bundle / rel)
        elif src.is_file():
            shutil.copy2(src, bundle / rel)
    (folder / "config.pbtxt").write_text(sampler_config(manifest, layout, graphs, opts, mode, engine_set))
