import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from odelt.engines.graph import graph_digest, graph_opset, graph_precision
from odelt.engines.platform import EngineManifest, Platform, cache_key, check_compatible, read_l4t
from odelt.errors import EngineMismatch

BASE = Platform("10.3.0", "Orin", "8.7", "36.4.3", "6.1/6.2")


def test_cache_key_changes_with_each_input():
    opts = {"precision": "auto", "optimization_level": 3, "profiles": [("x", (1,), (2,), (8,))]}
    key = cache_key(b"graph", BASE, opts)
    assert key == cache_key(b"graph", dataclasses.replace(BASE), dict(opts))  # deterministic
    variants = [
        cache_key(b"graph2", BASE, opts),
        cache_key(b"graph", dataclasses.replace(BASE, trt_version="10.3.1"), opts),
        cache_key(b"graph", dataclasses.replace(BASE, gpu_name="Orin (nvgpu) 2"), opts),
        cache_key(b"graph", dataclasses.replace(BASE, compute_capability="8.6"), opts),
        cache_key(b"graph", BASE, {**opts, "optimization_level": 4}),
        cache_key(b"graph", BASE, {**opts, "profiles": [("x", (1,), (4,), (8,))]}),
    ]
    assert len({key, *variants}) == 1 + len(variants)


def test_mismatch_refused_with_one_line(tmp_path):
    m = EngineManifest("tensorrt", BASE, "abc", "k")
    check_compatible(m, dataclasses.replace(BASE, l4t="36.4.4"), tmp_path / "e.plan")  # JetPack patch ok
    for other, what in [(dataclasses.replace(BASE, trt_version="10.16.0"), "TensorRT version"),
                        (Platform("10.3.0", "NVIDIA H100", "9.0"), "GPU")]:
        with pytest.raises(EngineMismatch) as e:
            check_compatible(m, other, tmp_path / "e.plan")
        msg = str(e.value)
        assert "\n" not in msg and what in msg and "--force" in msg and "TensorRT 10.3.0 on Orin" in msg


def test_manifest_round_trip():
    m = EngineManifest("tensorrt", BASE, "abc", "k", {"precision": "auto"}, "orin-nano")
    assert EngineManifest.from_dict(m.to_dict()) == m


def test_read_l4t(tmp_path):
    f = tmp_path / "nv_tegra_release"
    f.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
                 "DATE: Wed Jan  8 01:49:37 UTC 2025\n")
    assert read_l4t(f) == ("36.4.3", "6.1/6.2")
    f.write_text("# R35 (release), REVISION: 5.0, GCID: 1, BOARD: t186ref, EABI: aarch64\n")
    assert read_l4t(f) == ("35.5.0", "5.1")
    assert read_l4t(tmp_path / "absent") == (None, None)
    f.write_text("garbage")
    assert read_l4t(f) == (None, None)


def _graph(nodes, inits, opset=17):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_graph_precision_and_opset():
    w32 = numpy_helper.from_array(np.ones(2, np.float32), "w")
    fp32 = _graph([helper.make_node("Add", ["x", "w"], ["y"])], [w32])
    assert graph_precision(fp32) == "fp32" and graph_opset(fp32) == 17
    w16 = numpy_helper.from_array(np.ones(2, np.float16), "w")
    fp16 = _graph([helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
                   helper.make_node("Add", ["h", "w"], ["a"]),
                   helper.make_node("Cast", ["a"], ["y"], to=TensorProto.FLOAT)], [w16], opset=16)
    assert graph_precision(fp16) == "fp16" and graph_opset(fp16) == 16
    s = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    z = numpy_helper.from_array(np.array(0, np.int8), "z")
    q = _graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], [s, z])
    assert graph_precision(q) == "int8"


def test_graph_digest_covers_external_weights(tmp_path):
    w = numpy_helper.from_array(np.ones(4096, np.float32), "w")
    model = _graph([helper.make_node("Add", ["x", "w"], ["y"])], [w])
    path = tmp_path / "g.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="g.onnx.data", size_threshold=0)
    before = graph_digest(path)
    data = tmp_path / "g.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 1
    data.write_bytes(bytes(raw))
    assert graph_digest(path) != before
