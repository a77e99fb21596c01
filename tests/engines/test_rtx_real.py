"""REAL TensorRT-RTX builds (no fake): `odelt-export build --backend tensorrt-rtx` on a tiny exported
DiT, both layouts, FP32 / FP16 / INT8 (trt flavour), and the ways a build must fail. TensorRT-RTX's
builder needs no GPU; these tests skip only where the `tensorrt_rtx` package is not installed."""

import json
import shutil

import onnx
import pytest

from odelt.cli import main
from odelt.engines import rtx
from odelt.engines.graph import graph_digest
from odelt.engines.rtx_targets import DEFAULT_MASK, RTX_TARGETS
from odelt.bundle.bundle import open_bundle
from tests.bundles import edit_by_hand, private_copy

from .conftest import RTX_OPT_LEVEL
from .test_build_cli import _run, _snapshot

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (the `rtx` extra) is not installed")
LEVEL = ["--opt-level", str(RTX_OPT_LEVEL)]
pytestmark = pytest.mark.integration        # real TensorRT-RTX builds


@pytest.fixture
def bundle(rtx_variants, tmp_path):
    return private_copy(rtx_variants, tmp_path / "bundle")


@pytest.fixture
def built(rtx_built, tmp_path):
    return private_copy(rtx_built, tmp_path / "built")


def _entry(root, name):
    return open_bundle(root).engine_set(name)


def test_fp32_set_covers_every_graph_of_both_layouts(rtx_built):
    m = open_bundle(rtx_built)
    entry = m.engine_set("tensorrt-rtx-portable-fp32")
    assert entry["backend"] == "tensorrt-rtx" and entry["target"] == "portable"
    assert set(entry["graphs"]) == set(m.graphs) == {"cond", "blocks_0-1", "head", "length_2"}
    built = entry["built"]
    assert built["library_version"] == trt.__version__
    for name, rel in entry["graphs"].items():
        data = (rtx_built / rel).read_bytes()
        header = rtx.read_header(data, name)
        # the undocumented header layout we rely on, checked against the real library
        assert header.size == len(data) and header.version_str == trt.__version__ and header.mask == DEFAULT_MASK
        facts = built["graphs"][name]
        assert facts["plan_bytes"] == len(data) and facts["build_s"] > 0
        # FP32 weights are stored as they are: the builder's weight bytes match the ONNX initializers
        onnx_weights = sum(facts["initializer_bytes"].values())
        assert onnx_weights <= facts["weights_bytes"] <= 1.05 * onnx_weights + 4096, (name, facts)
    assert built["plan_bytes_total"] == sum(g["plan_bytes"] for g in built["graphs"].values())


def test_second_identical_build_is_a_no_op_and_force_rebuilds(built, capsys):
    before = _snapshot(built)
    main(["build", str(built), "--backend", "tensorrt-rtx", *LEVEL])
    assert "up to date" in capsys.readouterr().out
    assert _snapshot(built) == before                       # not a byte written
    old = _entry(built, "tensorrt-rtx-portable-fp32")["built"]["graphs"]
    main(["build", str(built), "--backend", "tensorrt-rtx", "--force", *LEVEL])
    new = _entry(built, "tensorrt-rtx-portable-fp32")["built"]["graphs"]
    assert not any(g["reused"] for g in new.values())
    # the key is made of inputs, so a rebuild has the same keys whatever bytes the builder wrote
    assert {n: g["cache_key"] for n, g in new.items()} == {n: g["cache_key"] for n, g in old.items()}


def test_changed_input_rebuilds_only_what_changed(built):
    main(["build", str(built), "--backend", "tensorrt-rtx", "--opt-level", "1"])   # an option in the key
    graphs = _entry(built, "tensorrt-rtx-portable-fp32")["built"]["graphs"]
    assert not any(g["reused"] for g in graphs.values())
    head = open_bundle(built).graph_path("head")
    model = onnx.load(str(head))
    model.doc_string = "edited"                                # same graph, new bytes: a new hash
    onnx.save(model, str(head))
    edit_by_hand(built, lambda data: None)                     # re-record its hash
    main(["build", str(built), "--backend", "tensorrt-rtx", "--opt-level", "1"])
    graphs = _entry(built, "tensorrt-rtx-portable-fp32")["built"]["graphs"]
    assert {n for n, g in graphs.items() if not g["reused"]} == {"head"}


def test_fp16_and_int8_store_smaller_weights(built):
    for precision in ("fp16", "int8"):
        main(["build", str(built), "--backend", "tensorrt-rtx", "--precision", precision, *LEVEL])
    m = open_bundle(built)
    sets = {p: m.engine_set(f"tensorrt-rtx-portable-{p}")["built"] for p in ("fp32", "fp16", "int8")}
    weights = {p: s["weights_bytes_total"] for p, s in sets.items()}
    assert weights["fp16"] < weights["fp32"] and weights["int8"] < weights["fp32"], weights
    blocks = {p: s["graphs"]["blocks_0-1"]["weights_bytes"] for p, s in sets.items()}
    assert blocks["fp16"] < 0.6 * blocks["fp32"] and blocks["int8"] < 0.5 * blocks["fp32"], blocks
    stated = sets["int8"]["int8"]
    assert stated["weights_stored"] == "int8 (quantized)" and stated["onnx_int8_initializer_bytes"] > 0
    assert "weight-only" in stated["activation_qdq"]
    # every graph of the variant was built from the variant's file, not the FP32 one
    records = {name: rtx.RtxRecord.read(built / rel)
               for name, rel in m.engine_set("tensorrt-rtx-portable-int8")["graphs"].items()}
    for name, record in records.items():
        assert record.graph_sha256 == graph_digest(m.graph_path(name, "int8"))
    assert records["blocks_0-1"].precision == records["length_2"].precision == "int8"


def test_targets_are_data_and_land_in_the_header(bundle, capsys):
    main(["build", str(bundle), "--backend", "tensorrt-rtx", "--target", "sm86", "--target", "sm89", *LEVEL])
    entry = _entry(bundle, "tensorrt-rtx-sm86+sm89-fp32")
    assert entry["built"]["compute_capabilities"] == ["8.6", "8.9"]
    for rel in entry["graphs"].values():
        data = (bundle / rel).read_bytes()
        assert rtx.read_header(data, rel).targets() == ("8.6", "8.9")
    assert set(RTX_TARGETS) == {"portable", "sm75", "sm80", "sm86", "sm89", "sm120", "sm121"}
    assert {m.name for m in trt.ComputeCapability.__members__.values()} >= {
        t.capabilities[0] for t in RTX_TARGETS.values() if t.capabilities}


@pytest.mark.parametrize("target, says", [("sm87", "Jetson Orin"), ("orin-nano", "Jetson Orin"),
                                          ("sm90", "Hopper"), ("thor", "Jetson Thor")])
def test_gpus_without_a_rtx_target_point_to_the_tensorrt_backend(bundle, capsys, target, says):
    before = _snapshot(bundle)
    err = _run(["build", str(bundle), "--backend", "tensorrt-rtx", "--target", target], capsys)
    assert f"TensorRT-RTX has no target for {says}" in err and "--backend tensorrt" in err
    assert _snapshot(bundle) == before


def test_cpu_flavour_int8_is_refused_up_front(bundle, capsys):
    # as a cpu-flavour quantize records it
    edit_by_hand(bundle, lambda data: data["precisions"]["int8"].update(flavour="cpu"))
    before = _snapshot(bundle)
    err = _run(["build", str(bundle), "--backend", "tensorrt-rtx", "--precision", "int8"], capsys)
    assert "CPU flavour" in err and "TensorRT-RTX cannot build" in err and "--int8-flavour trt" in err
    assert _snapshot(bundle) == before


def test_a_graph_the_parser_refuses_is_one_line_and_leaves_no_half_set(built, capsys):
    """A uint8 / non-zero-zero-point Q/DQ graph (what the cpu flavour writes) in place of `head`."""
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    nodes = [helper.make_node("QuantizeLinear", ["V", "s", "z"], ["q"], name="head_q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["velocity"], name="head_dq")]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("V", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("velocity", TensorProto.FLOAT, ["batch", 16])],
                              [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                               numpy_helper.from_array(np.array(128, np.uint8), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(open_bundle(built).graph_path("head")))
    edit_by_hand(built, lambda data: None)                     # re-record its hash
    before = _snapshot(built)
    err = _run(["build", str(built), "--backend", "tensorrt-rtx", "--force", *LEVEL], capsys)
    assert "could not parse head.onnx: node head_q (QuantizeLinear)" in err and "zero point" in err
    assert _snapshot(built) == before                       # the old set stays whole, nothing half-written
    assert not [p for p in (built / "engines").iterdir() if p.name.startswith(".")]


def test_precision_without_its_variant_is_refused(rtx_variants, tmp_path, capsys):
    root = tmp_path / "fp32-only"
    shutil.copytree(rtx_variants, root)
    edit_by_hand(root, lambda data: data.pop("precisions"))
    err = _run(["build", str(root), "--backend", "tensorrt-rtx", "--precision", "fp16"], capsys)
    assert "no fp16 graphs" in err and "strongly typed" in err
    assert json.loads((root / "manifest.json").read_text()).get("engines") is None


def test_build_sets_reports_each_precision_for_the_demo(built):
    from odelt.pipeline.rtx_stage import build_sets

    report = build_sets(built, ("fp32", "int8"), optimization_level=RTX_OPT_LEVEL)
    assert report["fp32"]["up_to_date"] and not report["int8"]["up_to_date"]   # fp32 was built by the fixture
    assert report["int8"]["set"] == "tensorrt-rtx-portable-int8"
    assert report["int8"]["plan_bytes_total"] == sum(
        (built / rel).stat().st_size for rel in _entry(built, "tensorrt-rtx-portable-int8")["graphs"].values())
    assert set(report["int8"]["build_s"]) == {"cond", "blocks_0-1", "head", "length_2"}
