"""Precision variants of a latent bundle: the FP16 decoder (GroupNorm statistics and the attention
softmax in FP32), its accuracy and activation report, and which decoder each variant keeps."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from odelt.calibration.decoder import activation_maxima, build_decoders, decoder_precision, fp16_decoder
from odelt.calibration.fp16 import node_dtypes
from odelt.calibration.quantize import QuantizeOptions, quantize_bundle
from odelt.bundle.bundle import open_bundle
from tests.bundles import private_copy
from tests.calibration.conftest import FAST
from tests.latent.vae_files import export_latent_bundle


@pytest.fixture(scope="module")
def latent_fp32(tmp_path_factory):
    return export_latent_bundle(tmp_path_factory.mktemp("latent")).root


@pytest.fixture
def latent(latent_fp32, tmp_path):
    return private_copy(latent_fp32, tmp_path / "bundle")


def test_precision_rules():
    assert decoder_precision("fp16", None) == "fp16"
    assert decoder_precision("int8", "trt") == "fp16"
    assert decoder_precision("int8", "cpu") == "fp32"


def test_fp16_decoder_keeps_norm_statistics_and_softmax_fp32(latent_fp32):
    model = onnx.load(str(open_bundle(latent_fp32).graph_path("decoder_sd")))
    half, report = fp16_decoder(model)
    types = node_dtypes(half)
    by_op: dict[str, set[int]] = {}
    for node in half.graph.node:
        by_op.setdefault(node.op_type, set()).add(types[node.name])
    assert by_op["InstanceNormalization"] == {TensorProto.FLOAT} and by_op["Softmax"] == {TensorProto.FLOAT}
    assert by_op["Conv"] == {TensorProto.FLOAT16}                 # the convolutions are FP16
    assert report["fp32_nodes"]["Softmax"] == 1 and report["fp32_nodes"]["InstanceNormalization"] >= 10
    assert [i.elem_type for i in (half.graph.input[0].type.tensor_type, half.graph.output[0].type.tensor_type)] == \
        [TensorProto.FLOAT, TensorProto.FLOAT]                    # IO stays FP32


def test_activation_maxima_are_exact_on_a_small_graph():
    """latent -> Mul(3) -> Relu -> Add(-1) = image: maxima 3*max|x|, 3*max(x, 0), |3*max(x,0) - 1|."""
    g = helper.make_graph(
        [helper.make_node("Mul", ["latent", "three"], ["m"], name="mul"),
         helper.make_node("Relu", ["m"], ["r"], name="relu"),
         helper.make_node("Add", ["r", "minus1"], ["image"], name="add")], "g",
        [helper.make_tensor_value_info("latent", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor("three", TensorProto.FLOAT, [], [3.0]), helper.make_tensor("minus1", TensorProto.FLOAT, [], [-1.0])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.array([[-5.0, 1.0], [0.5, -0.25]], np.float32)
    assert activation_maxima(model, x) == pytest.approx({"mul": 15.0, "relu": 3.0, "add": 2.0})


def test_fp16_variant_holds_an_accurate_fp16_decoder(latent):
    report = quantize_bundle(latent, QuantizeOptions("fp16", **FAST))
    b = open_bundle(latent)
    for name in ("decoder_sd", "decoder_taesd"):
        d = report["decoders"][name]
        assert d["precision"] == "fp16" and 0 < d["accuracy"]["rmse"] <= d["limit_rmse"] == 0.01
        assert d["accuracy"]["finite"] and d["accuracy"]["psnr_db"] > 40
        assert d["activations"]["max"] > 0 and d["activations"]["over_fp16"] == []
        path = b.graph_path(name, "fp16")
        assert path.parts[-3:] == ("fp16", "decoder", f"{name}.onnx")
        assert any(i.data_type == TensorProto.FLOAT16 for i in onnx.load(str(path)).graph.initializer)
    assert b.variant("fp16")["graphs"]["decoder_sd"]["changed"]
    # recorded once in the variant entry, read through the bundle
    assert b.variant("fp16")["decoder_precisions"] == {"decoder_sd": "fp16", "decoder_taesd": "fp16"}
    assert [b.decoder_dtype(k, "fp16") for k in ("sd", "taesd")] == ["fp16", "fp16"]


@pytest.mark.parametrize("flavour,kept", [("trt", "fp16"), ("cpu", "fp32")])
def test_int8_variant_never_quantises_the_decoder(latent, flavour, kept):
    report = quantize_bundle(latent, QuantizeOptions("int8", flavour=flavour, **FAST))
    b = open_bundle(latent)
    path = b.graph_path("decoder_sd", "int8")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear"}
    assert report["decoders"]["decoder_sd"]["precision"] == kept
    assert (path == b.graph_path("decoder_sd")) == (kept == "fp32")   # fp32: the FP32 file is shared
    assert b.variant("int8")["decoder_precisions"]["decoder_sd"] == kept == b.decoder_dtype("sd", "int8")


def test_an_fp16_decoder_that_misses_the_limit_is_not_used(latent_fp32):
    latents = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    changed, report = build_decoders(open_bundle(latent_fp32), "fp16", None, latents, max_rmse=1e-12)
    assert changed == {}
    assert report["decoder_sd"]["precision"] == "fp32" and "keeps the FP32 decoder" in report["decoder_sd"]["note"]
