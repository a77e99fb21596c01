"""TensorRT backend options, without TensorRT (nothing is loaded before `with`)."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from odelt.errors import BackendUnavailable
from odelt.runtime.backend import open_backend

SETS = {"tensorrt-desktop-fp32": {"backend": "tensorrt", "precision": "fp32", "graphs": {}},
        "tensorrt-desktop-int8": {"backend": "tensorrt", "precision": "int8", "graphs": {}},
        "ort-fp16": {"backend": "ort", "precision": "fp16", "graphs": {}}}
BUNDLE = SimpleNamespace(engine_sets=SETS, root=Path("bundle"), lengths=(2,), default_layout=lambda: "segments")


def test_precision_picks_the_engine_set():
    # generate and profile pass the precision to every backend
    assert open_backend("tensorrt", BUNDLE, precision="int8")._engine_entry()["precision"] == "int8"
    assert open_backend("tensorrt", BUNDLE, precision="fp32")._engine_entry()["precision"] == "fp32"


def test_precision_without_engines_is_one_line_error():
    with pytest.raises(BackendUnavailable, match="no fp16 TensorRT engines.*--precision fp16"):
        open_backend("tensorrt", BUNDLE, precision="fp16")._engine_entry()
