import json

import numpy as np
import onnx
from onnx import helper
import onnxruntime as ort
import pytest

from odelt.engines import ort as oe
from odelt.errors import EngineMismatch
from odelt.errors import BuildError, BundleError, ConfigError


def _raw(path, level):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("fmt", ["onnx", "ort"])
def test_engine_matches_raw_graph_and_loads_unoptimised(tmp_path, tiny_onnx, x_batch, fmt):
    eng = oe.engine_from_onnx(tiny_onnx, tmp_path / f"tiny.{fmt}", oe.OrtEngineOptions(format=fmt))
    sess = oe.session_from_engine(eng.path)
    assert sess.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    got = sess.run(None, {"x": x_batch})[0]
    # Same optimisations, applied at build time instead of at load: bit-identical outputs.
    default = _raw(tiny_onnx, ort.GraphOptimizationLevel.ORT_ENABLE_ALL).run(None, {"x": x_batch})[0]
    np.testing.assert_array_equal(got, default)
    plain = _raw(tiny_onnx, ort.GraphOptimizationLevel.ORT_DISABLE_ALL).run(None, {"x": x_batch})[0]
    np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-5)
    rec = json.loads(oe.record_path(eng.path).read_text())
    assert rec["session_options"]["graph_optimization_level"] == "disabled"
    assert rec["onnxruntime_version"] == ort.__version__


def test_engine_graph_is_actually_optimised(tmp_path, tiny_onnx):
    eng = oe.engine_from_onnx(tiny_onnx, tmp_path / "tiny.onnx", oe.OrtEngineOptions())
    raw_nodes = onnx.load(str(tiny_onnx)).graph.node
    opt_nodes = onnx.load(str(eng.path)).graph.node
    # LayerNorm, GELU and MatMul+Add are fused: fewer nodes, contrib (com.microsoft) ops appear.
    assert len(opt_nodes) < len(raw_nodes)
    assert any(n.domain == "com.microsoft" for n in opt_nodes)


def test_engine_from_other_onnxruntime_or_machine_is_refused(tmp_path, tiny_onnx):
    eng = oe.engine_from_onnx(tiny_onnx, tmp_path / "tiny.onnx")
    rp = oe.record_path(eng.path)
    rec = json.loads(rp.read_text())
    rp.write_text(json.dumps({**rec, "onnxruntime_version": "0.0.1"}))
    with pytest.raises(EngineMismatch, match="ONNX Runtime 0.0.1"):
        oe.session_from_engine(eng.path)
    rp.write_text(json.dumps({**rec, "machine": "vax"}))
    with pytest.raises(EngineMismatch, match="optimised on vax"):
        oe.session_from_engine(eng.path)
    rp.unlink()
    with pytest.raises(EngineMismatch, match="no record"):
        oe.session_from_engine(eng.path)


def test_bad_options_and_bad_graph(tmp_path):
    with pytest.raises(ConfigError, match="optimisation level"):
        oe.OrtEngineOptions(level="max")
    with pytest.raises(ConfigError, match="format"):
        oe.OrtEngineOptions(format="plan")
    with pytest.raises(ConfigError, match="not available"):
        oe.engine_from_onnx(tmp_path / "x.onnx", tmp_path / "y.onnx",
                            oe.OrtEngineOptions(providers=("NoSuchExecutionProvider",)))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(BundleError, match="not a readable ONNX graph"):
        oe.engine_from_onnx(bad, tmp_path / "out.onnx")
    unknown_op = helper.make_model(helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])]))
    onnx.save(unknown_op, str(tmp_path / "unknown.onnx"))
    with pytest.raises(BuildError, match="ONNX Runtime could not optimise unknown.onnx"):
        oe.engine_from_onnx(tmp_path / "unknown.onnx", tmp_path / "out.onnx")
    # nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx", "unknown.onnx"]


def test_measure_startup_reports_both_medians(tmp_path, tiny_onnx):
    eng = oe.engine_from_onnx(tiny_onnx, tmp_path / "tiny.onnx")
    m = oe.measure_startup(tiny_onnx, eng.path, repeats=3)
    assert min(m["raw_startup_ms"], m["engine_startup_ms"], m["raw_first_run_ms"], m["engine_first_run_ms"]) > 0
    assert m["speedup"] == pytest.approx(m["raw_startup_ms"] / m["engine_startup_ms"])


def test_engine_of_graph_with_external_weights_is_self_contained(tmp_path, tiny_onnx, x_batch):
    src = tmp_path / "src" / "g.onnx"
    src.parent.mkdir()
    onnx.save(onnx.load(str(tiny_onnx)), str(src), save_as_external_data=True, location="g.onnx.data",
              size_threshold=0)
    (tmp_path / "eng").mkdir()
    eng = oe.engine_from_onnx(src, tmp_path / "eng" / "g.onnx")
    assert (tmp_path / "eng" / "g.onnx.data").is_file()   # weights beside the engine, not the source
    want = _raw(src, ort.GraphOptimizationLevel.ORT_ENABLE_ALL).run(None, {"x": x_batch})[0]
    np.testing.assert_array_equal(oe.session_from_engine(eng.path).run(None, {"x": x_batch})[0], want)


def test_a_failed_engine_write_is_a_write_error_not_a_build_error(tmp_path, tiny_onnx, monkeypatch):
    """ONNX Runtime writes the optimised graph itself and reports a failed write only as "Protobuf
    serialization failed". A real failed write: the engine's temp path is a link to /dev/full, where
    every write fails with ENOSPC (the link, not the device, is removed afterwards)."""
    from pathlib import Path

    from odelt import fileio
    from odelt.errors import WriteError

    if not Path("/dev/full").is_char_device():
        pytest.skip("needs Linux's /dev/full")

    def full_temp(path, suffix):
        link = path.parent / f".{path.name}.full{suffix}"
        link.symlink_to("/dev/full")
        return link

    monkeypatch.setattr(fileio.PRIMITIVES, "make_temp", full_temp)
    out = tmp_path / "eng" / "tiny.onnx"
    out.parent.mkdir()
    with pytest.raises(WriteError, match=r"cannot write .*eng/tiny.onnx: .*Protobuf serialization failed"):
        oe.engine_from_onnx(tiny_onnx, out, oe.OrtEngineOptions(fusions=False))
    assert list(out.parent.iterdir()) == [] and Path("/dev/full").is_char_device()


def test_engine_keeps_an_input_nothing_reads(tmp_path):
    """A graph with no live block has an x nothing reads; the fusion pass prunes such inputs, but
    the runtime binds every declared input by name, so the engine must keep it."""
    nodes = [helper.make_node("Relu", ["t"], ["velocity"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4]),
                                           helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, ["batch"])],
                              [helper.make_tensor_value_info("velocity", onnx.TensorProto.FLOAT, ["batch"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    src = tmp_path / "g.onnx"
    onnx.save(model, str(src))
    eng = oe.engine_from_onnx(src, tmp_path / "e" / "g.onnx", oe.OrtEngineOptions())
    assert [i.name for i in onnx.load(str(eng.path)).graph.input] == ["x", "t"]
    sess = oe.session_from_engine(eng.path)
    x, t = np.ones((2, 4), np.float32), np.array([-1.0, 2.0], np.float32)
    out = np.empty(2, np.float32)
    io = sess.io_binding()                                   # what the runtime does: bind by name
    io.bind_input("x", "cpu", 0, np.float32, [2, 4], x.ctypes.data)
    io.bind_input("t", "cpu", 0, np.float32, [2], t.ctypes.data)
    io.bind_output("velocity", "cpu", 0, np.float32, [2], out.ctypes.data)
    sess.run_with_iobinding(io)
    np.testing.assert_array_equal(out, [0.0, 2.0])
