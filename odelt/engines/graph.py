"""Facts about an ONNX graph that engine builders need: its content hash (including external
weight files), its opset and the precision that lives in it. Pure `onnx`, no runtime."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx

from odelt.errors import BundleError

_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_LOW_FLOAT = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def load_graph(onnx_path: Path) -> onnx.ModelProto:
    """The graph without its external weights (we only look at structure and types)."""
    try:
        return onnx.load(str(onnx_path), load_external_data=False)
    except FileNotFoundError:
        raise BundleError(f"ONNX graph {onnx_path} not found") from None
    except Exception as e:  # onnx raises DecodeError and friends for a corrupt file
        raise BundleError(f"{onnx_path} is not a readable ONNX graph ({type(e).__name__})") from None


def graph_digest(onnx_path: Path, model: onnx.ModelProto | None = None) -> str:
    """sha256 of the graph file and every external-data file it references, in a fixed order,
    so that an engine cache entry changes when the weights change even if the .onnx does not."""
    model = model or load_graph(onnx_path)
    h = hashlib.sha256(onnx_path.read_bytes())
    locations = sorted({entry.value for init in model.graph.initializer
                        for entry in init.external_data if entry.key == "location"})
    for loc in locations:
        h.update(loc.encode())
        try:
            h.update(hashlib.sha256((onnx_path.parent / loc).read_bytes()).digest())
        except FileNotFoundError:
            raise BundleError(f"{onnx_path} references missing external data {loc}") from None
    return h.hexdigest()


def graph_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise BundleError("ONNX graph declares no default-domain opset")


def graph_precision(model: onnx.ModelProto) -> str:
    """'int8' when the graph holds explicit Q/DQ nodes, 'fp16' when it holds FP16/BF16 weights or
    casts to them, else 'fp32'. On TensorRT >= 10 this is the precision the engine will have."""
    ops = {n.op_type for n in model.graph.node}
    if ops & _QDQ:
        return "int8"
    if any(init.data_type in _LOW_FLOAT for init in model.graph.initializer):
        return "fp16"
    for node in model.graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i in _LOW_FLOAT for a in node.attribute):
            return "fp16"
    return "fp32"
