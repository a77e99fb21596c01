"""One torch module -> one checked ONNX graph: the tracer every exported graph (DiT graphs and
decoders alike) goes through."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from odelt.bundle.iospec import GraphSpec
from odelt.errors import ExportError
from odelt.exporter import onnx_utils

EXTERNAL_DATA_BYTES = 100 * 2**20          # graphs above this keep weights in .onnx.data files
TRACE_BATCH = 2                            # > 1 so nothing in the trace specialises on batch 1


def onnx_from_model(module: nn.Module, spec: GraphSpec, feed: dict[str, np.ndarray], opset: int,
                    scratch: Path | None = None):
    """Trace `module` on `feed` into an ONNX ModelProto whose IO matches `spec` exactly.

    Without `scratch` the graph is serialised in memory; graphs over 2 GiB need a scratch folder
    (the tracer then writes one file per weight there, which onnx.load gathers back)."""
    import io

    import onnx

    args = tuple(torch.from_numpy(feed[t.name]) for t in spec.inputs)
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    target: str | io.BytesIO = str(scratch / f"{spec.name}.onnx") if scratch else io.BytesIO()
    axes = {t.name: t.dynamic_axes() for t in spec.inputs + spec.outputs}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False) is deprecated but fast and predictable for these
        # static graphs; it warns about that and about shape-derived Python ints.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, target,  # type: ignore[arg-type]  # BytesIO works here
                          input_names=[t.name for t in spec.inputs],
                          output_names=[t.name for t in spec.outputs], opset_version=opset, dynamo=False,
                          do_constant_folding=True, dynamic_axes=axes)
    model = onnx.load(target) if isinstance(target, str) else onnx.load_model_from_string(target.getvalue())
    onnx_utils.restore_unused_inputs(model, spec)
    onnx_utils.check_io(model, spec)
    if opset < 17 and "LayerNormalization" in onnx_utils.op_types(model):
        raise ExportError(f"graph {spec.name}: opset {opset} must not contain LayerNormalization")
    return model
