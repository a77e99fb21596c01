"""TensorRT backend options, without TensorRT (nothing is loaded before `with`)."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from odelt.errors import BackendUnavailable
from odelt.runtime.backends import open_backend

SETS = {"tensorrt-desktop-fp32": {"backend": "tensorrt", "precision": "fp32", "graphs": {}},
        "tensorrt-desktop-int8": {"backend": "tensorrt", "precision": "int8", "graphs": {}},
        "ort-fp16": {"backend": "ort", "precision": "fp16", "graphs": {}}}
BUNDLE = SimpleNamespace(engine_sets=SETS, root=Path("bundle"), lengths=(2,), default_layout=lambda: "segments")


def test_precision_picks_the_engine_set():
    # generate and profile pass the precision to every backend
    assert open_backend("tensorrt", BUNDLE, precision="int8").engine_entry()["precision"] == "int8"
    assert open_backend("tensorrt", BUNDLE, precision="fp32").engine_entry()["precision"] == "fp32"


def test_precision_without_engines_is_one_line_error():
    with pytest.raises(BackendUnavailable, match="no fp16 TensorRT engines.*--precision fp16"):
        open_backend("tensorrt", BUNDLE, precision="fp16").engine_entry()


def test_registry_and_options_replace_name_branches():
    from odelt.runtime.backends import BACKENDS, BackendOptions, backend_class
    from odelt.errors import ConfigError

    assert sorted(BACKENDS) == ["openvino", "ort", "tensorrt"]
    assert backend_class("tensorrt").batch_bound and not backend_class("ort").batch_bound
    be = open_backend("tensorrt", BUNDLE, BackendOptions(precision="int8"), lengths=[2])
    assert be.lengths == (2,) and be.precision == "int8"
    with pytest.raises(ConfigError, match="unknown backend 'trt'; expected one of openvino, ort, tensorrt"):
        backend_class("trt")
    with pytest.raises(ConfigError, match="threads must be >= 0"):
        BackendOptions(threads=-2)


def test_load_profile_finds_the_profile_of_the_backend_in_use(tmp_path):
    import json

    from odelt.errors import ConfigError
    from odelt.runtime.budget.profile import FORMAT, device_description, device_id, load_profile

    trt_id = device_id(device_description("tensorrt"))
    assert trt_id != device_id(device_description("ort"))
    (tmp_path / "profile").mkdir()
    timing = {"median_ms": 1.0, "p90_ms": 1.2}
    prof = {"format": FORMAT, "device_id": trt_id, "backend": "tensorrt", "step_overhead_ms": 0.01,
            "sample_overhead_ms": 0.05, "calls": {"fp32": {"1": {"2": timing}}}, "graphs": {}}
    (tmp_path / "profile" / f"{trt_id}.json").write_text(json.dumps(prof))
    bundle = SimpleNamespace(root=tmp_path)
    assert load_profile(bundle, backend="tensorrt")["backend"] == "tensorrt"
    with pytest.raises(ConfigError, match="--backend ort"):
        load_profile(bundle, backend="ort")
