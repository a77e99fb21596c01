"""Engine sets of a latent bundle hold its decoder graph like every other graph: ONNX Runtime
engines (which the runtime's decoder opens) and REAL TensorRT-RTX plans (no GPU needed to build),
FP32 and FP16 (the FP16 decoder variant)."""

from __future__ import annotations

import numpy as np
import pytest

from odelt.engines.build import BuildRequest, build_bundle
from odelt.bundle.bundle import open_bundle
from odelt.runtime.backends.decoder import open_decoder
from tests.bundles import private_copy
from tests.latent.vae_files import export_latent_bundle

from .conftest import RTX_OPT_LEVEL

FAST = dict(calib_samples=2, eval_samples=2, schedules=("uniform:euler:2",))


@pytest.fixture(scope="module")
def latent_fp16(tmp_path_factory):
    """A tiny latent DiT with an SD decoder stage and its FP16 variant. Read-only."""
    from odelt.calibration.quantize import QuantizeOptions, quantize_bundle

    b = export_latent_bundle(tmp_path_factory.mktemp("dec-engines"), kinds=("sd",), dit_config="tiny-latent")
    quantize_bundle(b.root, QuantizeOptions("fp16", **FAST))
    return b.root


@pytest.fixture
def bundle(latent_fp16, tmp_path):
    return private_copy(latent_fp16, tmp_path / "bundle")


def test_ort_sets_include_the_decoder_and_the_runtime_opens_them(bundle):
    z = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    plain = {}
    for precision in ("fp32", "fp16"):
        with open_decoder(open_bundle(bundle), "sd", precision) as dec:
            assert not dec.engine
            plain[precision] = dec.decode(z)
    for precision in ("fp32", "fp16"):
        entry = build_bundle(bundle, BuildRequest(backend="ort", precision=precision))
        assert "decoder_sd" in entry["graphs"] and set(entry["graphs"]) == set(open_bundle(bundle).graphs)
        with open_decoder(open_bundle(bundle), "sd", precision) as dec:
            assert dec.engine and dec.path == bundle / entry["graphs"]["decoder_sd"]
            np.testing.assert_allclose(dec.decode(z), plain[precision], atol=1e-5)
    assert 0 < np.abs(plain["fp16"] - plain["fp32"]).max() < 0.05      # the FP16 engine really is FP16


def test_tensorrt_rtx_sets_include_the_decoder(bundle):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (the `rtx` extra) is not installed")
    from odelt.engines import rtx
    from odelt.engines.graph import graph_digest

    m = open_bundle(bundle)
    weights = {}
    for precision in ("fp32", "fp16"):
        entry = build_bundle(bundle, BuildRequest(backend="tensorrt-rtx", precision=precision,
                                                  optimization_level=RTX_OPT_LEVEL))
        assert set(entry["graphs"]) == set(m.graphs) and "decoder_sd" in entry["graphs"]
        plan = bundle / entry["graphs"]["decoder_sd"]
        record = rtx.RtxRecord.read(plan)
        assert record.graph_sha256 == graph_digest(m.graph_path("decoder_sd", precision))
        assert rtx.read_header(plan.read_bytes(), "decoder_sd").size == plan.stat().st_size
        weights[precision] = entry["built"]["graphs"]["decoder_sd"]["weights_bytes"]
    assert weights["fp16"] < 0.6 * weights["fp32"], weights                    # FP16 convolution weights
