"""Precision variants inside a bundle: where they live and how the manifest records them.

A variant is a folder next to the FP32 graphs, written whole and renamed into place::

    BUNDLE/int8/segments/blocks_0-3.onnx     graphs that changed (Q/DQ or FP16 casts)
    BUNDLE/int8/report.json                   the accuracy report (also under the manifest entry)

manifest.json gains ``precisions`` (absent in an FP32-only bundle)::

    precisions  {"fp16" | "int8": {
                    "graphs": {name: {"file": relpath, "external_data": relpath | null,
                                      "weight_bytes": int, "changed": bool}},
                    "report": "int8/report.json", "metrics": {...}, "fallback": [...],
                    "flavour": "trt" | "cpu"       (int8 only: see calibration.int8)}}

Every graph of the bundle has an entry; a graph the precision leaves as it is (the conditioning graph,
an exit head with nothing to quantise) points at its FP32 file, so a consumer only ever looks up
`variant_graph_path(manifest, name, precision)`. A bundle has at most one int8 variant; which INT8
flavour it is (TensorRT's signed symmetric Q/DQ, or uint8 activations for ONNX Runtime CPU) is a
property of that variant, read with `int8_flavour`, not a separate precision name.
"""

from __future__ import annotations

from pathlib import Path

from odelt.errors import ExportError
from odelt.exporter.bundle import Manifest

PRECISIONS = ("fp32", "fp16", "int8")


def precisions(manifest: Manifest) -> tuple[str, ...]:
    """Precisions this bundle offers; FP32 always."""
    return ("fp32", *manifest.data.get("precisions", {}))


def variant_graph_path(manifest: Manifest, name: str, precision: str = "fp32") -> Path:
    """Absolute path of graph `name` in `precision` (FP32 = the exported graph)."""
    if precision == "fp32":
        return manifest.graph_path(name)
    entry = manifest.data.get("precisions", {}).get(precision)
    if entry is None:
        raise ExportError(f"{manifest.root}: no {precision} variant; expected one of {list(precisions(manifest))} "
                          f"(run `odelt-export quantize {manifest.root} --precision {precision}`)")
    if name not in entry["graphs"]:
        raise ExportError(f"{manifest.root}: {precision} variant has no graph {name!r}")
    return manifest.root / entry["graphs"][name]["file"]


def int8_flavour(manifest: Manifest) -> str | None:
    """Flavour of the bundle's int8 variant ("trt" | "cpu"), None without one. Variants written
    before flavours existed were all signed symmetric: "trt"."""
    entry = manifest.data.get("precisions", {}).get("int8")
    return None if entry is None else str(entry.get("flavour", "trt"))


def variant_relpath(precision: str, graph_file: str) -> str:
    return f"{precision}/{graph_file}"


def graph_entry(manifest: Manifest, name: str, precision: str, root: Path, weight_bytes: int) -> dict:
    """Manifest entry for a changed graph saved at root/<precision>/<graph file>."""
    rel = variant_relpath(precision, manifest.graph(name).file)
    data = root / f"{rel}.data"
    return {"file": rel, "external_data": f"{rel}.data" if data.is_file() else None,
            "weight_bytes": weight_bytes, "changed": True}


def unchanged_entry(manifest: Manifest, name: str) -> dict:
    g = manifest.data["graphs"][name]
    return {"file": g["file"], "external_data": g.get("external_data"), "weight_bytes": g.get("weight_bytes", 0),
            "changed": False}
