"""Exporter: ODE_t(ODE_l) DiTs -> ONNX bundles (per-length graphs, or weight-sharing segments with
hoisted conditioning), plus the bundle reader API (`open_bundle`, `run_chain`) and verification."""

from odelt.exporter.bundle import FORMAT, Bundle, open_bundle
from odelt.exporter.chain import run_chain
from odelt.exporter.iospec import BatchRange, GraphSpec, LayoutSpec, TensorSpec, layout_spec

__all__ = ["FORMAT", "Bundle", "open_bundle", "run_chain", "BatchRange", "GraphSpec", "LayoutSpec",
           "TensorSpec", "layout_spec"]
