"""The TensorRT-RTX engine set of a bundle: one plan per graph of every layout, built on any machine.

`odelt.engines.build.build_bundle` drives it like the other backends; what is particular here:
  * the cache key of each plan is made of its inputs (odelt.engines.rtx.cache_key), so the set
    already in the bundle *is* the cache: a graph whose key is unchanged is copied from it, and a
    build where every key is unchanged writes nothing at all (`force` rebuilds everything);
  * the build record (`built` in the manifest entry) states, per graph and in total, the build time,
    plan bytes, the weight bytes the builder reports storing, and the ONNX bytes; for INT8 it says
    what was stored (measured) and what the library does with activation Q/DQ (from its docs).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from odelt.engines import rtx
from odelt.engines.rtx_targets import compute_capabilities, get_rtx_targets
from odelt.engines.tensorrt import PLAN_SUFFIX, BuildConfig, shape_ranges_from
from odelt.engines.platform import manifest_path

# Paraphrase of NVIDIA's TensorRT-RTX documentation ("Working with Quantized Types", support matrix 1.0-1.5).
ACTIVATION_QDQ = ("TensorRT-RTX uses reduced precision only where the graph has explicit Q/DQ nodes; its "
                  "support matrix promises INT8 only as weight-only GEMM (compute capability 8.6 and later), "
                  "so activation Q/DQ pairs are kept as quantise/dequantise steps and the docs do not promise "
                  "INT8 tensor-core math for them (not observable without a GPU)")

BuildOne = Callable[[str, Path, bool, Path], dict]


def build_configs(manifest: Any, req: Any) -> dict[str, BuildConfig]:
    ccs = compute_capabilities(get_rtx_targets(req.rtx_targets))
    return {name: BuildConfig(shape_ranges=shape_ranges_from(manifest.graph(name).shape_ranges(manifest.batch)),
                              optimization_level=req.optimization_level, library=rtx.LIBRARY,
                              compute_capabilities=ccs)
            for name in manifest.graphs}


def planned_keys(sources: dict[str, tuple[Path, bool]], configs: dict[str, BuildConfig]) -> dict[str, str]:
    return {name: rtx.planned_key(src, configs[name])[0] for name, (src, _) in sources.items()}


def up_to_date(entry: dict | None, keys: dict[str, str], root: Path) -> bool:
    """The set in the bundle was built from exactly these inputs and its plans are all there."""
    if not entry or entry.get("backend") != rtx.LIBRARY:
        return False
    built = entry.get("built", {}).get("graphs", {})
    return (set(entry.get("graphs", {})) == set(keys)
            and all(built.get(n, {}).get("cache_key") == k and (root / entry["graphs"][n]).is_file()
                    for n, k in keys.items()))


def rtx_builder(configs: dict[str, BuildConfig], keys: dict[str, str], old: Path, force: bool) -> BuildOne:
    def build(name: str, src: Path, typed: bool, out_dir: Path) -> dict:
        out = out_dir / f"{name}{PLAN_SUFFIX}"
        prev = old / out.name
        reused = not force and prev.is_file() and _key_of(prev) == keys[name]
        if reused:
            shutil.copyfile(prev, out)
            shutil.copyfile(manifest_path(prev), manifest_path(out))
            record = rtx.RtxRecord.read(out)
        else:
            record = rtx.engine_from_onnx(src, configs[name], out)
        return {"file": out.name, "cache_key": record.cache_key, "plan_bytes": record.plan_bytes,
                "weights_bytes": record.weights_bytes, "build_s": record.build_s, "reused": reused,
                "onnx_bytes": _onnx_bytes(src), "initializer_bytes": rtx.initializer_bytes(src),
                "library_version": record.library_version}
    return build


def summary(per_graph: dict[str, dict], req: Any, configs: dict[str, BuildConfig]) -> dict:
    targets = get_rtx_targets(req.rtx_targets)
    first = next(iter(per_graph.values()))
    out = {"library": rtx.LIBRARY, "library_version": first["library_version"],
           "targets": [t.name for t in targets],
           "compute_capabilities": sorted({cc for t in targets for cc in t.covers}, key=float),
           "optimization_level": req.optimization_level,
           "graphs": {n: {k: v for k, v in f.items() if k != "library_version"} for n, f in per_graph.items()}}
    for field in ("build_s", "plan_bytes", "weights_bytes", "onnx_bytes"):
        values = [f[field] for f in per_graph.values()]
        out[f"{field}_total"] = None if None in values else round(sum(values), 3)
    if req.precision == "int8":
        out["int8"] = int8_statement(per_graph)
    return out


def int8_statement(per_graph: dict[str, dict]) -> dict:
    """What the plans store for the INT8 variant, from the builder's reported weight bytes."""
    stored = sum(f["weights_bytes"] or 0 for f in per_graph.values())
    int8 = sum(f["initializer_bytes"].get("INT8", 0) for f in per_graph.values())
    other = sum(v for f in per_graph.values() for k, v in f["initializer_bytes"].items() if k != "INT8")
    widened = other + 4 * int8
    kept = stored < (int8 + other + widened) / 2     # nearer the int8 size than the widened one
    return {"engine_weights_bytes": stored, "onnx_int8_initializer_bytes": int8,
            "onnx_other_initializer_bytes": other, "bytes_if_widened_to_fp32": widened,
            "weights_stored": "int8 (quantized)" if kept else "widened to float",
            "activation_qdq": ACTIVATION_QDQ}


def _key_of(plan: Path) -> str | None:
    try:
        return rtx.RtxRecord.read(plan).cache_key
    except rtx.EngineMismatch:
        return None


def _onnx_bytes(src: Path) -> int:
    data = src.with_name(src.name + ".data")
    return src.stat().st_size + (data.stat().st_size if data.is_file() else 0)
