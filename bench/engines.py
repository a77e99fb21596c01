"""Bench: ONNX Runtime engine start-up (issue 6, `ort_engine_startup_speedup`).

For each model: export a bundle (random weights: start-up does not depend on their values), build
the ORT engine set, then for every graph time session creation + first run from the raw graph
(default: all optimisations at load) vs from the engine (optimisations off, already applied),
median of --repeats, alternating the two. The speedup is on session creation, the part an engine
changes; the first run after it is recorded beside it (it is the same work either way). The bundle-level number sums the per-graph medians of
one layout, i.e. the start-up of a process that opens every graph of that layout.

    .venv/bin/python bench/engines.py --out out/bench-engines.json [--models digits DiT-S/2]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

from odelt.bundle import open_bundle
from odelt.engines import BuildRequest, build_bundle, measure_startup
from odelt.exporter import ExportOptions, export_bundle
from odelt.models import PRESETS, DiT


def bench_model(name: str, layout: str, repeats: int, work: Path) -> dict:
    torch.manual_seed(0)
    model = DiT(PRESETS[name]).eval()
    bundle = work / name.replace("/", "_")
    export_bundle(model, bundle, ExportOptions(layouts=(layout,)))
    t0 = time.perf_counter()
    entry = build_bundle(bundle, BuildRequest(backend="ort"))
    build_s = time.perf_counter() - t0
    m = open_bundle(bundle)
    graphs = {}
    for g, rel in sorted(entry["graphs"].items()):
        graphs[g] = measure_startup(m.graph_path(g), bundle / rel, repeats)
    total = {k: sum(r[k] for r in graphs.values()) for k in
             ("raw_startup_ms", "engine_startup_ms", "raw_first_run_ms", "engine_first_run_ms")}
    return {"model": name, "layout": layout, "graphs": graphs, "engine_build_s": build_s, **total,
            "ort_engine_startup_speedup": total["raw_startup_ms"] / total["engine_startup_ms"]}


def run(quick: bool = False, smoke: bool = False) -> dict:
    """Harness entry (bench/run.py group `engines`): `ort_engine_startup_speedup` (digits) and the
    TensorRT-RTX figures of bench/rtx_engines.py (real builds; skipped, said so, without the library)."""
    models = ("digits",) if quick else ("digits", "DiT-S/2")
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_model(n, "segments", 2 if smoke else 5 if quick else 11, Path(tmp)) for n in models]
        out = _rtx(Path(tmp), quick, smoke)
        out.update(_openvino(Path(tmp), quick, smoke))
    for r in results:
        key = "" if r["model"] == "digits" else "_" + r["model"].replace("/", "").replace("-", "").lower()
        out[f"ort_engine_startup_speedup{key}"] = round(r["ort_engine_startup_speedup"], 3)
        out[f"ort_engine_startup_raw_ms{key}"] = round(r["raw_startup_ms"], 2)
        out[f"ort_engine_startup_engine_ms{key}"] = round(r["engine_startup_ms"], 2)
    return out


def _rtx(work: Path, quick: bool, smoke: bool = False) -> dict:
    try:
        import tensorrt_rtx  # noqa: F401
    except ImportError:
        return {"trt_rtx_skipped": "tensorrt_rtx not installed (the `rtx` extra)"}
    import rtx_engines  # bench/ is on the path (bench/run.py)

    return rtx_engines.run(work, quick, smoke)


def _openvino(work: Path, quick: bool, smoke: bool = False) -> dict:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return {"openvino_skipped": "openvino not installed (the `openvino` extra)"}
    import openvino_load  # bench/ is on the path (bench/run.py)

    return openvino_load.run(work, quick or smoke)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["digits", "DiT-S/2"])
    ap.add_argument("--layout", default="segments")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--out", type=Path, default=Path("out/bench-engines.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_model(n, args.layout, args.repeats, Path(tmp)) for n in args.models]
    report = {"group": "precision", "bench": "ort_engine_startup",
              "machine": {"python": sys.version.split()[0], "onnxruntime": ort.__version__,
                          "cpu": platform.processor() or platform.machine()},
              "repeats": args.repeats, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        print(f"{r['model']:>8} {r['layout']}: session start-up raw {r['raw_startup_ms']:.1f} ms, "
              f"engine {r['engine_startup_ms']:.1f} ms, speedup {r['ort_engine_startup_speedup']:.2f}x "
              f"(first run after: raw {r['raw_first_run_ms']:.1f} ms, engine {r['engine_first_run_ms']:.1f} ms)")


if __name__ == "__main__":
    main()
