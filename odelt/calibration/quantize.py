"""`quantize_bundle`: FP16 or trajectory-calibrated INT8 variants of a bundle's graphs, checked by an
accuracy guard that sends the most sensitive layers back to FP32 until the final samples pass.

Stages: record calibration feeds along real trajectories (trajectories.record_feeds) -> convert every
graph (fp16.fp16_from_onnx / int8.int8_from_onnx) -> sample FP32 and the variant from the same
held-out noise and compare (RMSE, FD-digits) -> if a threshold is broken, rank the block linears by
their own error (sensitivity.layer_errors) and fall back 1, 2, 4, ... of the worst to FP32 -> write
the variant folder and its report, rename it into the bundle, record it with Bundle.edit (a variant
entry lists every graph: changed ones point into the variant folder, the rest at their FP32 file).
INT8 comes in two flavours (int8.FLAVOURS: "trt" for TensorRT, "cpu" for ONNX Runtime's CPU
kernels); the same calibration and guard apply to both, and the flavour is recorded with the variant.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from odelt import validate
from odelt.calibration import metrics, trajectories as traj
from odelt.calibration.fp16 import fp16_from_onnx
from odelt.calibration.graph_roles import analyse, name_nodes
from odelt.calibration.int8 import CALIB_METHODS, DEFAULT_FLAVOUR, get_flavour, int8_from_onnx
from odelt.calibration.sensitivity import layer_errors
from odelt.errors import AccuracyError, ConfigError, ExportError
from odelt.bundle.bundle import Bundle, open_bundle
from odelt.bundle.iospec import DECODER_LAYOUT
from odelt.exporter.onnx_utils import save_graph, weight_bytes
from odelt.fileio import partial_dir, read_json, rename, write_json_atomic

DEFAULT_SCHEDULES = ("uniform:euler:4", "uniform:euler:8")   # runtime --schedule names
MAX_RMSE = {"fp16": 0.01, "int8": 0.05}     # final samples vs FP32, data in [-1, 1]
QUANTISED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "MatMulInteger"}


@dataclass(frozen=True)
class QuantizeOptions:
    precision: str                               # "fp16" | "int8"
    calib_samples: int = 32                      # noise samples; each runs every schedule at every length
    schedules: tuple[str, ...] = DEFAULT_SCHEDULES
    eval_samples: int = 64                       # held-out noise for the accuracy guard
    max_rmse: float | None = None                # None: MAX_RMSE[precision]
    max_fd_rel: float = 0.10                     # |FD(variant) - FD(fp32)| / FD(fp32), digits-shaped models
    method: str = "minmax"                       # INT8 activation ranges: minmax | percentile | entropy
    seed: int = 0
    flavour: str = DEFAULT_FLAVOUR               # INT8 only: "trt" (signed symmetric) | "cpu" (uint8 acts)

    def __post_init__(self) -> None:
        if self.precision not in MAX_RMSE:
            raise ConfigError(f"unknown precision {self.precision!r}; expected one of {sorted(MAX_RMSE)}")
        validate.count("--calib-samples", self.calib_samples, 1, validate.MAX_SAMPLES)
        validate.count("--eval-samples", self.eval_samples, 1, validate.MAX_SAMPLES)
        validate.count("--seed", self.seed, 0)
        if self.max_rmse is not None:
            validate.positive("--max-rmse", self.max_rmse)
        validate.positive("--max-fd-rel", self.max_fd_rel)
        if not self.schedules:
            raise ConfigError("expected at least one calibration schedule, found none")
        if self.method not in CALIB_METHODS:
            raise ConfigError(f"unknown calibration method {self.method!r}; expected one of {list(CALIB_METHODS)}")
        get_flavour(self.flavour)

    @property
    def rmse_limit(self) -> float:
        return MAX_RMSE[self.precision] if self.max_rmse is None else self.max_rmse


class _Converter:
    """Builds the variant of every graph for a given set of fallback nodes (graph -> node names)."""

    def __init__(self, manifest: Bundle, options: QuantizeOptions, feeds: dict, cache: Path):
        self.manifest, self.options, self.feeds, self.cache = manifest, options, feeds, cache
        # the DiT's graphs; decoder graphs have their own precision rules (odelt.calibration.decoder)
        self.fp32 = {name: name_nodes(onnx.load(str(manifest.graph_path(name))))
                     for name, g in manifest.graphs.items() if g.layout != DECODER_LAYOUT}
        self.candidates = {name: analyse(m).block_linears for name, m in self.fp32.items()}

    def convertible(self, name: str) -> bool:
        if self.options.precision == "int8":
            return bool(self.candidates[name])
        # fp16: anything on the token path (a graph with no live block has token inputs nothing reads)
        return bool(analyse(self.fp32[name]).token_nodes)

    def build(self, name: str, fallback: set[str]) -> tuple[onnx.ModelProto, dict]:
        model = self.fp32[name]
        if self.options.precision == "fp16":
            return fp16_from_onnx(model, keep_fp32_nodes=tuple(sorted(fallback)))
        return int8_from_onnx(model, self.feeds.get(name, []), exclude=tuple(sorted(fallback)),
                              method=self.options.method, cache=self.cache / f"{name}.json",
                              flavour=self.options.flavour)


def check_source(manifest: Bundle, precision: str) -> None:
    """Refuse a bundle that already has this precision, or whose FP32 graphs are not FP32."""
    check_unclaimed(manifest, precision)
    for name in manifest.graphs:
        model = onnx.load(str(manifest.graph_path(name)), load_external_data=False)
        ops = {n.op_type for n in model.graph.node} & QUANTISED_OPS
        halves = [i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
        if ops or halves:
            found = f"ops {sorted(ops)}" if ops else f"FP16 weights ({halves[0]}, ...)"
            raise ExportError(f"{manifest.root}: graph {name} is already quantised ({found}); "
                              "expected the FP32 graphs of an exported bundle")


def quantize_bundle(bundle: str | os.PathLike, options: QuantizeOptions) -> dict:
    """Add the `options.precision` variant to `bundle`; returns the report (also saved in it)."""
    manifest = open_bundle(bundle)
    check_source(manifest, options.precision)
    schedules = traj.per_length([traj.resolve_schedule(s, manifest) for s in options.schedules], manifest)
    calib = traj.Noise.draw(manifest, options.calib_samples, options.seed)
    held_out = traj.Noise.draw(manifest, options.eval_samples, options.seed + 1)
    feeds = traj.record_feeds(manifest, schedules, calib)
    tmp = partial_dir(manifest.root, options.precision)
    try:
        with tempfile.TemporaryDirectory(prefix="odelt-calib-") as cache:
            report = _guarded_build(manifest, options, schedules, (feeds, held_out), (tmp, Path(cache)))
        install_variant(manifest, options.precision, tmp, report)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _guarded_build(manifest: Bundle, options: QuantizeOptions, schedules: list, data: tuple,
                   dirs: tuple[Path, Path]) -> dict:
    feeds, held_out = data
    tmp, cache = dirs
    conv = _Converter(manifest, options, feeds, cache)
    names = [n for n in conv.fp32 if conv.convertible(n)]
    reference = metrics.reference_samples(manifest, schedules, held_out)
    fallback: dict[str, set[str]] = {n: set() for n in names}
    ranking: list[tuple[float, str, str]] | None = None
    rounds = []
    while True:
        built = {n: conv.build(n, fallback[n]) for n in names}
        _write_graphs(manifest, built, tmp)
        path_of = _path_of(manifest, set(names), tmp)
        result = metrics.compare(manifest, path_of, schedules, held_out, reference)
        passed = metrics.passes(result, options.rmse_limit, options.max_fd_rel)
        rounds.append({"fallback_layers": sum(map(len, fallback.values())), **metrics.summary(result),
                       "passed": passed})
        if passed:
            break
        if ranking is None:
            ranking = _rank(conv, names, built, options.precision)
        done = sum(map(len, fallback.values()))
        if done >= len(ranking):
            break
        for _, graph, node in ranking[:max(1, 2 * done)]:       # 1, 2, 4, 8, ... worst layers
            fallback[graph].add(node)
    if not passed:
        raise AccuracyError(f"{options.precision} misses the accuracy limit even with every block linear in "
                            f"FP32: {metrics.describe(result, options.rmse_limit, options.max_fd_rel)}")
    report = _report(options, conv, built, (result, rounds), (ranking, fallback, feeds))
    if manifest.decoders:
        _add_decoders(manifest, options, reference, tmp, report)
    return report


def _add_decoders(manifest: Bundle, options: QuantizeOptions, reference: dict, tmp: Path, report: dict) -> None:
    """The decoder stage's graphs in this variant (FP16 or kept FP32), decoded from the FP32 final
    samples; changed ones join report["graphs"] (so the variant points at them)."""
    import numpy as np

    from odelt.calibration.decoder import build_decoders

    pooled = np.concatenate([x for runs in reference.values() for x in runs.values()])
    flavour = options.flavour if options.precision == "int8" else None
    changed, decoders = build_decoders(manifest, options.precision, flavour, pooled, MAX_RMSE["fp16"])
    _write_graphs(manifest, {name: (model, None) for name, model in changed.items()}, tmp)
    report["decoders"] = decoders
    report["graphs"].update({name: decoders[name]["conversion"] for name in changed})


def _rank(conv: _Converter, names: list[str], built: dict, precision: str) -> list[tuple[float, str, str]]:
    """Block linears of all graphs, worst local error first."""
    out = []
    for n in names:
        errs = layer_errors(conv.fp32[n], conv.feeds.get(n, [])[:8], precision,
                            built[n][0] if precision == "int8" else None)
        out += [(e, n, node) for node, e in errs.items()]
    return sorted(out, reverse=True)


def _path_of(manifest: Bundle, changed: set[str], tmp: Path):
    return lambda spec: (tmp / spec.file) if spec.name in changed else manifest.graph_path(spec.name)


def _write_graphs(manifest: Bundle, built: dict, tmp: Path) -> None:
    for name, (model, _) in built.items():
        external = manifest.graph_file(name).external_data is not None
        save_graph(model, tmp / manifest.graph(name).file, external)


def _report(options: QuantizeOptions, conv: _Converter, built: dict, outcome: tuple, fallback_info: tuple) -> dict:
    result, rounds = outcome
    ranking, fallback, feeds = fallback_info
    errors = {(g, node): e for e, g, node in (ranking or [])}
    fell_back = [{"graph": g, "node": node, "layer_error": round(errors.get((g, node), float("nan")), 6)}
                 for g in sorted(fallback) for node in sorted(fallback[g])]
    return {
        "precision": options.precision,
        **({"flavour": options.flavour} if options.precision == "int8" else {}),
        "options": asdict(options),
        "thresholds": {"rmse": options.rmse_limit, "fd_rel": options.max_fd_rel},
        "calibration": {"feeds_per_graph": {k: len(v) for k, v in feeds.items()}},
        "graphs": {name: rep for name, (_, rep) in built.items()},
        "metrics": result,
        "rounds": rounds,
        "fallback": fell_back,
    }


def install_variant(manifest: Bundle, precision: str, tmp: Path, report: dict) -> None:
    """Move the finished variant folder into the bundle and record it, under the bundle's lock (a
    second quantize of the same precision that finished meanwhile is refused, not overwritten)."""
    write_json_atomic(tmp / "report.json", json.loads(json.dumps(report, default=float)))
    with manifest.edit() as change:
        check_unclaimed(change.bundle, precision)
        final = manifest.root / precision
        if final.exists():                 # left by a run that died before updating the manifest
            shutil.rmtree(final)
        rename(tmp, final)
        entries, files = {}, [f"{precision}/report.json"]
        for name in manifest.graphs:
            entries[name] = _graph_entry(manifest, name, precision, name in report["graphs"])
            if entries[name]["changed"]:
                files += [f for f in (entries[name]["file"], entries[name]["external_data"]) if f]
        entry = {"graphs": entries, "report": f"{precision}/report.json",
                 "metrics": metrics.summary(report["metrics"]),
                 "fallback": [f"{f['graph']}:{f['node']}" for f in report["fallback"]]}
        if "flavour" in report:
            entry["flavour"] = report["flavour"]
        if "decoders" in report:          # the one record of what each decoder graph runs in (Bundle.decoder_dtype)
            entry["decoder_precisions"] = {g: r["precision"] for g, r in report["decoders"].items()}
        change.set("precisions", precision, entry, files)


def check_unclaimed(manifest: Bundle, precision: str) -> None:
    """One variant per precision: checked before the work and again under the lock (concurrent runs)."""
    existing = manifest.variant(precision)
    if existing is not None:
        kind = f"{precision} ({existing['flavour']} flavour)" if "flavour" in existing else precision
        raise ExportError(f"{manifest.root} already has a {kind} variant; expected a bundle "
                          "without it (re-export the bundle to quantise again)")


def _graph_entry(manifest: Bundle, name: str, precision: str, changed: bool) -> dict:
    """A variant's entry for one graph: its own file when changed, the FP32 file otherwise."""
    if not changed:
        g = manifest.graph_file(name)
        return {"file": g.file, "external_data": g.external_data, "weight_bytes": g.weight_bytes, "changed": False}
    rel = f"{precision}/{manifest.graph(name).file}"
    data = f"{rel}.data" if (manifest.root / f"{rel}.data").is_file() else None
    return {"file": rel, "external_data": data, "changed": True,
            "weight_bytes": weight_bytes(onnx.load(str(manifest.root / rel), load_external_data=False))}


def load_report(manifest: Bundle, precision: str) -> dict:
    entry = manifest.variant(precision)
    if entry is None:
        raise ExportError(f"{manifest.root}: no {precision} variant")
    return read_json(manifest.root / entry["report"], ExportError)


