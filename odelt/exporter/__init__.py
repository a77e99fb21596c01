"""Exporter: ODE_t(ODE_l) DiTs -> ONNX bundles (per-length graphs, or weight-sharing segments with
hoisted conditioning), plus the bundle reader API (`load_manifest`, `run_chain`) and verification."""

from odelt.exporter.bundle import FORMAT, Manifest, load_manifest, run_chain
from odelt.exporter.iospec import BatchRange, GraphSpec, LayoutPlan, TensorSpec, plan_layout

__all__ = ["FORMAT", "Manifest", "load_manifest", "run_chain", "BatchRange", "GraphSpec", "LayoutPlan",
           "TensorSpec", "plan_layout"]
