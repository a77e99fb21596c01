"""The demo's OpenVINO stage: CPU engine sets beside the ORT ones, at the precisions this CPU runs
as asked (odelt.engines.openvino.native_precisions): fp32 and int8 (from the Q/DQ variant) always,
bf16 through its accuracy guard only where the CPU has BF16 instructions (AVX512-BF16 or AMX).
Elsewhere OpenVINO would run a bf16 set as f32: a second FP32 set under a bf16 name, which the
planner would not offer anyway (odelt.runtime.budget.axes), so it is not built.
"""

from __future__ import annotations

from typing import Any, Callable

Log = Callable[[str], None]


def has_openvino() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def stage_build_openvino(precisions: tuple[str, ...], manifest: Any, log: Log) -> None:
    """Build (or reuse) the OpenVINO CPU sets of the demo's `precisions` this CPU runs natively."""
    from odelt.bundle.bundle import open_bundle
    from odelt.calibration.ov_guard import OvGuard
    from odelt.engines.build import BuildRequest, build_bundle, describe
    from odelt.engines.openvino import NATIVE_ISA, native_precisions

    native = native_precisions()
    if "bf16" not in native:
        log(f"build: no openvino bf16 set: this CPU has none of {', '.join(NATIVE_ISA['bf16'])} (OpenVINO would "
            "run it as f32)")
    for precision in [p for p in precisions if p in ("fp32", "int8")] + [p for p in ("bf16",) if p in native]:
        req = BuildRequest(backend="openvino", precision=precision)
        if req.set_name in open_bundle(manifest.root).engine_sets:
            log(f"build: reusing openvino {precision} engines")
            continue
        log(f"build: openvino {precision} engines (compiled ahead of time) ...")
        guard = OvGuard.for_bundle(manifest.root, req) if precision == "bf16" else None
        log(f"build: {describe(req, build_bundle(manifest.root, req, guard))}")
