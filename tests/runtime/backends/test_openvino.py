"""The OpenVINO runtime backend on real engines: the same samples as ONNX Runtime from the same
noise (tolerances by precision), buffers bound once, the decoder stage, one-line errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("openvino", reason="OpenVINO (the `openvino` extra) is not installed")

from odelt.bundle.bundle import open_bundle  # noqa: E402
from odelt.engines import openvino as ove  # noqa: E402
from odelt.errors import BackendUnavailable  # noqa: E402
from odelt.runtime.backends import open_backend  # noqa: E402
from odelt.runtime.generate import GenerateOptions, generate_from_bundle  # noqa: E402
from tests.openvino_bundle import built_bundle  # noqa: E402

RUN = dict(schedule="uniform:euler:4", n=5, batch=3, threads=1, seed=3)


@pytest.fixture(scope="module")
def ov_bundle(tmp_path_factory):
    return built_bundle(tmp_path_factory)


def _bf16_real() -> bool:
    return "BF16" in ove.capabilities(ove.core(), "CPU")


# max abs difference of final samples (data in about [-1, 1]) vs ONNX Runtime on the same graphs:
# fp32 is the same arithmetic up to kernel order; bf16 (where the CPU runs it) keeps 8 mantissa bits;
# int8 runs the same Q/DQ graph, with rounding at the Q/DQ boundaries that differs between the two.
TOL = {"fp32": 1e-4, "bf16": 0.1 if _bf16_real() else 1e-4, "int8": 0.1}


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("layout", ["segments", "per-length"])
def test_samples_match_onnx_runtime(ov_bundle, precision, layout):
    ref_precision = "fp32" if precision == "bf16" else precision
    ref = generate_from_bundle(ov_bundle, GenerateOptions(**RUN, layout=layout, precision=ref_precision))
    ov = generate_from_bundle(ov_bundle, GenerateOptions(**RUN, layout=layout, precision=precision, backend="openvino"))
    assert ov.images.shape == ref.images.shape == (5, 1, 8, 8) and np.isfinite(ov.images).all()
    assert np.abs(ov.images - ref.images).max() <= TOL[precision]
    assert np.abs(ref.images).max() > 0.1                 # a real signal, not zeros on both sides


def test_host_guidance_and_mixed_lengths(ov_bundle):
    opts = dict(RUN, schedule="uniform:euler:4", guidance_scale=2.0, length=2)
    ref = generate_from_bundle(ov_bundle, GenerateOptions(**opts))
    ov = generate_from_bundle(ov_bundle, GenerateOptions(**opts, backend="openvino"))
    assert ref.stats.calls == ov.stats.calls and np.abs(ov.images - ref.images).max() <= 1e-4


def test_buffers_bound_once(ov_bundle):
    manifest = open_bundle(ov_bundle)
    rng = np.random.default_rng(0)
    with open_backend("openvino", manifest, threads=1) as be:
        outs, sizes = [], []
        for length in (2, 4, 2):
            feeds = {"x": rng.standard_normal((2, 1, 8, 8)).astype(np.float32), "t": np.full(2, .5, np.float32),
                     "dt_base": np.full(2, 2, np.int32), "y": np.array([1, 2], np.int32), "l": np.full(2, length, np.int32)}
            outs.append(be.infer(feeds)["velocity"])
            sizes.append(be.buffer_bytes())
        assert outs[0] is outs[1] is outs[2] and sizes[0] == sizes[2] > 0     # one arena, reused
        plan, bufs, _ = be._buffers(2)
        req = be.requests["head"]
        # OpenVINO reads and writes the arena in place: the request's tensors are the buffers
        assert np.shares_memory(req.get_tensor("velocity").data, bufs["velocity"])
        assert np.shares_memory(req.get_tensor("V").data, bufs[plan.binds[(2, "head")][0]["V"]])   # bound for the last call (l=2)


def test_missing_set_is_one_line(tmp_path, run_cli, ov_bundle):
    root = tmp_path / "b"
    shutil.copytree(ov_bundle, root)
    with pytest.raises(BackendUnavailable, match="no fp16 OpenVINO engines; run `odelt-export build BUNDLE "
                                                 "--backend openvino --precision fp16`"):
        with open_backend("openvino", open_bundle(root), precision="fp16"):
            pass
    line = run_cli(["generate", root, "--backend", "openvino", "--precision", "fp16", "-n", "1",
                    "--out", tmp_path / "o.png"]).error_line()
    assert "no fp16 OpenVINO engines" in line


def test_decoder_stage_runs_in_openvino(tmp_path):
    from odelt.engines.build import BuildRequest, build_bundle
    from tests.latent.vae_files import export_latent_bundle

    bundle = export_latent_bundle(tmp_path / "latent")
    build_bundle(bundle.root, BuildRequest(backend="openvino"))
    opts = dict(schedule="uniform:euler:2", n=3, batch=2, threads=1)
    ref = generate_from_bundle(bundle.root, GenerateOptions(**opts))
    ov = generate_from_bundle(bundle.root, GenerateOptions(**opts, backend="openvino"))
    assert ov.images.shape == ref.images.shape == (3, 3, 16, 16)
    assert np.abs(ov.images - ref.images).max() <= 1e-3 and ov.decoded.seconds > 0
    from odelt.runtime.backends.decoder import open_decoder

    assert type(open_decoder(open_bundle(bundle.root), backend="openvino")).__name__ == "OvDecoder"
