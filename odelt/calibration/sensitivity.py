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
    from odelt.onnxrt import open_session

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in dict.fromkeys(tensors) if t not in known)
    sess = open_session(probe)
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


def fake_quant(x: np.ndarray, scale, zero_point, bounds: tuple[int, int]) -> np.ndarray:
    """Quantise and dequantise as QuantizeLinear/DequantizeLinear do (round half to even, saturate)."""
    q = np.clip(np.round(x / scale) + zero_point, *bounds)
    return (q - zero_point) * scale


def activation_params(qmodel: onnx.ModelProto) -> dict[str, tuple[float, int, tuple[int, int]]]:
    """{FP32 tensor name: (scale, zero point, integer range)} for every tensor a QuantizeLinear reads
    with per-tensor constants (int8 or uint8: the flavour decides)."""
    inits = _initializers(qmodel)
    out = {}
    for n in qmodel.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[1] in inits and len(n.input) > 2 and n.input[2] in inits:
            zp = inits[n.input[2]]
            info = np.iinfo(zp.dtype)
            out[n.input[0]] = (float(inits[n.input[1]]), int(zp), (int(info.min), int(info.max)))
    return out


def quantised_weights(qmodel: onnx.ModelProto) -> dict[str, np.ndarray]:
    """{MatMul node name: its dequantised (K, N) weight} for MatMuls whose weight is a constant
    DequantizeLinear (per-channel along N), exactly as the quantiser stored it (7- or 8-bit)."""
    inits = _initializers(qmodel)
    dq = {n.output[0]: n for n in qmodel.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    out = {}
    for n in qmodel.graph.node:
        if n.op_type == "MatMul" and n.input[1] in dq:
            d = dq[n.input[1]]
            q, scale = inits[d.input[0]].astype(np.float32), inits[d.input[1]]
            zp = inits[d.input[2]].astype(np.float32) if len(d.input) > 2 and d.input[2] in inits else 0.0
            axis = next((a.i for a in d.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            if np.ndim(scale):
                shape[axis] = -1
            out[n.name] = (q - np.reshape(zp, shape)) * np.reshape(scale, shape)
    return out


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
    acts_q = activation_params(qmodel) if qmodel is not None else {}
    weights_q = quantised_weights(qmodel) if qmodel is not None else {}
    inits = _initializers(model)
    errors = {}
    for name in roles.block_linears:
        node = nodes[name]
        x = acts[node.input[0]][:max_rows]                          # (rows, K)
        w = _weight_matrix(model, node, inits)                      # (K, N)
        ref = x @ w
        if precision == "fp16":
            low = x.astype(np.float16).astype(np.float32) @ w.astype(np.float16).astype(np.float32)
        elif node.input[0] in acts_q and name in weights_q:
            low = fake_quant(x, *acts_q[node.input[0]]) @ weights_q[name]
        else:
            continue                                                # not quantised: no error of its own
        errors[name] = float(np.sqrt(np.mean((low - ref) ** 2)) / (np.sqrt(np.mean(ref ** 2)) + 1e-12))
    return errors
