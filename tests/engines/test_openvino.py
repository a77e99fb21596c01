"""OpenVINO engine sets, built and loaded for real on this machine's CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

pytest.importorskip("openvino", reason="OpenVINO (the `openvino` extra) is not installed")

from odelt.bundle.bundle import open_bundle  # noqa: E402
from odelt.engines import openvino as ove  # noqa: E402
from odelt.engines.build import BuildRequest, build_bundle  # noqa: E402
from odelt.errors import AccuracyError, BuildError, EngineMismatch  # noqa: E402
from tests.bundles import edit_by_hand  # noqa: E402
from tests.openvino_bundle import FAST, built_bundle, exported_bundle  # noqa: E402


@pytest.fixture(scope="module")
def ov_bundle(tmp_path_factory) -> Path:
    return built_bundle(tmp_path_factory)


def test_sets_recorded_with_version_device_and_isa(ov_bundle):
    manifest = open_bundle(ov_bundle, verify=True)          # every blob and record listed and hashed
    caps = ove.capabilities(ove.core(), "CPU")
    for precision in ("fp32", "bf16", "int8"):
        entry = manifest.engine_set(f"openvino-cpu-{precision}")
        assert entry["backend"] == "openvino" and entry["target"] == "CPU" and entry["precision"] == precision
        assert set(entry["graphs"]) == set(manifest.graphs)
        built = entry["built"]
        assert built["openvino_version"] == ove.ov_version() and built["cpu_isa"] == list(ove.cpu_isa())
        assert "avx2" in built["cpu_isa"] or "avx512f" in built["cpu_isa"] or not built["cpu_isa"]
        # what runs is recorded honestly: bf16 only where the CPU has a BF16 path
        want = "bf16" if precision == "bf16" and "BF16" in caps else "f32"
        assert built["inference_precision"] == want
        for rel in entry["graphs"].values():
            rec = ove.read_record(ov_bundle / rel)
            assert rec["precision"] == precision and rec["device"] == "CPU"
    assert "i8" in manifest.engine_set("openvino-cpu-int8")["built"]["runtime_precisions"]
    guard = manifest.engine_set("openvino-cpu-bf16")["built"]["guard"]
    assert guard["rounds"][-1]["passed"] and guard["rounds"][-1]["rmse_worst"] <= guard["max_rmse"]


def test_other_version_or_missing_isa_refused(ov_bundle, tmp_path):
    blob = tmp_path / "g.blob"
    rel = open_bundle(ov_bundle).engine_set("openvino-cpu-fp32")["graphs"]["head"]
    shutil.copy(ov_bundle / rel, blob)
    rec = json.loads((ov_bundle / (rel + ".json")).read_text())
    ove.record_path(blob).write_text(json.dumps(rec))
    assert ove.load_engine(blob, 1) is not None             # the copy as built loads
    for change, words in (({"openvino_version": "2025.0.0-1-old"}, "was built with OpenVINO 2025.0.0"),
                          ({"cpu_isa": [*rec["cpu_isa"], "amx_int8"]}, "amx_int8, which this CPU lacks")):
        if "amx_int8" in ove.cpu_isa() and "cpu_isa" in change:
            continue                                   # this CPU has AMX: nothing to lack
        ove.record_path(blob).write_text(json.dumps({**rec, **change}))
        with pytest.raises(EngineMismatch) as e:
            ove.load_engine(blob, 1)
        assert words in str(e.value) and "\n" not in str(e.value)


def test_absent_device_refused_in_one_line(tmp_path_factory, tmp_path, run_cli):
    root = tmp_path / "b"
    shutil.copytree(exported_bundle(tmp_path_factory), root)
    before = (root / "manifest.json").read_text()
    line = run_cli(["build", root, "--backend", "openvino", "--device", "GPU"]).error_line()
    assert "OpenVINO device GPU is not present" in line and "untested" in line
    assert (root / "manifest.json").read_text() == before and not (root / "engines").exists()
    assert "expected one of" in run_cli(["build", root, "--backend", "openvino", "--device", "TPU"]).error_line()


def test_rejected_graph_names_graph_and_node_and_leaves_nothing(tmp_path, tiny_bundle):
    bad = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"], name="fine"),
         helper.make_node("Mystery", ["a"], ["velocity"], name="odd_node", domain="com.example")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("velocity", TensorProto.FLOAT, ["batch", 16])])
    onnx.save(helper.make_model(bad, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]),
              tiny_bundle / "per-length" / "length_4.onnx")
    edit_by_hand(tiny_bundle, lambda data: None)            # re-record the replaced file's hash
    before = (tiny_bundle / "manifest.json").read_text()
    with pytest.raises(BuildError) as e:
        build_bundle(tiny_bundle, BuildRequest(backend="openvino"))
    msg = str(e.value)
    assert "graph length_4" in msg and "odd_node" in msg and "com.example.Mystery" in msg and "\n" not in msg
    assert (tiny_bundle / "manifest.json").read_text() == before
    assert not (tiny_bundle / "engines").exists() or not any((tiny_bundle / "engines").iterdir())


def test_existing_set_needs_force_and_int8_needs_variant(ov_bundle, tmp_path, tiny_bundle):
    root = tmp_path / "b"
    shutil.copytree(ov_bundle, root)
    with pytest.raises(BuildError, match="already exists; pass --force"):
        build_bundle(root, BuildRequest(backend="openvino"))
    assert build_bundle(root, BuildRequest(backend="openvino", force=True))["precision"] == "fp32"
    with pytest.raises(Exception, match="no int8 graphs.*quantize"):
        build_bundle(tiny_bundle, BuildRequest(backend="openvino", precision="int8"))


def test_cpu_flavour_int8_is_handled(tmp_path_factory, tmp_path):
    """The ONNX Runtime CPU flavour (uint8 activations, zero points) compiles too, and runs its graph
    as ONNX Runtime does (within INT8 rounding at the Q/DQ boundaries)."""
    from odelt.calibration.quantize import QuantizeOptions, quantize_bundle
    from odelt.onnxrt import open_session

    root = tmp_path / "cpu"
    shutil.copytree(exported_bundle(tmp_path_factory), root)
    shutil.rmtree(root / "int8")
    edit_by_hand(root, _drop_int8)
    quantize_bundle(root, QuantizeOptions("int8", flavour="cpu", **FAST))
    build_bundle(root, BuildRequest(backend="openvino", precision="int8"))
    manifest = open_bundle(root)
    graph = manifest.graph("length_4")
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 1, 8, 8)).astype(np.float32),
             "t": np.array([.2, .7], np.float32), "dt_base": np.array([2, 2], np.int32), "y": np.array([1, 3], np.int32)}
    feeds = {t.name: feeds[t.name] for t in graph.inputs}
    ref = open_session(manifest.graph_path("length_4", "int8")).run(None, feeds)[0]
    compiled = ove.load_engine(root / manifest.engine_set("openvino-cpu-int8")["graphs"]["length_4"])
    out = np.array(compiled(feeds)[0])
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()


def _drop_int8(data: dict) -> None:
    data["precisions"].pop("int8")
    data["files"] = {k: v for k, v in data["files"].items() if not k.startswith("int8/")}


def test_guard_falls_back_then_refuses_an_impossible_limit(tmp_path_factory, tmp_path):
    """With a limit no run can meet, the guard keeps more and more block linears in FP32 (1, 2, 4,
    ...) and ends with one AccuracyError line; no set is left behind."""
    from odelt.calibration.ov_guard import OvGuard

    root = tmp_path / "b"
    shutil.copytree(exported_bundle(tmp_path_factory), root)
    guard = OvGuard(open_bundle(root), "bf16", max_rmse=1e-30, schedules=("uniform:euler:2",), eval_samples=2)
    with pytest.raises(AccuracyError) as e:
        build_bundle(root, BuildRequest(backend="openvino", precision="bf16"), guard)
    assert "even with every block linear in FP32" in str(e.value) and "\n" not in str(e.value)
    kept = [r["fallback_layers"] for r in guard.rounds]
    assert kept[:4] == [0, 1, 2, 4] and kept == sorted(kept)
    assert not (root / "engines" / "openvino-cpu-bf16").exists()
    assert "engines" not in json.loads((root / "manifest.json").read_text())


def test_fp32_islands_marked_on_the_named_nodes(ov_bundle):
    model = ove.core().read_model(str(open_bundle(ov_bundle).graph_path("blocks_0-1")))
    names = [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"][:2]
    assert ove.mark_fp32(model, names) == 2
    flagged = [op.get_friendly_name() for op in model.get_ops() if ove.KEEP_FP32 in op.get_rt_info()]
    assert sorted(flagged) == sorted(names)
