"""Loading TensorRT-RTX plans on a machine without a GPU: every refusal that needs no GPU, on plans
the real builder wrote (conftest's rtx_built). Deserialising and running need a supported GPU and
are not tested here. Where a test needs a plan from another library version it edits the version
bytes of a real plan's header (no other TensorRT-RTX can be installed beside this one)."""

import shutil
import struct

import pytest

from odelt.engines import rtx
from odelt.engines.build import BuildRequest
from odelt.engines.platform import manifest_path
from odelt.engines.tensorrt import BuildConfig, shape_ranges_from
from odelt.errors import BackendUnavailable, EngineMismatch
from odelt.bundle.bundle import open_bundle
from odelt.runtime.backends import open_backend

from .conftest import RTX_OPT_LEVEL

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (the `rtx` extra) is not installed")


@pytest.fixture
def plan(rtx_built, tmp_path):
    """A copy of the real head plan and its record."""
    rel = open_bundle(rtx_built).engine_set("tensorrt-rtx-portable-fp32")["graphs"]["head"]
    src = rtx_built / rel
    dst = tmp_path / src.name
    shutil.copyfile(src, dst)
    shutil.copyfile(manifest_path(src), manifest_path(dst))
    return dst


def _one_line(excinfo):
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_truncated_plan_is_refused(plan):
    data = plan.read_bytes()
    plan.write_bytes(data[: len(data) // 2])
    with pytest.raises(EngineMismatch) as e:
        rtx.load_engine(plan, gpu_cc="8.6")
    assert "truncated" in _one_line(e) and f"declares {len(data)} bytes" in str(e.value)


def test_foreign_file_is_refused_by_us_and_by_the_library(plan, tiny_onnx):
    plan.write_bytes(tiny_onnx.read_bytes())
    with pytest.raises(EngineMismatch) as e:
        rtx.load_engine(plan, gpu_cc="8.6")
    assert "not a TensorRT-RTX plan" in _one_line(e)
    # TensorRT-RTX's own header check (real call) flags it too, even without a GPU
    with pytest.raises(EngineMismatch) as e:
        rtx.library_validity(trt, tiny_onnx.read_bytes(), "tiny.onnx")
    assert "MALFORMED_ENGINE" in _one_line(e)


def test_plan_from_another_library_version_is_refused(plan):
    data = bytearray(plan.read_bytes())
    struct.pack_into("4B", data, 0x18, 1, 6, 1, 120)        # as TensorRT-RTX 1.6.1.120 writes it
    plan.write_bytes(bytes(data))
    with pytest.raises(EngineMismatch) as e:
        rtx.load_engine(plan, gpu_cc="8.6")
    assert f"built with TensorRT-RTX 1.6.1.120, this machine has {trt.__version__}" in _one_line(e)


def test_record_that_disagrees_with_the_header_is_refused(plan):
    data = bytearray(plan.read_bytes())
    data[0x20] = 0x04                                         # header says sm86 only, record says portable
    plan.write_bytes(bytes(data))
    with pytest.raises(EngineMismatch, match="do not match its record"):
        rtx.load_engine(plan, gpu_cc="8.6")


@pytest.mark.parametrize("cc, hint", [("8.7", "no target for it: use `--backend tensorrt`"),
                                      ("9.0", "no target for it: use `--backend tensorrt`"),
                                      ("7.5", "--target sm75")])
def test_gpu_outside_the_plans_targets_is_refused(plan, cc, hint):
    with pytest.raises(EngineMismatch) as e:
        rtx.load_engine(plan, gpu_cc=cc)
    assert f"this GPU is sm{cc.replace('.', '')}" in _one_line(e) and hint in str(e.value)


def test_single_target_plan_is_refused_on_another_rtx_gpu(rtx_built, tmp_path):
    m = open_bundle(rtx_built)
    bc = BuildConfig(shape_ranges=shape_ranges_from(m.graph("head").shape_ranges(m.batch)), optimization_level=RTX_OPT_LEVEL,
                     library=rtx.LIBRARY, compute_capabilities=("SM120",))
    out = tmp_path / "head.plan"
    rtx.engine_from_onnx(m.graph_path("head"), bc, out)
    with pytest.raises(EngineMismatch, match=r"built for sm120; this GPU is sm89: rebuild with .*--target sm89"):
        rtx.load_engine(out, gpu_cc="8.9")


def test_a_good_plan_stops_at_the_missing_gpu_with_one_line(plan):
    with pytest.raises(BackendUnavailable) as e:
        rtx.load_engine(plan)                                 # this machine: no GPU, no driver
    assert "TensorRT-RTX engines run only on an NVIDIA GPU" in _one_line(e)
    # a GPU it supports would pass our checks; then the library's own check needs the GPU itself
    with pytest.raises(BackendUnavailable) as e:
        rtx.load_engine(plan, gpu_cc="8.6")
    assert "TensorRT-RTX cannot check engine" in _one_line(e)


def test_runtime_backend_opens_rtx_sets_and_stops_without_a_gpu(rtx_built):
    m = open_bundle(rtx_built)
    backend = open_backend("tensorrt", m, precision="fp32")
    assert backend.engine_entry()["backend"] == "tensorrt-rtx"
    with pytest.raises(BackendUnavailable) as e:
        with backend:
            pass
    assert "TensorRT-RTX engines run only on an NVIDIA GPU" in _one_line(e)
    assert BuildRequest(backend="tensorrt-rtx").set_name in m.engine_sets


@pytest.mark.gpu
def test_rtx_engines_on_this_gpu_run_like_onnx_runtime_or_are_refused_in_one_line(rtx_built):
    """On an NVIDIA GPU (`pytest -m gpu`; skipped without one). A GPU TensorRT-RTX targets (sm75-sm121
    consumer and workstation parts) runs the portable engines like ONNX Runtime; any other (a
    data-centre H100/H200, sm90, is no target) is refused with one line naming the GPU when the
    engines are loaded. Not yet run on a GPU: the CI machine has none."""
    import numpy as np

    try:
        cc = rtx.this_gpu()
    except BackendUnavailable as e:
        pytest.skip(str(e))
    m = open_bundle(rtx_built)
    if cc not in {c.cc for c in rtx.COMPUTE.values()}:
        entry = m.engine_sets[BuildRequest(backend="tensorrt-rtx").set_name]
        plan = rtx_built / next(iter(entry["graphs"].values()))
        with pytest.raises(EngineMismatch) as e:
            rtx.load_engine(plan)                       # the GPU read from the driver, not passed in
        assert f"this GPU is sm{cc.replace('.', '')}" in _one_line(e) and "no target for it" in str(e.value)
        return
    pytest.importorskip("cuda", reason="the TensorRT backend needs cuda-python")
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((2, 1, 8, 8)).astype(np.float32), "t": np.array([0.2, 0.7], np.float32),
             "dt_base": np.full(2, 3, np.int32), "y": np.array([1, 2], np.int32), "l": np.full(2, 2, np.int32)}
    for layout in m.layouts:
        with open_backend("ort", m, layout=layout) as ref, open_backend("tensorrt", m, layout=layout) as eng:
            want = np.array(ref.infer(feeds)["velocity"])
            got = np.array(eng.infer(feeds)["velocity"])
        assert np.abs(want).max() > 0
        np.testing.assert_allclose(got, want, atol=2e-3, rtol=0)   # TF32 is on by default in TensorRT-RTX
