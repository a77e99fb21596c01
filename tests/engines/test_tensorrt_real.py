"""Needs a real TensorRT and an NVIDIA GPU (`pytest -m gpu` selects these); skipped cleanly elsewhere
(always, on our CI)."""

import pytest

from odelt.engines import tensorrt as te
from odelt.errors import BackendUnavailable

pytestmark = pytest.mark.gpu


def _real_tensorrt():
    trt = pytest.importorskip("tensorrt")
    try:
        te.require_tensorrt()   # the stub wheel's empty namespace package is not TensorRT
    except BackendUnavailable as e:
        pytest.skip(str(e))
    return trt


def test_build_and_load_tiny_engine(tmp_path, tiny_onnx):
    _real_tensorrt()
    bc = te.BuildConfig(shape_ranges=te.shape_ranges_from({"x": ((1, 16), (2, 16), (8, 16))}),
                        timing_cache=str(tmp_path / "timing.cache"))
    res = te.engine_from_onnx(tiny_onnx, bc, tmp_path / "tiny.plan", cache_dir=tmp_path / "cache")
    loaded = te.load_engine(res.path)
    assert loaded.engine.num_io_tensors == 2
    assert (tmp_path / "timing.cache").stat().st_size > 0
    again = te.engine_from_onnx(tiny_onnx, bc, tmp_path / "again.plan", cache_dir=tmp_path / "cache")
    assert again.from_cache
    assert again.path.read_bytes() == res.path.read_bytes()
