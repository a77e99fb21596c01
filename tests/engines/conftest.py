"""Fixtures for engine tests: tiny ONNX graphs and a tiny bundle written through the exporter's
own manifest writer (the graphs are small stand-ins, not exported DiTs: the engine builder only
needs ONNX files and their IO specs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from odelt.bundle.bundle import FORMAT
from tests.bundles import hand_written_bundle
from tests.models_zoo import config
from odelt.bundle.iospec import GraphSpec, TensorSpec
from odelt.models.config import PRESETS


class TinyNet(torch.nn.Module):
    """Linear -> LayerNorm -> GELU -> Linear: gives ONNX Runtime something to fuse."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.a, self.norm, self.b = torch.nn.Linear(width, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (B, W) -> (B, W)
        return self.b(torch.nn.functional.gelu(self.norm(self.a(x))))


def export_tiny(path: Path, seed: int = 0, opset: int = 17) -> Path:
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(TinyNet().eval(), (torch.randn(2, 16),), str(path), input_names=["x"],
                      output_names=["velocity"], dynamic_axes={"x": {0: "batch"}, "velocity": {0: "batch"}},
                      opset_version=opset, dynamo=False)
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


@pytest.fixture
def tiny_bundle(tmp_path) -> Path:
    """A two-graph per-length bundle (format odelt-bundle/1)."""
    root = tmp_path / "bundle"
    graphs, chains = {}, {}
    for i, length in enumerate((2, 4)):
        spec = GraphSpec(f"length_{length}", "per-length", "length", tuple(range(length)),
                         (TensorSpec("x", "float32", ("batch", 16)),),
                         (TensorSpec("velocity", "float32", ("batch", 16)),), length=length)
        export_tiny(root / spec.file, seed=i)
        graphs[spec.name] = {**spec.to_dict(), "external_data": None, "weight_bytes": 0}
        chains[str(length)] = [spec.name]
    hand_written_bundle(root, {
        "format": FORMAT, "model": {"config": PRESETS["digits"].to_dict(), "source": "test",
                                    "source_hash": "0", "param_bytes": 0},
        "opset": 17, "cfg": False, "null_class": 10, "batch": {"min": 1, "opt": 2, "max": 8},
        "layouts": ["per-length"], "lengths": [2, 4], "graphs": graphs,
        "chains": {"per-length": chains}, "weight_bytes": {"per-length": 0}, "tables": {}})
    return root


@pytest.fixture
def x_batch() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)


# -- TensorRT-RTX: a real builder on this CPU-only machine (tests/engines/test_rtx_*.py) ------------

RTX_TINY = config("tiny-depth2")
RTX_OPT_LEVEL = 0          # the lowest builder optimisation level: tests check what is built, not its speed


@pytest.fixture(scope="session")
def rtx_variants(tmp_path_factory) -> Path:
    """A depth-2 random DiT, both layouts (cond, blocks_0-1, head, length_2), with FP16 and INT8
    (trt flavour) variants from small calibration settings. Read-only: copy it before building."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (the `rtx` extra) is not installed")
    from odelt.calibration.quantize import QuantizeOptions, quantize_bundle
    from odelt.exporter.export import ExportOptions, export_bundle
    from odelt.models.dit import DiT

    torch.manual_seed(0)
    model = DiT(RTX_TINY).eval()
    with torch.no_grad():   # the init zeroes the final layer and biases: give every weight a value
        for p in model.parameters():
            p.normal_(0.0, 0.1 if p.ndim > 1 else 0.02)
    root = tmp_path_factory.mktemp("rtx") / "bundle"
    export_bundle(model, root, ExportOptions(layouts=("segments", "per-length")))
    fast = dict(calib_samples=2, eval_samples=2, schedules=("uniform:euler:2",))
    for precision in ("int8", "fp16"):
        quantize_bundle(root, QuantizeOptions(precision, **fast))
    return root


@pytest.fixture(scope="session")
def rtx_built(rtx_variants, tmp_path_factory) -> Path:
    """rtx_variants with its FP32 TensorRT-RTX set built (portable targets). Read-only."""
    import shutil

    from odelt.engines.build import BuildRequest, build_bundle

    root = tmp_path_factory.mktemp("rtx-built") / "bundle"
    shutil.copytree(rtx_variants, root)
    build_bundle(root, BuildRequest(backend="tensorrt-rtx", optimization_level=RTX_OPT_LEVEL))
    return root
