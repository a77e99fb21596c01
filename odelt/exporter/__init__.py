"""Exporter: ODE_t(ODE_l) DiTs -> ONNX bundles (per-length graphs, or weight-sharing segments with
hoisted conditioning; decoders of latent models), and their verification against PyTorch.

The verbs import torch, so they load on first use: `odelt.exporter.onnx_utils` (used by engines and
calibration) stays torch-free."""

from odelt.lazy import face

__all__, __getattr__, __dir__ = face(__name__, {
    "odelt.exporter.export": ("ExportOptions", "export_source", "export_bundle"),
    "odelt.exporter.verify": ("VerifyOptions", "verify_bundle", "model_for_bundle"),
    "odelt.exporter.decoder": ("DecoderGraph", "export_decoders"),
    "odelt.exporter.tables": ("add_table",),
    "odelt.exporter.report": ("describe", "describe_verify"),
})
