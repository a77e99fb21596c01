import pytest
import torch

from odelt.exporter.export import ExportOptions, export_bundle
from odelt.models.dit import DiT

from tests.bundles import private_copy
from tests.models_zoo import TINY
FAST = dict(calib_samples=2, eval_samples=2, schedules=("uniform:euler:2",))


def tiny_model() -> DiT:
    torch.manual_seed(0)
    model = DiT(TINY).eval()
    with torch.no_grad():   # the init zeroes the final layer and biases: give every weight a value
        for p in model.parameters():
            p.normal_(0.0, 0.1 if p.ndim > 1 else 0.02)
    return model


@pytest.fixture(scope="session")
def fp32_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib") / "bundle"
    export_bundle(tiny_model(), root, ExportOptions(layouts=("segments", "per-length")))
    return root


@pytest.fixture
def bundle(fp32_bundle, tmp_path):
    """A private copy of the FP32 bundle (tests add variants to it)."""
    return private_copy(fp32_bundle, tmp_path / "bundle")


@pytest.fixture
def segments_bundle(tmp_path):
    """Segments layout only: half the graphs, for the slower multi-round tests."""
    root = tmp_path / "segments"
    export_bundle(tiny_model(), root, ExportOptions(layouts=("segments",)))
    return root
