"""Exporter: ODE_t(ODE_l) DiTs -> ONNX bundles (per-length graphs, or weight-sharing segments with
hoisted conditioning; decoders of latent models), and their verification against PyTorch.

The verbs import torch, so they load on first use: `odelt.exporter.onnx_utils` (used by engines and
calibration) stays torch-free."""

from typing import Any

__all__ = ["ExportOptions", "export_source", "export_bundle", "VerifyOptions", "verify_bundle"]

_LAZY = {"ExportOptions": "odelt.exporter.export", "export_source": "odelt.exporter.export",
         "export_bundle": "odelt.exporter.export", "VerifyOptions": "odelt.exporter.verify",
         "verify_bundle": "odelt.exporter.verify"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'odelt.exporter' has no attribute {name!r}")
