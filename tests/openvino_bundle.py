"""The tiny DiT bundle the OpenVINO tests share: both layouts, an INT8 (trt flavour) variant, and
OpenVINO sets at fp32, bf16 (through the accuracy guard) and int8. Built once per process."""

from __future__ import annotations

import shutil
from pathlib import Path

_BUILT: dict[str, Path] = {}
FAST = dict(calib_samples=2, eval_samples=2, schedules=("uniform:euler:2",))


def exported(root: Path) -> Path:
    import torch

    from odelt.calibration.quantize import QuantizeOptions, quantize_bundle
    from odelt.exporter.export import ExportOptions, export_bundle
    from tests.models_zoo import random_model

    model = random_model("tiny", 0)
    with torch.no_grad():   # every weight a value (the init zeroes biases and the final layer)
        for p in model.parameters():
            p.normal_(0.0, 0.1 if p.ndim > 1 else 0.02)
    export_bundle(model, root, ExportOptions(layouts=("segments", "per-length")))
    quantize_bundle(root, QuantizeOptions("int8", **FAST))
    return root


def built_bundle(tmp_path_factory) -> Path:
    """The shared bundle with its three OpenVINO sets (read-only: copy it before changing it)."""
    if "built" not in _BUILT:
        from odelt.calibration.ov_guard import OvGuard
        from odelt.bundle.bundle import open_bundle
        from odelt.engines.build import BuildRequest, build_bundle

        src = _BUILT.setdefault("exported", exported(tmp_path_factory.mktemp("ov") / "bundle"))
        root = tmp_path_factory.mktemp("ov-built") / "bundle"
        shutil.copytree(src, root)
        for precision in ("fp32", "bf16", "int8"):
            req = BuildRequest(backend="openvino", precision=precision)
            guard = OvGuard(open_bundle(root), precision, eval_samples=4) if precision == "bf16" else None
            build_bundle(root, req, guard)
        _BUILT["built"] = root
    return _BUILT["built"]


def exported_bundle(tmp_path_factory) -> Path:
    if "exported" not in _BUILT:
        _BUILT["exported"] = exported(tmp_path_factory.mktemp("ov") / "bundle")
    return _BUILT["exported"]
