"""The demo's TensorRT-RTX stage: real engines built ahead of time on this machine (no GPU needed),
FP32 from the demo bundle and INT8 from a sibling bundle quantised in TensorRT's flavour.

Why a sibling: a bundle has one INT8 variant, and the demo's is ONNX Runtime's CPU flavour (uint8
activations, which TensorRT's parser refuses); TensorRT needs signed symmetric Q/DQ. The sibling is a
fresh export of the same model with that variant; its engines are the ones an RTX PC would load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from odelt.engines.build import BuildRequest, build_bundle
from odelt.engines.rtx import LIBRARY

Log = Callable[[str], None]
SIBLING = "bundle-trt-int8"


def available() -> bool:
    try:
        import tensorrt_rtx  # noqa: F401
    except ImportError:
        return False
    return True


def stage_rtx(out: Path, bundle: Any, source: str, calib_samples: int, quick: bool, log: Log,
              vaes: tuple[tuple[str, str], ...] = ()) -> dict:
    """{precision: headline figures of its TensorRT-RTX set} plus the ONNX Runtime engine bytes beside
    them; {} with a note when the TensorRT-RTX wheel is not installed (install the `rtx` extra).
    `vaes`: the demo bundle's decoder stages, exported into the sibling too (each set builds every
    graph, the decoder's included)."""
    if not available():
        log("tensorrt-rtx: skipped (install the `rtx` extra: pip install 'odelt-export[rtx]')")
        return {}

    level = 0 if quick else 3                 # the builder's effort: level 0 keeps the smoke test short
    log(f"tensorrt-rtx: building the fp32 engine set (portable targets, optimisation level {level}) ...")
    figures = build_sets(bundle.root, ("fp32",), optimization_level=level)
    if not quick:
        sibling = _int8_sibling(out, source, calib_samples, log, vaes)
        log("tensorrt-rtx: building the int8 engine set (TensorRT's Q/DQ flavour) ...")
        figures.update(build_sets(sibling.root, ("int8",), optimization_level=level))
    for precision, f in figures.items():
        f["ort_engine_bytes"] = ort_engine_bytes(bundle, precision)
        log(f"tensorrt-rtx: {precision} {f['plan_bytes_total'] / 1e6:.2f} MB of plans in {f['build_s_total']:.1f} s"
            + (" (up to date, not rebuilt)" if f["up_to_date"] else ""))
    return figures


def _int8_sibling(out: Path, source: str, calib_samples: int, log: Log, vaes: tuple[tuple[str, str], ...] = ()) -> Any:
    from odelt.calibration.quantize import QuantizeOptions, quantize_bundle
    from odelt.bundle.bundle import MANIFEST, open_bundle
    from odelt.exporter.export import ExportOptions, export_source

    root = out / SIBLING
    if not (root / MANIFEST).is_file():
        log(f"tensorrt-rtx: exporting {SIBLING} for TensorRT's INT8 flavour ...")
        export_source(source, root, ExportOptions(layouts=("segments", "per-length"), vaes=vaes))
    sibling = open_bundle(root)
    if sibling.int8_flavour != "trt":
        log("tensorrt-rtx: quantising it (int8, trt flavour, calibrated on ODE trajectories) ...")
        quantize_bundle(root, QuantizeOptions(precision="int8", flavour="trt", calib_samples=calib_samples))
    return open_bundle(root)


def ort_engine_bytes(bundle: Any, precision: str) -> int | None:
    """Bytes of the bundle's ONNX Runtime engine set of `precision` (None when it has none)."""
    sets = [name for name, e in bundle.engine_sets.items() if e["backend"] == "ort" and e["precision"] == precision]
    if not sets:
        return None
    owner = f"engines/{sets[0]}"
    return sum(r["size"] or 0 for r in bundle.files.values() if r["owner"] == owner)


def build_sets(bundle: str | Path, precisions: tuple[str, ...] = ("fp32",), targets: tuple[str, ...] = ("portable",),
               optimization_level: int = 3, force: bool = False) -> dict[str, dict]:
    """Build (or find up to date) the TensorRT-RTX set of each precision: {precision: headline
    figures} for a report (the demo's). Raises as `odelt-export build` would (e.g. a cpu-flavour INT8)."""
    out = {}
    for precision in precisions:
        req = BuildRequest(backend=LIBRARY, precision=precision, rtx_targets=targets,
                           optimization_level=optimization_level, force=force)
        entry = build_bundle(bundle, req)
        built = entry["built"]
        out[precision] = {"set": req.set_name, "up_to_date": bool(entry.get("up_to_date")),
                          **{k: built[k] for k in ("plan_bytes_total", "weights_bytes_total", "onnx_bytes_total",
                                                    "build_s_total", "library_version", "compute_capabilities")},
                          "build_s": {n: g["build_s"] for n, g in built["graphs"].items()}}
    return out
