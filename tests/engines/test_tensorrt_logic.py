"""Our TensorRT-facing logic, run against a FAKE tensorrt module (tests/engines/fake_tensorrt.py).
These tests do not count as testing TensorRT: they check which flags, profiles, caches and
refusals OUR code produces per TensorRT version. The real-TensorRT test is test_tensorrt_real.py."""

import dataclasses
import sys
import types

import pytest

from odelt.engines import tensorrt as te
from odelt.engines.platform import Platform
from odelt.errors import EngineMismatch
from odelt.errors import BackendUnavailable, BuildError, ConfigError

from .conftest import export_tiny
from .fake_tensorrt import make_fake_tensorrt


@pytest.fixture
def fake_trt(monkeypatch):
    def install(version, **kw):
        fake = make_fake_tensorrt(version, **kw)
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        here = Platform(version, "FakeGPU", "8.7", None, None)
        monkeypatch.setattr(te, "current_platform", lambda v: dataclasses.replace(here, trt_version=v))
        return fake
    return install


def test_missing_tensorrt_is_backend_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)          # import fails
    with pytest.raises(BackendUnavailable, match=r"`tensorrt`.*odelt-export\[trt\]"):
        te.require_tensorrt()
    # what `pip install tensorrt-stubs` leaves behind: an empty namespace package
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    with pytest.raises(BackendUnavailable, match="only type stubs"):
        te.require_tensorrt()


def _build(tmp_path, bc, onnx_path, **kw):
    return te.engine_from_onnx(onnx_path, bc, tmp_path / "e.plan", **kw)


def test_trt10_strongly_typed_no_precision_flags(tmp_path, tiny_onnx, fake_trt):
    fake = fake_trt("10.13.3.9")
    bc = te.BuildConfig(shape_ranges=te.shape_ranges_from({"x": ((1, 16), (2, 16), (8, 16))}),
                        optimization_level=4, target="orin-nano")
    res = _build(tmp_path, bc, tiny_onnx)
    net, cfg = fake.fake_log["networks"][0], fake.fake_log["configs"][0]
    assert net.flags == 1 << 1                         # STRONGLY_TYPED only
    assert cfg.flags == [] and cfg.builder_optimization_level == 4
    assert cfg.pools == {fake.MemoryPoolType.WORKSPACE: 1 << 30}   # orin-nano cap
    assert cfg.shape_ranges[0].shapes == {"x": ((1, 16), (2, 16), (8, 16))}
    assert res.path.read_bytes().startswith(b"PLAN:") and not res.from_cache
    assert te.read_manifest(res.path).platform.trt_version == "10.13.3.9"


def test_trt10_refuses_precision_the_graph_does_not_hold(tmp_path, tiny_onnx, fake_trt):
    fake_trt("10.3.0")
    with pytest.raises(ConfigError, match="strongly typed.*quantize --precision fp16"):
        _build(tmp_path, te.BuildConfig(precision="fp16"), tiny_onnx)
    assert not (tmp_path / "e.plan").exists()


def test_trt8_uses_builder_flags(tmp_path, tiny_onnx, fake_trt):
    fake = fake_trt("8.6.2")
    _build(tmp_path, te.BuildConfig(precision="fp16", target="orin-nx"), tiny_onnx)
    assert fake.fake_log["networks"][0].flags == 1 << 0   # EXPLICIT_BATCH
    assert fake.fake_log["configs"][0].flags == ["FP16"]


def test_trt11_no_creation_flags_and_never_touches_removed_flags(tmp_path, tiny_onnx, fake_trt):
    fake = fake_trt("11.1.0")                           # fake has no BuilderFlag.FP16/INT8
    _build(tmp_path, te.BuildConfig(), tiny_onnx)
    assert fake.fake_log["networks"][0].flags == 0 and fake.fake_log["configs"][0].flags == []


def test_engine_cache_and_timing_cache(tmp_path, tiny_onnx, fake_trt):
    fake = fake_trt("10.16.0")
    timing = tmp_path / "timing.cache"
    bc = te.BuildConfig(timing_cache=str(timing))
    first = te.engine_from_onnx(tiny_onnx, bc, tmp_path / "a.plan", cache_dir=tmp_path / "c")
    assert timing.read_bytes() == b"+timed"             # saved after the build
    second = te.engine_from_onnx(tiny_onnx, bc, tmp_path / "b.plan", cache_dir=tmp_path / "c")
    assert second.from_cache and fake.fake_log["builds"] == 1
    assert second.path.read_bytes() == first.path.read_bytes()
    forced = te.engine_from_onnx(tiny_onnx, bc, tmp_path / "b.plan", cache_dir=tmp_path / "c", force=True)
    assert not forced.from_cache and fake.fake_log["builds"] == 2
    other = te.engine_from_onnx(tiny_onnx, dataclasses.replace(bc, optimization_level=5),
                                tmp_path / "d.plan", cache_dir=tmp_path / "c")
    assert not other.from_cache and other.manifest.cache_key != first.manifest.cache_key


def test_dla_only_for_convolutions_and_only_where_available(tmp_path, tiny_onnx, fake_trt):
    fake = fake_trt("10.3.0")
    _build(tmp_path, te.BuildConfig(target="agx-orin", use_dla=True, dla_core=1), tiny_onnx)
    cfg = fake.fake_log["configs"][0]
    assert cfg.devices == {"CONVOLUTION": "DLA"} and cfg.DLA_core == 1   # MatMul stays on GPU
    with pytest.raises(ConfigError, match="no DLA"):
        _build(tmp_path, te.BuildConfig(target="orin-nano", use_dla=True), tiny_onnx)


def test_target_version_and_opset_checks(tmp_path, tiny_onnx, fake_trt):
    fake_trt("11.4.1")
    with pytest.raises(ConfigError, match="orin-nano runs TensorRT 8.5 to 10.16"):
        _build(tmp_path, te.BuildConfig(target="orin-nano"), tiny_onnx)
    fake_trt("8.5.2")                                   # JetPack 5: opset 17 graph refused
    with pytest.raises(BuildError, match="opset 17.*opset <= 16"):
        _build(tmp_path, te.BuildConfig(target="orin-nano"), tiny_onnx)
    g16 = export_tiny(tmp_path / "g16.onnx", opset=16)
    assert _build(tmp_path, te.BuildConfig(target="orin-nano"), g16).path.is_file()


def test_load_refuses_other_tensorrt_or_gpu(tmp_path, tiny_onnx, fake_trt):
    fake = fake_trt("10.3.0")
    res = _build(tmp_path, te.BuildConfig(target="orin-nano"), tiny_onnx)
    built = res.manifest.platform
    loaded = te.load_engine(res.path, platform=built)
    assert loaded.engine[1] == res.path.read_bytes() and loaded.manifest == res.manifest
    for here in (dataclasses.replace(built, trt_version="10.16.0"),
                 dataclasses.replace(built, gpu_name="NVIDIA H100", compute_capability="9.0")):
        with pytest.raises(EngineMismatch, match="rebuild it here"):
            te.load_engine(res.path, platform=here)
    assert len(fake.fake_log["deserialized"]) == 1      # refused before deserialising
    te.manifest_path(res.path).unlink()
    with pytest.raises(EngineMismatch, match="no manifest"):
        te.load_engine(res.path, platform=built)


def test_profiles_validation():
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        te.shape_ranges_from({"x": ((8, 16), (2, 16), (1, 16))})
    with pytest.raises(ConfigError, match="mapping"):
        te.shape_ranges_from([1, 2])
    with pytest.raises(ConfigError, match="precision"):
        te.BuildConfig(precision="fp8")
    with pytest.raises(ConfigError, match="unknown target"):
        te.BuildConfig(target="nano")
