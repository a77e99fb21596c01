"""Per-layer sensitivity: how much error each block linear's reduced precision adds on its own.

The accuracy guard ranks layers by this to decide which go back to FP32 first. Errors are measured
locally (FP32 input activations recorded along the calibration trajectories, the layer's reduced-
precision weights and input, relative RMS error of its output), so a layer is not blamed for error
that its upstream layers made.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from odelt.calibration.graph_roles import analyse, name_nodes


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _constant(model: onnx.ModelProto, name: str, inits: dict[str, np.ndarray]) -> np.ndarray:
    """Value of a constant tensor: an initializer, or a Transpose/Cast/Identity chain of one."""
    if name in inits:
        return inits[name]
    producer = next(n for n in model.graph.node if name in n.output)
    if producer.op_type == "Constant":
        return numpy_helper.to_array(producer.attribute[0].t)
    value = _constant(model, producer.input[0], inits)
    if producer.op_type == "Transpose":
        perm = next((list(a.ints) for a in producer.attribute if a.name == "perm"), None)
        return np.transpose(value, perm)
    return value.astype(np.float32) if producer.op_type == "Cast" else value


def _record_inputs(model: onnx.ModelProto, tensors: list[str],
                   feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Run `model` with `tensors` added as outputs; concatenate each over the feeds (rows flattened)."""
    import onnxruntime as ort

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in dict.fromkeys(tensors) if t not in known)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    rows: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for feed in feeds:
        for t, v in zip(tensors, sess.run(tensors, feed)):
            rows[t].append(v.reshape(-1, v.shape[-1]))
    return {t: np.concatenate(v) for t, v in rows.items()}


def _weight_matrix(model: onnx.ModelProto, node: onnx.NodeProto, inits: dict) -> np.ndarray:
    """(K, N) weight of a MatMul, or of a Gemm (transB handled)."""
    w = _constant(model, node.input[1], inits).astype(np.float32)
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    return w.T if trans_b else w


def fake_int8(x: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.round(x / scale), -128, 127) * scale


def int8_weight(w: np.ndarray) -> np.ndarray:
    """Symmetric per-output-channel INT8 of a (K, N) weight, dequantised."""
    scale = np.maximum(np.abs(w).max(axis=0, keepdims=True), 1e-12) / 127.0
    return fake_int8(w, scale)


def activation_scales(qmodel: onnx.ModelProto) -> dict[str, float]:
    """{FP32 tensor name: INT8 scale} for every tensor a QuantizeLinear reads."""
    inits = _initializers(qmodel)
    return {n.input[0]: float(inits[n.input[1]]) for n in qmodel.graph.node
            if n.op_type == "QuantizeLinear" and n.input[1] in inits}


def layer_errors(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]], precision: str,
                 qmodel: onnx.ModelProto | None = None, max_rows: int = 4096) -> dict[str, float]:
    """{block linear node: relative RMS output error} for FP32 `model` at `precision` ("int8" needs
    the quantised `qmodel` for its activation scales; "fp16" rounds inputs and weights to FP16)."""
    model = name_nodes(onnx.ModelProto.FromString(model.SerializeToString()))
    roles = analyse(model)
    if not roles.block_linears or not feeds:
        return {}
    nodes = {n.name: n for n in model.graph.node}
    acts = _record_inputs(model, [nodes[n].input[0] for n in roles.block_linears], feeds)
    scales = activation_scales(qmodel) if qmodel is not None else {}
    inits = _initializers(model)
    errors = {}
    for name in roles.block_linears:
        node = nodes[name]
        x = acts[node.input[0]][:max_rows]                          # (rows, K)
        w = _weight_matrix(model, node, inits)                      # (K, N)
        ref = x @ w
        if precision == "fp16":
            low = x.astype(np.float16).astype(np.float32) @ w.astype(np.float16).astype(np.float32)
        elif node.input[0] in scales:
            low = fake_int8(x, scales[node.input[0]]) @ int8_weight(w)
        else:
            continue                                                # not quantised: no error of its own
        errors[name] = float(np.sqrt(np.mean((low - ref) ** 2)) / (np.sqrt(np.mean(ref ** 2)) + 1e-12))
    return errors
