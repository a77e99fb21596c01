"""Graph structure of the FP16 and INT8 conversions, on one chunk graph of a tiny model."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from odelt.calibration.fp16 import fp16_from_onnx, node_dtypes
from odelt.calibration.graph_roles import analyse, name_nodes
from odelt.calibration.int8 import fused_ops, int8_from_onnx
from odelt.errors import ConfigError
from odelt.bundle import open_bundle

FLOAT, HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def _graph(bundle, name):
    return name_nodes(onnx.load(str(open_bundle(bundle).graph_path(name))))


def _feeds(model, n=4, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        feed = {}
        for i in model.graph.input:
            dims = [d.dim_value or 2 for d in i.type.tensor_type.shape.dim]
            if i.type.tensor_type.elem_type == onnx.TensorProto.INT32:   # y, dt_base (l folded in)
                feed[i.name] = rng.integers(0, 8, size=dims).astype(np.int32)
            elif i.name == "t":
                feed[i.name] = rng.uniform(0, 1, size=dims).astype(np.float32)
            else:
                feed[i.name] = rng.standard_normal(dims).astype(np.float32)
        out.append(feed)
    return out


def test_roles_find_block_linears_only(fp32_bundle):
    chunk = analyse(_graph(fp32_bundle, "blocks_0-1"))
    assert len(chunk.block_linears) == 2 * 6          # q, k, v, proj, fc1, fc2 per block
    assert analyse(_graph(fp32_bundle, "head")).block_linears == ()      # final layer
    assert analyse(_graph(fp32_bundle, "cond")).block_linears == ()      # conditioning
    length = _graph(fp32_bundle, "length_4")
    roles = analyse(length)
    assert len(roles.block_linears) == 4 * 6
    # adaLN Gemms and embedder MLPs of the per-length graph are conditioning, never block linears
    gemms = [n.name for n in length.graph.node if n.op_type == "Gemm"]
    assert gemms and all(g in roles.conditioning_nodes for g in gemms)


def test_int8_qdq_around_block_matmuls_only(fp32_bundle, caplog):
    model = _graph(fp32_bundle, "length_4")
    roles = analyse(model)
    with caplog.at_level("WARNING"):
        q, report = int8_from_onnx(model, _feeds(model))
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]   # the quantiser's advice
    onnx.checker.check_model(q, full_check=True)
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    consumers = {}
    for n in q.graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    quantised = set()
    for dq in (n for n in q.graph.node if n.op_type == "DequantizeLinear"):
        # ORT rewires every reader of a quantised tensor; the only others are Shape ops (no data)
        users = [u for u in consumers[dq.output[0]] if u.op_type != "Shape"]
        assert users and all(u.op_type == "MatMul" and u.name in roles.block_linears for u in users)
        quantised.update(u.name for u in users)
        assert not inits[dq.input[2]].any(), "symmetric: zero points are 0"
        assert inits[dq.input[2]].dtype == np.int8
        if dq.input[0] in inits:                                   # a weight: per output channel
            axis = next(a.i for a in dq.attribute if a.name == "axis")
            w = inits[dq.input[0]]
            assert axis == 1 and inits[dq.input[1]].shape == (w.shape[1],) and w.shape[1] > 1
        else:                                                       # an activation: per tensor
            assert inits[dq.input[1]].shape == ()
    assert quantised == set(roles.block_linears) == set(report["int8_linears"])
    # nothing in the conditioning (adaLN Gemms, embedders) or final layer reads a DequantizeLinear
    dq_outs = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    for n in q.graph.node:
        if n.op_type in ("Gemm", "Conv") or n.name not in roles.block_linears and n.op_type == "MatMul":
            assert not dq_outs & set(n.input), n.name


def test_int8_exclude_and_zero_samples(fp32_bundle):
    model = _graph(fp32_bundle, "blocks_0-1")
    roles = analyse(model)
    q, report = int8_from_onnx(model, _feeds(model), exclude=roles.block_linears[:3])
    assert report["fallback_fp32"] == sorted(roles.block_linears[:3])
    assert len(report["int8_linears"]) == len(roles.block_linears) - 3
    with pytest.raises(ConfigError, match="at least 1 sample, found 0"):
        int8_from_onnx(model, [])


def test_fp16_keeps_norms_softmax_and_sums_fp32(fp32_bundle):
    model = _graph(fp32_bundle, "blocks_2-3")
    roles = analyse(model)
    half, report = fp16_from_onnx(model)
    onnx.checker.check_model(half, full_check=True)
    types = node_dtypes(half)
    by_op = {}
    for n in half.graph.node:
        by_op.setdefault(n.op_type, set()).add(types[n.name])
    assert by_op["LayerNormalization"] == {FLOAT} and by_op["Softmax"] == {FLOAT}
    assert all(types[n] == FLOAT for n in roles.trunk_adds)       # residual / velocity sums
    assert all(types[n] == HALF for n in roles.block_linears)     # block matmuls in FP16
    weights = [i for i in half.graph.initializer if i.data_type == HALF]
    assert len(weights) >= len(roles.block_linears)
    assert all(i.type.tensor_type.elem_type == FLOAT for i in (*half.graph.input, *half.graph.output))
    # the residual stream never passes through FP16: no sum's output is cast to FP16
    producers = {o: n for n in half.graph.node for o in n.output}
    sum_outs = {producers_out for n in half.graph.node if n.name in roles.trunk_adds for producers_out in n.output}
    for n in half.graph.node:
        if n.op_type == "Cast" and n.input[0] in sum_outs:
            to = next(a.i for a in n.attribute if a.name == "to")
            consumers = [c for c in half.graph.node if n.output[0] in c.input]
            assert to == FLOAT or all(c.name not in roles.trunk_adds for c in consumers)
    assert producers  # graph is non-empty


def test_fp16_and_int8_outputs_close_to_fp32(fp32_bundle):
    import onnxruntime as ort

    model = _graph(fp32_bundle, "length_4")
    feeds = _feeds(model, 3, seed=1)
    ref_sess = ort.InferenceSession(model.SerializeToString())
    half, _ = fp16_from_onnx(model)
    q, _ = int8_from_onnx(model, feeds)
    for variant, bound in ((half, 0.01), (q, 0.08)):
        sess = ort.InferenceSession(variant.SerializeToString())
        for f in feeds:
            ref, out = ref_sess.run(None, f)[0], sess.run(None, f)[0]
            rel = np.sqrt(np.mean((out - ref) ** 2)) / np.sqrt(np.mean(ref ** 2))
            assert 0 < rel < bound


def _qdq_params(q):
    """(activation zero points, weight int8 arrays) of a Q/DQ graph."""
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    acts = [inits[n.input[2]] for n in q.graph.node if n.op_type == "QuantizeLinear"]
    weights = [inits[n.input[0]] for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    return acts, weights


def test_int8_flavours_types_and_ranges(fp32_bundle):
    model = _graph(fp32_bundle, "blocks_0-1")
    feeds = _feeds(model)
    trt, rep_trt = int8_from_onnx(model, feeds)
    cpu, rep_cpu = int8_from_onnx(model, feeds, flavour="cpu")
    assert (rep_trt["flavour"], rep_cpu["flavour"]) == ("trt", "cpu")
    acts, weights = _qdq_params(trt)
    assert acts and all(z.dtype == np.int8 and not z.any() for z in acts)            # signed symmetric
    assert max(int(np.abs(w).max()) for w in weights) == 127                       # full 8-bit weights
    acts, weights = _qdq_params(cpu)
    assert acts and all(z.dtype == np.uint8 for z in acts)                        # unsigned, with zero points
    assert any(z != 128 for z in acts)                                             # asymmetric ranges in use
    assert all(w.dtype == np.int8 and np.abs(w).max() <= 64 for w in weights)       # 7-bit (no VNNI saturation)
    assert max(int(np.abs(w).max()) for w in weights) == 64
    with pytest.raises(ConfigError, match="unknown INT8 flavour 'int4'"):
        int8_from_onnx(model, feeds, flavour="int4")


def test_cpu_flavour_fuses_every_block_matmul_in_onnx_runtime(fp32_bundle):
    """What ORT's CPU provider really runs (optimized_model_filepath): the cpu flavour becomes
    MatMulIntegerToFloat for every block linear; no DequantizeLinear + FP32 MatMul is left."""
    model = _graph(fp32_bundle, "length_4")
    n_linears = len(analyse(model).block_linears)
    feeds = _feeds(model, 3)
    cpu, _ = int8_from_onnx(model, feeds, flavour="cpu")
    ops = fused_ops(cpu)
    fp32_ops = fused_ops(model)
    fp32_matmuls = fp32_ops.get("MatMul", 0) + fp32_ops.get("FusedMatMul", 0)
    assert ops.get("MatMulIntegerToFloat", 0) == n_linears
    assert ops.get("DequantizeLinear", 0) == 0
    assert ops.get("MatMul", 0) + ops.get("FusedMatMul", 0) == fp32_matmuls - n_linears   # attention BMMs only
    # The reason for two flavours: with signed activations q/k/v (one shared quantised input) stay
    # DequantizeLinear + FP32 MatMul. If this starts failing, ORT fuses signed activations too.
    trt_ops = fused_ops(int8_from_onnx(model, feeds)[0])
    assert trt_ops.get("MatMulIntegerToFloat", 0) < n_linears and trt_ops.get("DequantizeLinear", 0) > 0


def test_cpu_flavour_close_to_fp32_and_layer_errors(fp32_bundle):
    import onnxruntime as ort

    from odelt.calibration.sensitivity import layer_errors

    model = _graph(fp32_bundle, "blocks_2-3")
    feeds = _feeds(model, 3, seed=2)
    cpu, _ = int8_from_onnx(model, feeds, flavour="cpu")
    ref_sess, sess = ort.InferenceSession(model.SerializeToString()), ort.InferenceSession(cpu.SerializeToString())
    for f in feeds:
        ref, out = ref_sess.run(None, f)[0], sess.run(None, f)[0]
        assert 0 < np.sqrt(np.mean((out - ref) ** 2)) / np.sqrt(np.mean(ref ** 2)) < 0.08
    errors = layer_errors(model, feeds, "int8", cpu)
    assert set(errors) == set(analyse(model).block_linears)
    assert all(0 < e < 0.1 for e in errors.values())
    # the estimate is ORT's own error: quantise one layer alone, read its output from both graphs
    first, rest = analyse(model).block_linears[0], analyse(model).block_linears[1:]
    alone, _ = int8_from_onnx(model, feeds, exclude=rest, flavour="cpu")
    assert layer_errors(model, feeds, "int8", alone).keys() == {first}      # k, v beside q read FP32
    tensor = next(n.output[0] for n in model.graph.node if n.name == first)
    outs = []
    for m in (model, alone):
        probe = onnx.ModelProto.FromString(m.SerializeToString())
        probe.graph.output.append(onnx.ValueInfoProto(name=tensor))
        sess = ort.InferenceSession(probe.SerializeToString())
        outs.append(np.concatenate([sess.run([tensor], f)[0].ravel() for f in feeds]))
    measured = np.sqrt(np.mean((outs[1] - outs[0]) ** 2)) / np.sqrt(np.mean(outs[0] ** 2))
    assert errors[first] == pytest.approx(measured, rel=0.02)
