"""Bench: how an OpenVINO engine set loads fastest (issue 22 §1). For every graph of a bundle's
segments layout: compile from ONNX, import the exported compiled-model blob (what the engine set
stores), and compile from ONNX with a warm CACHE_DIR, each on a fresh Core, taking turns
(odelt.engines.openvino.measure_load); the bundle-level figure sums the per-graph medians, i.e.
the start-up of a process that opens every graph.

    .venv/bin/python bench/openvino_load.py --out out/bench-openvino-load.json [--models digits DiT-S/2]

Also part of the `engines` group (bench/engines.py) when OpenVINO is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from odelt.bundle import open_bundle
from odelt.engines import BuildRequest, build_bundle, cpu_isa, measure_load, ov_version
from odelt.exporter import ExportOptions, export_bundle
from odelt.models import PRESETS, DiT

WAYS = ("compile_ms", "import_ms", "cache_ms")


def bench_model(name: str, repeats: int, work: Path) -> dict:
    torch.manual_seed(0)
    bundle = work / f"ov-{name.replace('/', '_')}"
    export_bundle(DiT(PRESETS[name]).eval(), bundle, ExportOptions(layouts=("segments",)))
    entry = build_bundle(bundle, BuildRequest(backend="openvino"))
    m = open_bundle(bundle)
    graphs = {g: measure_load(m.graph_path(g), bundle / rel, repeats) for g, rel in sorted(entry["graphs"].items())}
    total = {k: sum(r[k] for r in graphs.values()) for k in WAYS}
    return {"model": name, "graphs": graphs, **total}


def run(work: Path, quick: bool = False) -> dict:
    models = ("digits",) if quick else ("digits", "DiT-S/2")
    out: dict = {"openvino_version": ov_version(), "openvino_cpu_isa": " ".join(cpu_isa())}
    for name in models:
        r = bench_model(name, 3 if quick else 7, work)
        key = "" if name == "digits" else "_" + name.replace("/", "").replace("-", "").lower()
        for k in WAYS:
            out[f"openvino_load_{k}{key}"] = round(r[k], 2)
        out[f"openvino_import_over_cache{key}"] = round(r["import_ms"] / r["cache_ms"], 3)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        res = run(Path(tmp), args.quick)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    json.dump(res, sys.stdout, indent=2)


if __name__ == "__main__":
    main()
